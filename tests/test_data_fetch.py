"""`data fetch vlguard`: the offline error path, sum checks and unpacking, with stand-in downloaders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from unmirage.data.fetch import SUMS_FILE, RemoteFile, fetch_vlguard, read_sums, url_downloader
from unmirage.errors import UnmirageError
from unmirage.runs import sha256_file

SRC = Path(__file__).resolve().parents[1] / "src"


def test_cli_offline_is_one_line_error_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "vlguard"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)}
    argv = [sys.executable, "-m", "unmirage", "data", "fetch", "vlguard", "--out", str(out)]
    proc = subprocess.run(
        [*argv, "--attack-base-url", "http://127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr
    assert (
        len(errors) == 1
        and "could not download train.json" in errors[0]
        and "HF_HUB_OFFLINE is set" in errors[0]
    )
    assert not out.exists()


def _hub_from(folder: Path, zips: dict[str, Path] | None = None):
    def download(remote: RemoteFile, dest: Path) -> None:
        source = (zips or {}).get(remote.name, folder / remote.name)
        shutil.copyfile(source, dest)

    return download


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.shared_data
def test_unreachable_attack_files_leave_existing_folder_untouched(vlguard_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "vlguard"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UnmirageError, match="could not download test_share_1shot.json from GitHub"):
        fetch_vlguard(
            out, images=False, hub=_hub_from(vlguard_dir), attack=url_downloader("http://127.0.0.1:9")
        )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_sum_mismatch_is_an_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("train.json", "test.json"):
        (fake / name).write_text("[]")
    out = tmp_path / "out"
    with pytest.raises(UnmirageError, match="train.json: sha256 .* does not match the expected 1b44eb54"):
        fetch_vlguard(out, images=False, hub=_hub_from(fake), attack=_hub_from(fake))
    assert not out.exists()


@pytest.mark.shared_data
def test_fetch_verifies_records_and_unpacks(vlguard_dir: Path, tmp_path: Path) -> None:
    zips = {
        "train.zip": _zip(
            tmp_path / "train.zip", {"train/bad_ads/a.png": b"png-a", "train/hod/b.png": b"png-b"}
        ),
        "test.zip": _zip(tmp_path / "test.zip", {"bad_ads/c.png": b"png-c"}),
    }
    out = tmp_path / "out"
    messages: list[str] = []
    sums = fetch_vlguard(
        out, hub=_hub_from(vlguard_dir, zips), attack=_hub_from(vlguard_dir), progress=messages.append
    )
    assert "train/: 1999 images listed in train.json, 1999 missing (check the archive layout)" in messages
    assert (out / "train" / "bad_ads" / "a.png").read_bytes() == b"png-a"  # single top folder hoisted
    assert (out / "test" / "bad_ads" / "c.png").read_bytes() == b"png-c"
    assert sums["test_what_3shot.json"] == sha256_file(vlguard_dir / "test_what_3shot.json")
    recorded = read_sums(out / SUMS_FILE)
    assert recorded["train.zip"] == sha256_file(zips["train.zip"]) and len(recorded) == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".fetch-partial")]

    def no_download(remote: RemoteFile, dest: Path) -> None:
        raise AssertionError(f"{remote.name} should not be downloaded again")

    assert fetch_vlguard(out, hub=no_download, attack=no_download) == sums
    # trust on first use: a changed zip no longer matches the recorded sum
    (out / "test.zip").write_bytes(b"changed")
    other = {"test.zip": _zip(tmp_path / "other.zip", {"x.png": b"x"})}
    with pytest.raises(UnmirageError, match="test.zip: sha256 .* does not match"):
        fetch_vlguard(out, hub=_hub_from(vlguard_dir, other), attack=no_download)
    assert (out / "test" / "bad_ads" / "c.png").exists()


@pytest.mark.shared_data
def test_zip_members_escaping_the_folder_are_refused(vlguard_dir: Path, tmp_path: Path) -> None:
    zips = {
        "train.zip": _zip(tmp_path / "train.zip", {"../evil.png": b"x"}),
        "test.zip": _zip(tmp_path / "test.zip", {"a.png": b"x"}),
    }
    out = tmp_path / "out"
    with pytest.raises(UnmirageError, match="zip member '../evil.png' would escape the folder"):
        fetch_vlguard(out, hub=_hub_from(vlguard_dir, zips), attack=_hub_from(vlguard_dir))
    assert not out.exists() and not (tmp_path / "evil.png").exists()
