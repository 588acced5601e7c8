"""Run folders: atomic writes, hashes, manifests and the bookkeeping that makes long jobs resumable."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

TRACKED_LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "deepspeed",
    "safetensors",
    "pydantic",
    "vllm",
)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask (read from /proc where possible: setting it is process-wide)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def normal_permissions(path: str | os.PathLike) -> None:
    """Give private files (0o600, as safetensors and temporary files are written) and private folders (0o700)
    under `path` the permissions of normally created ones (0o666 / 0o777 minus the umask)."""
    mask = current_umask()
    path = Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        with contextlib.suppress(OSError):
            mode = item.stat().st_mode & 0o777
            if item.is_file() and not item.is_symlink() and mode == 0o600:
                os.chmod(item, 0o666 & ~mask)
            elif item.is_dir() and not item.is_symlink() and mode == 0o700:
                os.chmod(item, 0o777 & ~mask)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to `path`; rename it over `path` only if the block ends without error.

    The file gets the permissions of a normally created one (0o666 minus the umask), not mkstemp's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as strict JSON atomically (a NaN or infinite number is written as null)."""
    atomic_write_text(path, dumps_strict(obj, indent=indent) + "\n")


def dumps_strict(obj: Any, indent: int | None = None) -> str:
    """`json.dumps` without the NaN/Infinity tokens that are not JSON: non-finite numbers become null."""
    try:
        return json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default, allow_nan=False)
    except ValueError:
        return json.dumps(
            _finite(json.loads(json.dumps(obj, ensure_ascii=False, default=_json_default))),
            indent=indent,
            ensure_ascii=False,
            allow_nan=False,
        )


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_strict(text: str | bytes) -> Any:
    """`json.loads` that refuses NaN/Infinity tokens and nesting too deep to parse (ValueError both)."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_revision(start: str | os.PathLike | None = None) -> str | None:
    """The git commit of the unmirage source tree (with `-dirty` when modified), or None outside git."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def library_versions(names: Iterable[str] = TRACKED_LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that decide a run's numbers (missing ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def build_manifest(
    *,
    command: str,
    config: Any = None,
    inputs: Iterable[str | os.PathLike] = (),
    outputs: Iterable[str | os.PathLike] = (),
    seed: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance record every run writes next to its outputs."""
    from unmirage.version import __version__

    def hashes(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
        return {str(p): sha256_file(p) for p in paths if Path(p).is_file()}

    manifest: dict[str, Any] = {
        "command": command,
        "argv": sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "unmirage_version": __version__,
        "git_revision": git_revision(),
        "libraries": library_versions(),
        "seed": seed,
        "config": config,
        "inputs": hashes(inputs),
        "outputs": hashes(outputs),
    }
    manifest.update(extra)
    return manifest


def write_manifest(out_dir: str | os.PathLike, name: str = "manifest.json", **kwargs: Any) -> Path:
    """Build a manifest (see `build_manifest`) and write it atomically to `out_dir/name`."""
    path = Path(out_dir) / name
    atomic_write_json(path, build_manifest(**kwargs))
    return path


class JsonlAppender:
    """Append-only JSON-lines writer for resumable jobs.

    Lines are written whole and flushed after each batch, so a killed job leaves at most a torn last line,
    which `read_jsonl_resumable` drops (and truncates) on restart.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows and flush them to disk."""
        text = "".join(dumps_strict(r) + "\n" for r in rows)
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl_resumable(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file written by `JsonlAppender`, cutting off a torn last line if a run was killed.

    Only the last line may be torn: a bad line with more lines after it means the file is not one this
    writer made, and is a one-line error (nothing is cut).
    """
    from unmirage.errors import UnmirageError

    path = Path(path)
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    good_bytes = 0
    size = path.stat().st_size
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                row = loads_strict(raw) if raw.endswith(b"\n") else None
            except ValueError:
                row = None
            if not isinstance(row, dict):
                if good_bytes + len(raw) < size or raw.endswith(b"\n"):
                    raise UnmirageError(
                        f"line {number} is not a JSON object; this is not a resumable JSON-lines output",
                        file=path,
                    )
                break
            rows.append(row)
            good_bytes += len(raw)
    if good_bytes != size:
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file strictly: a bad line is a one-line error naming the file and line."""
    from unmirage.errors import UnmirageError

    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = loads_strict(line)
            except ValueError as err:
                reason = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
                raise UnmirageError(f"line {number} is not valid JSON ({reason})", file=path) from None
            if not isinstance(row, dict):
                raise UnmirageError(f"line {number} is not a JSON object", file=path)
            rows.append(row)
    return rows
