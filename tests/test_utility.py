"""The utility evaluation (`unmirage.utility`): VQA files, answer parsing and VQA soft accuracy."""

from __future__ import annotations

import json

import pytest

from unmirage.errors import UnmirageError
from unmirage.metrics import Bootstrap
from unmirage.utility import load_vqa, normalise_vqa, parse_choice, score_vqa, vqa_soft_accuracy


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", 1),
        ("(C)", 2),
        ("A.", 0),
        ("B) a cat", 1),
        ("The answer is C.", 2),
        ("Answer: A", 0),
        ("a cat", 1),
        ("A dog sits there", 0),
        ("D", None),
        ("I am not sure", None),
        ("", None),
    ],
)
def test_parse_choice(answer: str, expected: int | None) -> None:
    assert parse_choice(answer, ["a dog", "a cat", "the moon"]) == expected


def test_vqa_soft_accuracy_and_normalisation() -> None:
    assert normalise_vqa("Two dogs!") == "2 dogs"
    assert normalise_vqa("The 1,000 men.") == "1000 men"
    assert normalise_vqa("dont") == normalise_vqa("don't") == "don't"
    assert vqa_soft_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_soft_accuracy("no", ["yes"] * 10) == 0.0
    # 3 of 10 humans agree: 7 leave-one-out subsets keep 3 matches (1.0), 3 keep 2 (2/3)
    assert vqa_soft_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx((7 * 1 + 3 * 2 / 3) / 10)
    assert vqa_soft_accuracy("Red.", ["red"]) == 1.0


def test_load_and_score_vqa(tmp_path) -> None:
    rows = [
        {"id": 1, "image": "a.png", "question": "What is it?", "choices": ["dog", "cat"], "answer": 1},
        {"id": "q2", "question": "Which?", "choices": ["x", "y", "z"], "answer": "C"},
        {"id": "q3", "image": "b.png", "question": "How many?", "answers": ["2"] * 10},
    ]
    (tmp_path / "vqa.json").write_text(json.dumps(rows))
    items = load_vqa(tmp_path / "vqa.json")
    assert [i.kind for i in items] == ["multiple_choice", "multiple_choice", "short_answer"]
    assert items[1].answer == 2 and "C. z" in items[1].prompt() and "single word" in items[2].prompt()
    result = score_vqa(items, {"1": "B", "q2": "I don't know", "q3": "two"}, boot=Bootstrap(samples=100))
    assert result["accuracy"]["value"] == pytest.approx(2 / 3)
    assert result["multiple_choice"]["value"] == 0.5 and result["short_answer"]["value"] == 1.0
    assert result["unparsed"] == 1
    with pytest.raises(UnmirageError, match="no answer"):
        score_vqa(items, {"1": "B"})


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a", "question": "q"}], "either 'choices'"),
        ([{"id": "a", "question": "q", "choices": ["x", "y"], "answer": 5}], "not one of the 2 choices"),
        ([{"id": "a", "question": "q", "answers": []}], "field 'answers'"),
        (
            [{"id": "a", "question": "q", "answers": ["x"]}, {"id": "a", "question": "q", "answers": ["x"]}],
            "duplicate id",
        ),
        ([{"question": "q", "answers": ["x"]}], "field 'id'"),
        ([], "non-empty"),
    ],
)
def test_vqa_file_errors(tmp_path, rows: list, message: str) -> None:
    (tmp_path / "vqa.json").write_text(json.dumps(rows))
    with pytest.raises(UnmirageError, match=message):
        load_vqa(tmp_path / "vqa.json")
