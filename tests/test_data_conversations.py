"""LLaVA conversation files: read, write, validate, and turn into training examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli, write_json
from unmirage.data.conversations import (
    Conversation,
    Turn,
    load_examples,
    read_conversations,
    single_turn,
    to_examples,
    write_conversations,
)
from unmirage.errors import UnmirageError


def test_round_trip(tmp_path: Path) -> None:
    convs = [
        single_turn("a", "x/1.png", "What is it?", "A dog."),
        single_turn("b", None, "Say hi.", "Hi."),
        Conversation(
            "c",
            "x/2.png",
            (Turn("human", "Q1\n<image>"), Turn("gpt", "A1"), Turn("human", "Q2"), Turn("gpt", "A2")),
        ),
    ]
    path = write_conversations(tmp_path / "c.json", convs)
    raw = json.loads(path.read_text())
    assert raw[0] == {
        "id": "a",
        "image": "x/1.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A dog."},
        ],
    }
    assert "image" not in raw[1]
    assert read_conversations(path) == convs
    examples = load_examples(path)
    assert [(e.id, e.image, e.question, e.answer, e.turn) for e in examples] == [
        ("a", "x/1.png", "What is it?", "A dog.", 0),
        ("b", None, "Say hi.", "Hi.", 0),
        ("c", "x/2.png", "Q1", "A1", 0),
        ("c", "x/2.png", "Q2", "A2", 1),
    ]
    assert len(to_examples(convs, multi_turn="first")) == 3
    with pytest.raises(UnmirageError, match="id c: conversation has 2 exchanges"):
        to_examples(convs, multi_turn="error")


def test_integer_ids_and_extra_keys_are_accepted(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "c.json",
        [
            {
                "id": 12,
                "model": "",
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            }
        ],
    )
    (conv,) = read_conversations(path)
    assert conv.id == "12" and conv.image is None


def _record(**changes: object) -> dict:
    base = {
        "id": "r1",
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (_record(conversations=[]), "field 'conversations': expected a non-empty list of turns"),
        (_record(conversations="x"), "field 'conversations': expected a non-empty list of turns, got string"),
        (
            _record(conversations=[{"from": "gpt", "value": "<image>a"}, {"from": "human", "value": "q"}]),
            "field 'conversations[0]': expected \"from\": \"human\", got 'gpt'",
        ),
        (
            _record(conversations=[{"from": "human", "value": "<image>q"}]),
            "expected human/gpt pairs, got 1 turns",
        ),
        (
            _record(conversations=[{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": 5}]),
            "field 'conversations[1].value': expected a string, got number 5",
        ),
        (
            _record(conversations=[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]),
            "needs exactly one <image> token in a human turn, found 0",
        ),
        (
            _record(
                image=None,
                conversations=[{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}],
            ),
            "<image> token in a record without an image",
        ),
        (_record(id=True), "field 'id': expected a non-empty string or integer, got boolean"),
        (_record(image=3), "field 'image': expected a string, got number 3"),
    ],
)
def test_bad_conversations(tmp_path: Path, record: dict, needle: str) -> None:
    path = write_json(tmp_path / "bad.json", [_record(id="ok"), record])
    with pytest.raises(UnmirageError) as err:
        read_conversations(path)
    message = str(err.value)
    assert message.startswith(f"{path}: record 1") and needle in message and "\n" not in message


def test_empty_and_non_list_files(tmp_path: Path) -> None:
    with pytest.raises(UnmirageError, match="holds no LLaVA conversation records"):
        read_conversations(write_json(tmp_path / "e.json", []))
    with pytest.raises(UnmirageError, match="expected a JSON list"):
        load_examples(write_json(tmp_path / "o.json", {"a": 1}))


def test_cli_check_reads_conversation_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_conversations(
        tmp_path / "c.json", [single_turn("a", "x.png", "q", "a"), single_turn("b", None, "q", "a")]
    )
    code, out, _ = run_cli(["data", "check", str(good)], capsys)
    assert code == 0 and "LLaVA conversations, 2 records (1 with an image), 2 exchanges" in out
    bad = write_json(tmp_path / "bad.json", [{"id": "z", "conversations": [{"from": "human", "value": "q"}]}])
    code, _, err = run_cli(["data", "check", str(bad)], capsys)
    assert_one_line_error(code, err, "bad.json", "record 0 (id z)", "human/gpt pairs")
