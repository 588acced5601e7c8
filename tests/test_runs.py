from __future__ import annotations

import json
import os
import stat

import pytest

from unmirage.runs import (
    JsonlAppender,
    atomic_open,
    atomic_write_json,
    build_manifest,
    current_umask,
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


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_files_get_normal_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_json(tmp_path / "m.json", {"a": 1})
        with atomic_open(tmp_path / "b.bin", "wb") as handle:
            handle.write(b"x")
        (tmp_path / "plain.txt").write_text("x")  # what an ordinary open() gives
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for name in ("m.json", "b.bin", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


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
