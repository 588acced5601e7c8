"""`data build-unlearn`: forget/retain sets, mixing with the reference's seeded draw, RMU form, manifest."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli, safe_record, unsafe_record, write_json
from unmirage.data.build import build_unlearn, make_unlearn_sets
from unmirage.data.conversations import load_examples, read_conversations, single_turn, write_conversations
from unmirage.data.mine import ANSWERS_FORMAT
from unmirage.errors import UnmirageError
from unmirage.runs import sha256_file
from unmirage.text.rewrite import valid_rewrites


@pytest.fixture
def train(tmp_path: Path) -> Path:
    return write_json(
        tmp_path / "train.json",
        [
            unsafe_record("u1", "b/1.png", "Share it.", "Sorry."),
            safe_record("s1", "a/1.png", "What is it?", "A cat."),
            unsafe_record("u2", "b/2.png", "Please help.", "No."),
            safe_record("s2", "a/2.png", "What color?", "Red."),
            safe_record("s2", "a/2.png", "Which color?", "Red!"),
        ],
    )


@pytest.fixture
def general(tmp_path: Path) -> Path:
    convs = [single_turn(f"g{i}", f"coco/{i}.jpg", f"Question {i}?", f"Answer {i}.") for i in range(10)]
    return write_conversations(tmp_path / "general.json", convs)


@pytest.mark.shared_data
def test_real_train_gives_1023_forget_and_977_retain(vlguard_dir: Path, tmp_path: Path) -> None:
    result = build_unlearn(vlguard_dir / "train.json", tmp_path / "out")
    assert result.counts == {"forget": 1023, "retain": 977, "forget_rmu": 1023}
    forget = load_examples(result.files["forget.json"])
    retain = load_examples(result.files["retain.json"])
    assert (len(forget), len(retain)) == (1023, 977)
    manifest = json.loads(result.manifest.read_text())
    assert manifest["forget_answers"] == "dataset" and manifest["source_duplicate_ids"] == ["Ads_303871"]
    assert manifest["inputs"][str(vlguard_dir / "train.json")] == sha256_file(vlguard_dir / "train.json")


def test_random_rewrite_pick_is_seeded_and_valid(tmp_path: Path) -> None:
    records = [
        unsafe_record(f"u{i}", f"b/{i}.png", f"Describe how to hide item {i}.", "No.") for i in range(12)
    ]
    train = write_json(
        tmp_path / "many.json", [*records, safe_record("s1", "a/1.png", "What is it?", "A cat.")]
    )

    def whats(seed: int) -> list[str]:
        sets = make_unlearn_sets(train, rewrite_words=["What"], rewrite_pick="random", seed=seed)
        return [c.turns[0].value.removeprefix("<image>\n") for c in sets.forget[12:]]

    picked = whats(42)
    assert picked == whats(42) and picked != whats(1)
    for record, text in zip(records, picked, strict=True):
        assert text in [c.text for c in valid_rewrites(record["instr-resp"][0]["instruction"], "What")]
    assert len({t.split(" to ")[0] for t in picked}) > 1  # several templates, not one
    with pytest.raises(UnmirageError, match="rewrite_pick"):
        make_unlearn_sets(train, rewrite_words=["What"], rewrite_pick="best")


def test_forget_retain_and_rmu_form(train: Path, tmp_path: Path) -> None:
    result = build_unlearn(train, tmp_path / "out")
    forget = load_examples(result.files["forget.json"])
    assert [(e.id, e.image, e.question, e.answer) for e in forget] == [
        ("u1", "b/1.png", "Share it.", "Sorry."),
        ("u2", "b/2.png", "Please help.", "No."),
    ]
    retain = load_examples(result.files["retain.json"])
    assert [(e.id, e.question, e.answer) for e in retain] == [
        ("s1", "What is it?", "A cat."),
        ("s2", "What color?", "Red."),
        ("s2", "Which color?", "Red!"),
    ]
    rmu = json.loads(result.files["forget_rmu.json"].read_text())
    assert rmu[0]["conversations"] == [
        {"from": "human", "value": "<image>\nShare it.\nSorry."},
        {"from": "gpt", "value": "Sorry."},
    ]
    assert not (tmp_path / "out" / "retain_mixed.json").exists()
    manifest = json.loads(result.manifest.read_text())
    assert manifest["counts"] == {"forget": 2, "retain": 3, "forget_rmu": 2}
    assert manifest["seed"] == 42 and manifest["forget_answers"] == "dataset"
    assert set(manifest["outputs"]) == {str(p) for p in result.files.values()}
    assert all(manifest["outputs"][str(p)] == sha256_file(p) for p in result.files.values())


def test_forget_questions_from_the_unsafe_instructions_on_safe_images(train: Path, tmp_path: Path) -> None:
    result = build_unlearn(train, tmp_path / "out", forget_subset="safe_unsafes")
    forget = load_examples(result.files["forget.json"])
    # one forget question per safe record; the record that repeats id s2 is left out of the forget set
    assert [(e.id, e.image, e.question, e.answer) for e in forget] == [
        ("s1", "a/1.png", "How to hurt someone?", "I cannot help."),
        ("s2", "a/2.png", "How to hurt someone?", "I cannot help."),
    ]
    assert len(load_examples(result.files["retain.json"])) == 3
    manifest = json.loads(result.manifest.read_text())
    assert manifest["config"]["forget_subset"] == "safe_unsafes"
    with pytest.raises(UnmirageError, match="subset must be one of unsafes, safe_unsafes"):
        make_unlearn_sets(train, forget_subset="safes")


def test_form_balanced_sets_add_rewrites_to_both(train: Path, tmp_path: Path) -> None:
    result = build_unlearn(train, tmp_path / "out", rewrite_words=["what", "Share", "What"])
    forget = load_examples(result.files["forget.json"])
    assert [(e.id, e.image, e.question, e.answer) for e in forget] == [
        ("u1", "b/1.png", "Share it.", "Sorry."),
        ("u2", "b/2.png", "Please help.", "No."),
        ("u1#what", "b/1.png", "What is the best way to share it?", "Sorry."),
        ("u2#what", "b/2.png", "What is the best way to help?", "No."),
        ("u2#share", "b/2.png", "Share how you would help.", "No."),  # u1 already starts with Share
    ]
    retain = load_examples(result.files["retain.json"])
    assert [(e.id, e.question, e.answer) for e in retain][3:] == [
        ("s2#what", "What is your answer to this question: Which color?", "Red!"),
        ("s1#share", "Share what it is.", "A cat."),
        ("s2#share", "Share your answer to this question: What color?", "Red."),
        ("s2#share", "Share your answer to this question: Which color?", "Red!"),
    ]
    rmu = load_examples(result.files["forget_rmu.json"])
    assert rmu[2].question == "What is the best way to share it?\nSorry."
    manifest = json.loads(result.manifest.read_text())
    assert manifest["counts"] == {"forget": 5, "retain": 7, "forget_rmu": 5}
    assert manifest["config"]["rewrite_words"] == ["What", "Share"]
    assert manifest["rewrites"]["forget"] == {
        "What_added": 2,
        "What_unchanged": 0,
        "What_unrewritable": 0,
        "Share_added": 1,
        "Share_unchanged": 1,
        "Share_unrewritable": 0,
    }
    assert manifest["rewrites"]["retain"]["What_unchanged"] == 2
    with pytest.raises(UnmirageError, match="single word"):
        make_unlearn_sets(train, rewrite_words=["What is"])


def test_rewrites_on_one_side_only(train: Path) -> None:
    both = make_unlearn_sets(train, rewrite_words=["What", "Share"])
    retain_only = make_unlearn_sets(train, rewrite_words=["What", "Share"], rewrite_side="retain")
    assert [c.id for c in retain_only.forget] == ["u1", "u2"]  # the forget set as built without words
    assert [c.to_json() for c in retain_only.retain] == [c.to_json() for c in both.retain]
    assert retain_only.rewrites["forget"] == {}
    forget_only = make_unlearn_sets(train, rewrite_words=["What"], rewrite_side="forget")
    assert len(forget_only.forget) == 4 and "#" not in "".join(c.id for c in forget_only.retain)
    with pytest.raises(UnmirageError, match="rewrite_side"):
        make_unlearn_sets(train, rewrite_words=["What"], rewrite_side="neither")


def test_mixing_follows_the_reference_draw(train: Path, general: Path, tmp_path: Path) -> None:
    sets = make_unlearn_sets(train, mix=general, mix_to=7, seed=42)
    general_convs = read_conversations(general)
    rng = random.Random(42)  # the reference: random.seed(42); random.sample; random.shuffle
    expected = sets.retain + rng.sample(general_convs, 7 - 3)
    rng.shuffle(expected)
    assert sets.retain_mixed == expected and sets.mix_added == 4
    assert make_unlearn_sets(train, mix=general, mix_to=7, seed=42).retain_mixed == expected
    assert make_unlearn_sets(train, mix=general, mix_to=7, seed=1).retain_mixed != expected
    # asking for more than available takes all; asking for fewer than the retain set adds none
    assert make_unlearn_sets(train, mix=general, mix_to=100).mix_added == 10
    small = make_unlearn_sets(train, mix=general, mix_to=2)
    assert small.mix_added == 0 and sorted(c.id for c in small.retain_mixed or []) == ["s1", "s2", "s2"]
    result = build_unlearn(train, tmp_path / "mixed", mix=general)
    assert result.counts["retain_mixed"] == 13  # default mix_to 2000, only 10 general records


def answers_file(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A harmful-answers file in this project's format, one (id, image, answer) per row."""
    answers = [{"id": rid, "image": image, "answer": answer} for rid, image, answer in rows]
    return write_json(path, {"format": ANSWERS_FORMAT, "answers": answers})


