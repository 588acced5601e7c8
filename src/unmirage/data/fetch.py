"""`unmirage data fetch vlguard`: download the official VLGuard files and the two attack files, verified.

Sources: the VLGuard dataset on the Hugging Face Hub (train.json, test.json, train.zip, test.zip) and the
Safety Mirage evaluation files (test_share_1shot.json, test_what_3shot.json) from GitHub. The four JSON files
are checked against sha256 sums known in advance. The sums of the two image zips are not known to this
project: the first download records them in ``SHA256SUMS`` of the output folder and later fetches into the
same folder are checked against that record (trust on first use).

Everything is downloaded into a staging folder inside the output folder; files are moved into place only
after every download succeeded and verified, and zips are unpacked (refusing members that would escape the
folder) into ``train/`` and ``test/``, the image roots of train.json and test.json. A failure is a one-line
error and leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from unmirage.errors import UnmirageError
from unmirage.runs import atomic_write_text, sha256_file

HF_REPO = "ys-zong/VLGuard"
ATTACK_BASE_URL = "https://raw.githubusercontent.com/OPTML-Group/VLM-Safety-Unlearn/main/eval/safety_data"
SUMS_FILE = "SHA256SUMS"


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: `source` "hub" (the VLGuard dataset repo) or "attack" (the attack-file base URL)."""

    name: str
    source: str
    sha256: str | None
    unpack_to: str | None = None


FILES: tuple[RemoteFile, ...] = (
    RemoteFile("train.json", "hub", "1b44eb5438090baf6b94aafa09099d88183c41162d0a1298b70535852516aca1"),
    RemoteFile("test.json", "hub", "a0b6479d0add65d9d1c06da5c89babd30d411bda47146445c13f32778a114980"),
    RemoteFile(
        "test_share_1shot.json", "attack", "5f255240630596d497ad14e824aaa34a49a8063b070d3262d3ca2717d6a74f29"
    ),
    RemoteFile(
        "test_what_3shot.json", "attack", "709cdb59928c88bffb24c02e8e377404ee74dd192a0f5ec74eaf8f2e8a4848e2"
    ),
    RemoteFile("train.zip", "hub", None, unpack_to="train"),
    RemoteFile("test.zip", "hub", None, unpack_to="test"),
)

Downloader = Callable[[RemoteFile, Path], None]
"""Downloads one file to the given path (raising any exception on failure)."""


def hub_downloader(repo: str = HF_REPO, revision: str | None = None) -> Downloader:
    """A downloader for files of the VLGuard dataset repository on the Hugging Face Hub."""

    def download(remote: RemoteFile, dest: Path) -> None:
        from huggingface_hub import hf_hub_download

        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".hub-") as tmp:
            got = hf_hub_download(repo, remote.name, repo_type="dataset", revision=revision, local_dir=tmp)
            os.replace(str(got), dest)

    return download


def url_downloader(base_url: str = ATTACK_BASE_URL, timeout: float = 60.0) -> Downloader:
    """A downloader for `base_url/<name>` over HTTP(S) (or file://)."""

    def download(remote: RemoteFile, dest: Path) -> None:
        url = f"{base_url.rstrip('/')}/{remote.name}"
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 20)

    return download


