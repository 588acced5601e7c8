"""`unmirage data build-sft` (`unmirage.data.sft`): the safety fine-tuning set from VLGuard's training file."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli


@pytest.mark.shared_data
def test_build_sft_on_vlguard_train(vlguard_dir, tmp_path, capsys):
    result = run_cli(
        [
            "data",
            "build-sft",
            "--vlguard",
            str(vlguard_dir / "train.json"),
            "--out",
            str(tmp_path / "s.json"),
        ],
        capsys,
    )
    assert result.code == 0, result.err
    records = json.loads((tmp_path / "s.json").read_text())
    assert len(records) == 2977
    subsets = [r["id"].rsplit("/", 1)[1] for r in records]
    assert (subsets.count("unsafes"), subsets.count("safe_safes"), subsets.count("safe_unsafes")) == (
        1023,
        977,
        977,
    )
    manifest = json.loads((tmp_path / "s.manifest.json").read_text())
    assert manifest["counts"]["total"] == 2977
