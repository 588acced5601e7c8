from __future__ import annotations

import json

import pytest

from unmirage.runs import (
    JsonlAppender,
    atomic_open,
    atomic_write_json,
    build_manifest,
    read_jsonl_resumable,
    sha256_file,
)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("partial")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_jsonl_resume_drops_torn_line(tmp_path):
    path = tmp_path / "g.jsonl"
    with JsonlAppender(path) as out:
        out.write_many([{"id": 1}, {"id": 2}])
    with open(path, "a") as handle:
        handle.write('{"id": 3, "ans')
    assert read_jsonl_resumable(path) == [{"id": 1}, {"id": 2}]
    assert path.read_text().count("\n") == 2
    with JsonlAppender(path) as out:
        out.write_many([{"id": 3}])
    assert [r["id"] for r in read_jsonl_resumable(path)] == [1, 2, 3]


def test_manifest_hashes_inputs(tmp_path):
    data = tmp_path / "in.txt"
    data.write_text("hello")
    manifest = build_manifest(command="test", inputs=[data], seed=3, config={"x": 1})
    assert manifest["inputs"][str(data)] == sha256_file(data)
    assert manifest["seed"] == 3 and "torch" in manifest["libraries"]