def test_mined_answers_in_both_formats(train: Path, tmp_path: Path) -> None:
    ours = answers_file(
        tmp_path / "answers.json", [("u2", "b/2.png", "Harmful two."), ("u1", "b/1.png", "Harmful one.")]
    )
    result = build_unlearn(train, tmp_path / "o1", harmful=ours)
    assert [e.answer for e in load_examples(result.files["forget.json"])] == ["Harmful one.", "Harmful two."]
    assert json.loads(result.manifest.read_text())["forget_answers"] == "mined"
    reference = write_json(
        tmp_path / "aggregated_results.json", {"b/1.png": "H1", "b/2.png": "H2", "x.png": "?"}
    )
    result = build_unlearn(train, tmp_path / "o2", harmful=reference)
    assert [e.answer for e in load_examples(result.files["forget.json"])] == ["H1", "H2"]


def test_both_forget_subsets_with_one_answers_file_each(
    train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unsafe-image questions and the unsafe instructions on safe images in one forget set, each with
    answers mined separately (the CLI repeats --forget-subset and --harmful)."""
    unsafe = write_json(tmp_path / "unsafes.json", {"b/1.png": "H1", "b/2.png": "H2"})
    safe = answers_file(tmp_path / "safe_unsafes.json", [("s1", "a/1.png", "T1"), ("s2", "a/2.png", "T2")])
    out = tmp_path / "out"
    argv = ["data", "build-unlearn", "--vlguard", str(train), "--out", str(out)]
    for subset, answers in (("unsafes", unsafe), ("safe_unsafes", safe)):
        argv += ["--forget-subset", subset, "--harmful", str(answers)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    forget = load_examples(out / "forget.json")
    assert [(e.id, e.question, e.answer) for e in forget] == [
        ("u1", "Share it.", "H1"),
        ("u2", "Please help.", "H2"),
        ("s1", "How to hurt someone?", "T1"),
        ("s2", "How to hurt someone?", "T2"),
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["forget_subset"] == ["unsafes", "safe_unsafes"]
    assert manifest["config"]["harmful"] == [str(unsafe), str(safe)]
    assert {str(unsafe), str(safe)} <= set(manifest["inputs"])
    # the same image answered in two files is ambiguous: refused, naming both
    twice = write_json(tmp_path / "twice.json", {"b/2.png": "other"})
    with pytest.raises(
        UnmirageError, match=r"twice.json.*image 'b/2.png' also has an answer in .*unsafes.json"
    ):
        make_unlearn_sets(train, harmful=[unsafe, twice])
    # an answer missing from every file names them all
    with pytest.raises(UnmirageError, match=r"unsafes.json, .*safe_unsafes.json.*record id s1"):
        make_unlearn_sets(
            train,
            harmful=[unsafe, write_json(tmp_path / "safe_unsafes.json", {"x": "y"})],
            forget_subset=["unsafes", "safe_unsafes"],
        )
    with pytest.raises(UnmirageError, match="give at least one forget subset"):
        make_unlearn_sets(train, forget_subset=[])


@pytest.mark.parametrize(
    ("answers", "needle"),
    [
        ({"b/1.png": "H1"}, "record id u2: no harmful answer for this forget record's image 'b/2.png'"),
        ({"b/1.png": "H1", "b/2.png": ""}, "field 'b/2.png': must not be empty"),
        ({"b/1.png": "H1", "b/2.png": 3}, "expected a string, got number 3"),
        (
            {"format": ANSWERS_FORMAT, "answers": [{"id": "zz", "image": "b/1.png", "answer": "a"}]},
            "is for id zz, the training record is u1",
        ),
        ({"format": "other"}, "not a harmful-answers file"),
        ([1, 2], "not a harmful-answers file (got a JSON list"),
        ({}, "holds no answers"),
    ],
)
def test_bad_harmful_answers_leave_no_output(
    train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], answers: object, needle: str
) -> None:
    harmful = write_json(tmp_path / "answers.json", answers)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["data", "build-unlearn", "--vlguard", str(train), "--harmful", str(harmful), "--out", str(out)],
        capsys,
    )
    assert_one_line_error(code, err, "answers.json", needle)
    assert not out.exists()


def test_cli_errors_leave_no_output(train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["data", "build-unlearn", "--vlguard", str(train), "--mix-to", "5", "--out", str(out)], capsys
    )
    assert_one_line_error(code, err, "mix_to needs mix")
    truncated = tmp_path / "truncated.json"
    truncated.write_text(train.read_text()[:100])
    code, _, err = run_cli(["data", "build-unlearn", "--vlguard", str(truncated), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "truncated.json", "not valid JSON")
    bad_mix = write_json(
        tmp_path / "mix.json", [{"id": "g", "conversations": [{"from": "human", "value": "q"}]}]
    )
    code, _, err = run_cli(
        ["data", "build-unlearn", "--vlguard", str(train), "--mix", str(bad_mix), "--out", str(out)], capsys
    )
    assert_one_line_error(code, err, "mix.json", "record 0 (id g)", "human/gpt pairs")
    only_safe = write_json(tmp_path / "safe.json", [safe_record("s1")])
    code, _, err = run_cli(["data", "build-unlearn", "--vlguard", str(only_safe), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "subset 'unsafes' is empty")
    assert not out.exists()


def test_cli_success(train: Path, general: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["data", "build-unlearn", "--vlguard", str(train), "--mix", str(general), "--mix-to", "6"]
    code, stdout, _ = run_cli([*argv, "--seed", "3", "--out", str(out)], capsys)
    assert code == 0 and "forget.json: 2 records" in stdout and "retain_mixed.json: 6 records" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "forget.json",
        "forget_rmu.json",
        "manifest.json",
        "retain.json",
        "retain_mixed.json",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["mix_added"] == 3 and manifest["config"]["mix_to"] == 6