def read_sums(path: Path) -> dict[str, str]:
    """Read a ``SHA256SUMS`` file (``<hex>  <name>`` per line); a missing file gives {}."""
    sums: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            digest, _, name = line.strip().partition("  ")
            if digest and name:
                sums[name] = digest
    return sums


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _safe_extract(archive: Path, dest: Path, wrapper: str) -> int:
    """Unpack a zip into `dest`, refusing absolute or `..` members; returns the number of files.

    When the archive holds a single top folder named `wrapper` (e.g. train/), its content becomes `dest`.
    """
    count = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise UnmirageError(f"zip member {info.filename!r} would escape the folder", file=archive)
        zf.extractall(dest)
        count = sum(1 for i in zf.infolist() if not i.is_dir())
    entries = [p for p in dest.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() == wrapper.lower():
        inner = entries[0]
        hoisted = dest.with_name(dest.name + ".inner")
        os.replace(inner, hoisted)
        shutil.rmtree(dest)
        os.replace(hoisted, dest)
    return count


def fetch_vlguard(
    out: str | os.PathLike,
    *,
    images: bool = True,
    hub: Downloader | None = None,
    attack: Downloader | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Download, verify and unpack the VLGuard files into `out`; returns the sha256 of every file.

    Files already in `out` whose sums match are not downloaded again. A download failure or a sum mismatch
    is a one-line error and leaves `out` as it was.
    """
    out = Path(out)
    hub = hub or hub_downloader()
    attack = attack or url_downloader()
    say = progress or (lambda _msg: None)
    created = not out.exists()
    if out.exists() and not out.is_dir():
        raise UnmirageError("output exists and is not a folder", file=out)
    out.mkdir(parents=True, exist_ok=True)
    recorded = read_sums(out / SUMS_FILE)
    wanted = [f for f in FILES if images or f.unpack_to is None]
    staging = Path(tempfile.mkdtemp(prefix=".fetch-partial-", dir=out))
    sums: dict[str, str] = {}
    try:
        fresh: list[RemoteFile] = []
        for remote in wanted:
            expected = remote.sha256 or recorded.get(remote.name)
            existing = out / remote.name
            if expected and existing.is_file() and sha256_file(existing) == expected:
                say(f"{remote.name}: already present, sum verified")
                sums[remote.name] = expected
                continue
            where = f"the Hugging Face Hub ({HF_REPO})" if remote.source == "hub" else "GitHub (attack files)"
            say(f"{remote.name}: downloading from {where}")
            dest = staging / remote.name
            try:
                (hub if remote.source == "hub" else attack)(remote, dest)
            except UnmirageError:
                raise
            except Exception as err:  # network, HTTP, offline mode, authentication
                offline = (
                    " HF_HUB_OFFLINE is set;" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
                )
                raise UnmirageError(
                    f"could not download {remote.name} from {where}: {_one_line(err)} "
                    f"(needs internet access;{offline} nothing was written)",
                    file=out,
                ) from None
            digest = sha256_file(dest)
            if expected and digest != expected:
                raise UnmirageError(
                    f"{remote.name}: sha256 {digest} does not match the expected {expected} (nothing was written)",
                    file=out,
                )
            sums[remote.name] = digest
            fresh.append(remote)
        unpacked: dict[str, Path] = {}
        for remote in fresh:
            if remote.unpack_to is not None:
                say(f"{remote.name}: unpacking into {out / remote.unpack_to}")
                target = staging / f"unpacked-{remote.unpack_to}"
                target.mkdir()
                try:
                    _safe_extract(staging / remote.name, target, remote.unpack_to)
                except zipfile.BadZipFile as err:
                    raise UnmirageError(
                        f"{remote.name} is not a valid zip ({_one_line(err)})", file=out
                    ) from None
                unpacked[remote.unpack_to] = target
        for remote in fresh:
            os.replace(staging / remote.name, out / remote.name)
        for name, folder in unpacked.items():
            final = out / name
            if final.exists():
                old = staging / f"old-{name}"
                os.replace(final, old)
            os.replace(folder, final)
        for remote in fresh:
            if remote.unpack_to is not None:
                say(_image_report(out, remote.unpack_to))
        recorded.update(sums)
        atomic_write_text(out / SUMS_FILE, "".join(f"{d}  {n}\n" for n, d in sorted(recorded.items())))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds when nothing was written
    return sums


def _image_report(out: Path, split: str) -> str:
    """How many of the images listed in `<split>.json` exist under `out/<split>/` (a line for the user)."""
    from unmirage.data.vlguard import load_vlguard

    listing = out / f"{split}.json"
    if not listing.is_file():
        return f"{split}/: unpacked"
    images = {r.image for r in load_vlguard(listing, allow_duplicate_ids=True).records}
    missing = sum(1 for image in images if not (out / split / image).is_file())
    state = "all present" if not missing else f"{missing} missing (check the archive layout)"
    return f"{split}/: {len(images)} images listed in {split}.json, {state}"
