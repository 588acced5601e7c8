"""`unmirage generate` on a tiny LLaVA folder and stand-in images: one line per (id, shot), resumable,
placeholder runs recorded, clear errors, and the accelerate sharding path (two ranks, merged by rank 0)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import (
    assert_help_lists_settings,
    assert_one_line_error,
    png,
    run_cli,
    safe_record,
    unsafe_record,
    write_json,
)


@pytest.fixture
def tiny_dir(tiny_llava_dir) -> Path:
    return tiny_llava_dir


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A 2-shot attack file (2 unsafe ids) and a plain file, with their images under one root."""
    root = tmp_path / "images"
    for i, name in enumerate(("b/1.png", "b/2.png", "a/1.png")):
        png(root / name, size=(24, 20), color=(60 * i, 90, 200))
    shots = [
        unsafe_record(rid, f"b/{n}.png", q)
        for rid, n in (("u1", 1), ("u2", 2))
        for q in ("What is it?", "Share it.")
    ]
    return {
        "root": root,
        "kshot": write_json(tmp_path / "what_2shot.json", shots),
        "plain": write_json(
            tmp_path / "test.json", [safe_record("s1", "a/1.png"), unsafe_record("u1", "b/1.png")]
        ),
    }


def _argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
        "--batch-size",
        "3",
        "--dtype",
        "float32",
        *extra,
    ]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_id_and_shot_and_a_rerun_adds_nothing(tiny_dir, files, tmp_path, capsys) -> None:
    out = tmp_path / "run" / "gens.jsonl"
    argv = _argv(tiny_dir, files["kshot"], out, "--image-root", str(files["root"]))
    assert run_cli(argv, capsys).code == 0
    rows = _lines(out)
    assert sorted((r["id"], r["variant"]) for r in rows) == [("u1", 0), ("u1", 1), ("u2", 0), ("u2", 1)]
    first = next(r for r in rows if (r["id"], r["variant"]) == ("u2", 1))
    assert first["question"] == "Share it." and first["image"] == "b/2.png" and first["case"] == "unsafes"
    assert (
        first["shot"] == 1 and first["category"] == "risky behavior" and first["placeholder_image"] is False
    )
    manifest = json.loads((tmp_path / "run" / "gens.manifest.json").read_text())
    assert manifest["images"] == {"image_root": str(files["root"]), "placeholder_images": False}
    assert manifest["config"]["template"] == "v1" and manifest["items"] == 4
    before = out.read_text()
    assert run_cli(argv, capsys).code == 0
    assert out.read_text() == before


def test_placeholder_run_is_recorded(tiny_dir, files, tmp_path, capsys) -> None:
    out = tmp_path / "gens.jsonl"
    argv = _argv(
        tiny_dir, files["plain"], out, "--subset", "safe_safes", "--placeholder-images", "--limit", "1"
    )
    assert run_cli([*argv, "--assistant-prefix", "Sure,"], capsys).code == 0
    (row,) = _lines(out)
    assert row["id"] == "s1" and row["placeholder_image"] is True and row["image"] is None
    assert row["answer"].startswith("Sure,") and "category" not in row
    manifest = json.loads((tmp_path / "gens.manifest.json").read_text())
    assert (
        manifest["images"]["placeholder_images"] is True and manifest["config"]["assistant_prefix"] == "Sure,"
    )


def test_clear_errors(tiny_dir, files, tmp_path, capsys) -> None:
    out = tmp_path / "gens.jsonl"
    root = ["--image-root", str(files["root"])]
    for extra, message in [
        (
            ["--subset", "everything", *root],
            "unknown subset 'everything' (choose from safe_safes, safe_unsafes, unsafes)",
        ),
        (["--subset", "safe_safes", *root], "subset 'safe_safes' is empty"),
        ([], "give either image_root or placeholder_images"),
        ([*root, "--placeholder-images"], "give either image_root or placeholder_images"),
        (["--image-root", str(tmp_path)], "record id u1: image not found"),
        ([*root, "--template", "v2"], "unknown prompt template 'v2'"),
    ]:
        code, _, err = run_cli(_argv(tiny_dir, files["kshot"], out, *extra), capsys)
        assert_one_line_error(code, err, message)
    assert not out.exists()


@dataclass
class FakeState:
    """Stands in for accelerate's PartialState: the barrier is a no-op, ranks run one after another."""

    device: str = "cpu"

    def wait_for_everyone(self) -> None:
        pass


def test_two_ranks_write_shards_and_rank_zero_merges(tiny_dir, files, tmp_path) -> None:
    from unmirage.generate.vlguard import Processes, generate_vlguard
    from unmirage.settings import GenerateSettings

    settings = GenerateSettings(
        model=str(tiny_dir),
        data=files["kshot"],
        image_root=files["root"],
        max_new_tokens=3,
        batch_size=1,
        dtype="float32",
    )
    single = generate_vlguard(settings, tmp_path / "one" / "g.jsonl", progress=False)
    sharded = tmp_path / "two" / "g.jsonl"
    generate_vlguard(settings, sharded, processes=Processes(1, 2, FakeState()), progress=False)
    assert not sharded.exists() and len(_lines(sharded.with_name("g.jsonl.rank1"))) == 2
    generate_vlguard(settings, sharded, processes=Processes(0, 2, FakeState()), progress=False)
    assert _lines(sharded) == sorted(_lines(single), key=lambda r: (r["id"], r["variant"]))  # item order
    assert not list(sharded.parent.glob("*.rank*"))
    assert json.loads((sharded.parent / "g.manifest.json").read_text())["processes"] == 2


def test_generate_help_lists_every_setting(capsys, monkeypatch) -> None:
    from unmirage.settings import GenerateSettings

    assert_help_lists_settings(["generate"], GenerateSettings, capsys, monkeypatch)
