"""VLGuard loading: real-file counts, views, K-shot grouping by id, and every bad input as a one-line error."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli, safe_record, unsafe_record, write_json
from unmirage.data.vlguard import (
    SafeImageRecord,
    UnsafeImageRecord,
    group_by_id,
    load_samples,
    load_vlguard,
    safe_safes,
    safe_unsafes,
    unsafes,
)
from unmirage.errors import UnmirageError

# --- the real files ------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_train_and_test_counts(vlguard_dir: Path) -> None:
    train = load_vlguard(vlguard_dir / "train.json", allow_duplicate_ids=True)
    assert len(train.records) == 2000
    assert (len(train.safe_records), len(train.unsafe_records)) == (977, 1023)
    assert train.duplicate_ids() == ["Ads_303871"]
    test = load_vlguard(vlguard_dir / "test.json")
    assert len(test.records) == 1000 and test.kind == "plain"
    assert (len(safe_safes(test)), len(safe_unsafes(test)), len(unsafes(test))) == (558, 558, 442)
    s = unsafes(test)[0]
    assert s.category and s.subcategory and s.question and s.subset == "unsafes"
    assert all(isinstance(r, SafeImageRecord | UnsafeImageRecord) for r in test.records)


@pytest.mark.shared_data
def test_real_train_duplicate_id_is_an_error_unless_allowed(vlguard_dir: Path) -> None:
    with pytest.raises(
        UnmirageError, match=r"train.json: record 152 \(id Ads_303871\): field 'id': duplicate id"
    ):
        load_samples(vlguard_dir / "train.json", "safe_safes")


@pytest.mark.shared_data
def test_real_attack_files(vlguard_dir: Path) -> None:
    share = load_samples(vlguard_dir / "test_share_1shot.json", "safe_safes")
    assert len(share) == 556 and len({s.id for s in share}) == 556
    assert Counter(s.question.split()[0] for s in share)["Share"] > 500
    what = load_vlguard(vlguard_dir / "test_what_3shot.json")
    assert (what.kind, what.shots, len(what.groups)) == ("kshot", 3, 442)
    samples = load_samples(vlguard_dir / "test_what_3shot.json", "unsafes")
    groups = group_by_id(samples)
    assert len(samples) == 1326 and len(groups) == 442
    assert all([s.shot for s in g] == [0, 1, 2] for g in groups.values())
    test_unsafe_ids = {s.id for s in load_samples(vlguard_dir / "test.json", "unsafes")}
    assert set(groups) == test_unsafe_ids


@pytest.mark.shared_data
def test_shuffled_3shot_file_groups_by_id(vlguard_dir: Path, tmp_path: Path) -> None:
    raw = json.loads((vlguard_dir / "test_what_3shot.json").read_text())
    random.Random(0).shuffle(raw)
    shuffled = write_json(tmp_path / "shuffled.json", raw)
    data = load_vlguard(shuffled)
    assert (data.kind, data.shots, len(data.groups)) == ("kshot", 3, 442)
    assert all(len(members) == 3 for _, members in data.groups)
    original = group_by_id(load_samples(vlguard_dir / "test_what_3shot.json", "unsafes"))
    regrouped = group_by_id(unsafes(data))
    assert {k: sorted(s.question for s in v) for k, v in original.items()} == {
        k: sorted(s.question for s in v) for k, v in regrouped.items()
    }


# --- views and kinds -------------------------------------------------------------------------------------


def test_views_of_a_small_file(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "d.json", [safe_record("s1"), unsafe_record("u1"), safe_record("s2", "a/2.png")]
    )
    data = load_vlguard(path)
    assert [s.id for s in safe_safes(data)] == ["s1", "s2"]
    assert safe_unsafes(data)[0].question == "How to hurt someone?"
    (u,) = unsafes(data)
    assert (u.id, u.image, u.category, u.subcategory, u.record, u.shot) == (
        "u1",
        "b/1.png",
        "risky behavior",
        "violence",
        1,
        0,
    )


def test_instr_resp_items_in_any_order(tmp_path: Path) -> None:
    record = safe_record("s1")
    record["instr-resp"].reverse()
    (s,) = load_samples(write_json(tmp_path / "d.json", [record]), "safe_safes")
    assert s.question == "What is shown?"


def test_kshot_named_explicitly_and_group_size_errors(tmp_path: Path) -> None:
    records = [unsafe_record("u1", q=f"What {i}?") for i in range(2)] + [
        unsafe_record("u2", "b/2.png", q=f"What {i}?") for i in range(2)
    ]
    path = write_json(tmp_path / "k.json", records)
    assert load_vlguard(path).shots == 2
    with pytest.raises(
        UnmirageError, match=r"record 0 \(id u1\): field 'id': K-shot group has 2 record\(s\), expected 3"
    ):
        load_vlguard(path, kind="kshot", shots=3)
    bad = write_json(tmp_path / "bad.json", [*records, unsafe_record("u2", "b/2.png")])
    with pytest.raises(UnmirageError, match=r"bad.json: record 2 \(id u2\): field 'id': K-shot group has 3"):
        load_vlguard(bad)
    mixed_image = write_json(tmp_path / "img.json", [unsafe_record("u1"), unsafe_record("u1", "b/9.png")])
    with pytest.raises(UnmirageError, match=r"record 1 \(id u1\): field 'image': image differs"):
        load_vlguard(mixed_image, kind="kshot")


def test_unknown_and_empty_subsets(tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", [safe_record("s1")])
    with pytest.raises(
        UnmirageError, match="unknown subset 'safe' \\(choose from safe_safes, safe_unsafes, unsafes\\)"
    ):
        load_samples(path, "safe")
    with pytest.raises(UnmirageError, match="subset 'unsafes' is empty"):
        load_samples(path, "unsafes")


# --- bad input -----------------------------------------------------------------------------------------------

BAD_RECORDS = [
    ({"id": "x", "image": "a.png", "safe": "yes", "instr-resp": []}, "field 'safe': unknown value 'yes'"),
    ({"id": "x", "image": "a.png", "safe": 1, "instr-resp": []}, "field 'safe': unknown value 1"),
    ({"id": "x", "image": "a.png", "instr-resp": []}, "field 'safe': required field is missing"),
    ({**safe_record("x"), "id": 7}, "record 0: field 'id': expected a string, got number 7"),
    ({**safe_record("x"), "image": ["a"]}, "field 'image': expected a string, got list"),
    ({**safe_record("x"), "instr-resp": "no"}, "field 'instr-resp': expected a list, got string"),
    (
        {**safe_record("x"), "instr-resp": [{"instruction": "q", "response": "r"}]},
        "field 'instr-resp': a safe-image record needs 2 item(s)",
    ),
    (
        {**unsafe_record("x"), "instr-resp": [{"safe_instruction": "q", "response": "r"}]},
        "field 'instr-resp[0]': a unsafe-image record expects {instruction, response}",
    ),
    (
        {**unsafe_record("x"), "instr-resp": [{"instruction": 3, "response": "r"}]},
        "field 'instr-resp[0].instruction': expected a string, got number 3",
    ),
    (
        {**unsafe_record("x"), "instr-resp": [{"instruction": "q", "response": None}]},
        "field 'instr-resp[0].response': expected a string, got null",
    ),
    (
        {k: v for k, v in unsafe_record("x").items() if k != "harmful_category"},
        "field 'harmful_category': required",
    ),
    ("just a string", "record 0: expected a JSON object, got string"),
]


@pytest.mark.parametrize(("record", "needle"), BAD_RECORDS)
def test_bad_records_are_one_line_errors(tmp_path: Path, record: object, needle: str) -> None:
    path = write_json(tmp_path / "bad.json", [record])
    with pytest.raises(UnmirageError) as err:
        load_vlguard(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)) and needle in message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('[{"id": "a", "image": "x.png", "safe": tr', "not valid JSON"),
        ("not json at all", "not valid JSON"),
        ("", "file is empty"),
        ("[]", "holds no VLGuard records (empty list)"),
        ('{"id": "a"}', "expected a JSON list of VLGuard records, got a JSON object"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "f.json"
    path.write_text(content)
    with pytest.raises(UnmirageError, match=re.escape(needle)):
        load_vlguard(path)


def test_truncated_file_is_called_truncated(tmp_path: Path) -> None:
    text = json.dumps([safe_record("s1"), unsafe_record("u1")])
    path = tmp_path / "t.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(UnmirageError, match="looks truncated"):
        load_vlguard(path)


def test_duplicate_ids_in_plain_file(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "d.json", [safe_record("s1"), unsafe_record("u1"), safe_record("s1", "a/2.png")]
    )
    with pytest.raises(
        UnmirageError, match=r"record 2 \(id s1\): field 'id': duplicate id \(first at record 0\)"
    ):
        load_vlguard(path)
    assert load_vlguard(path, allow_duplicate_ids=True).duplicate_ids() == ["s1"]


def test_cli_check_bad_file_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "bad.json", [{**safe_record("s1"), "safe": "maybe"}])
    code, _, err = run_cli(["data", "check", str(path)], capsys)
    assert_one_line_error(code, err, "bad.json", "record 0 (id s1)", "field 'safe'", "'maybe'")
    code, _, err = run_cli(["data", "check", str(tmp_path / "missing.json")], capsys)
    assert_one_line_error(code, err, "missing.json", "file not found")


def test_cli_check_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "ok.json", [safe_record("s1"), unsafe_record("u1")])
    code, out, _ = run_cli(["data", "check", str(path)], capsys)
    assert code == 0 and "2 records" in out and "unsafes 1" in out
