"""Output ownership and run identity: a command writes only into outputs it created, for the same run.

Every output folder holds a `manifest.json`, and every output file a `<stem>.manifest.json` beside it,
written *before* any result: it records the command and the run's identity (the model, with its weight
files' sizes and modification times or the tiny model's sizes; the input files' sha256; the settings that
change results). A later command that finds the output:

* continues it (resumable commands: `generate`, `eval`, `unlearn --resume`) only when the command and the
  identity are the same, and otherwise stops with a one-line error naming the first difference;
* replaces it only with `--overwrite`, and only when unmirage wrote it (a folder of other files is never
  emptied; a file that is not unmirage's is replaced only with `--overwrite`);
* never writes into a file or folder that is one of its own inputs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from unmirage.errors import UnmirageError

MANIFEST = "manifest.json"
RUNNING = "running"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MODEL_FILES = ("config.json", "adapter_config.json")

Claim = Literal["new", "resume"]


def model_identity(source: str | os.PathLike | None, tiny_sizes: Mapping[str, Any] | None = None) -> Any:
    """What a model reference stands for: a local folder's weight files (name, size, mtime), a tiny model's
    sizes, or a Hub id as given. None stays None."""
    if source is None:
        return None
    path = Path(source)
    if path.exists():
        entries = [path] if path.is_file() else sorted(path.iterdir())
        files = {
            f.name: [f.stat().st_size, f.stat().st_mtime_ns]
            for f in entries
            if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.name in MODEL_FILES)
        }
        return {"path": str(path.resolve()), "files": files}
    identity: dict[str, Any] = {"name": str(source)}
    if tiny_sizes:
        identity["tiny_sizes"] = dict(tiny_sizes)
    return identity


def file_identity(path: str | os.PathLike | None) -> str | None:
    """The sha256 of an input file (None for no file)."""
    if path is None:
        return None
    from unmirage.runs import sha256_file

    return sha256_file(path) if Path(path).is_file() else None


def folder_path(path: str | os.PathLike | None) -> str | None:
    """An input folder as an absolute path (None stays None)."""
    return None if path is None else str(Path(path).resolve())


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(_flatten(child, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix or "<root>": value}


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if value is not None else "unset"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def identity_difference(old: Any, new: Any) -> str | None:
    """The first difference between two identities, as `key: was X, now Y` (None when they are equal)."""
    old = json.loads(json.dumps(old, default=str))
    new = json.loads(json.dumps(new, default=str))
    if old == new:
        return None
    before, after = _flatten(old), _flatten(new)
    for key in [*before, *(k for k in after if k not in before)]:
        if before.get(key, ...) != after.get(key, ...):
            was = _short(before[key]) if key in before else "absent"
            now = _short(after[key]) if key in after else "absent"
            return f"{key}: was {was}, now {now}"
    return "the settings differ"


def read_owner(manifest: Path) -> dict[str, Any] | None:
    """The ownership record in a manifest written by unmirage (None when absent or not unmirage's)."""
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        return None
    if "unmirage_version" not in data and "identity" not in data:
        return None
    return data


def owner_record(command: str, identity: Any, output: str | None = None) -> dict[str, Any]:
    """The manifest a command writes when it starts (the final manifest keeps `command` and `identity`)."""
    from unmirage.version import __version__

    record: dict[str, Any] = {
        "command": command,
        "status": RUNNING,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "unmirage_version": __version__,
        "identity": identity,
    }
    if output is not None:
        record["output"] = output
    return record


def _check_not_input(out: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    target = out.resolve()
    for path in inputs:
        if path is None:
            continue
        source = Path(path).resolve()
        if target == source or (target.exists() and source.exists() and os.path.samefile(target, source)):
            raise UnmirageError("is also an input of this command; write the output elsewhere", file=out)


def _decide(
    where: Path, owner: dict[str, Any] | None, *, command: str, identity: Any, resume: bool, resume_hint: str
) -> Claim:
    """Continue an output unmirage wrote for this same run, else a one-line error."""
    if owner is None:
        raise UnmirageError(
            "exists and was not written by unmirage (no manifest); choose another output or remove it",
            file=where,
        )
    if owner["command"] != command:
        raise UnmirageError(
            f"holds the output of `unmirage {owner['command']}`; choose another output "
            "(or pass --overwrite to replace it)",
            file=where,
        )
    if not resume:
        raise UnmirageError(
            f"already holds a `unmirage {command}` run; {resume_hint}pass --overwrite to replace it",
            file=where,
        )
    if "identity" not in owner:
        raise UnmirageError(
            "was written by an older unmirage that did not record the run's identity; "
            "pass --overwrite to replace it",
            file=where,
        )
    difference = identity_difference(owner["identity"], identity)
    if difference is not None:
        raise UnmirageError(
            f"holds a `unmirage {command}` run with other settings ({difference}); a resume needs the same "
            "ones: use them, another output, or --overwrite to replace it",
            file=where,
        )
    return "resume"


def claim_folder(
    out: str | os.PathLike,
    *,
    command: str,
    identity: Any,
    resume: bool = True,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    resume_hint: str = "",
    write: bool = True,
) -> Claim:
    """Make `out` this run's output folder, or continue it; returns "new" or "resume".

    A missing or empty folder (or one holding only an unfinished claim of this command) is new. A folder
    unmirage wrote is continued when `resume` and the identity matches, replaced with `overwrite`, and
    otherwise refused; a folder of other files is always refused. `write=False` only checks (`--check`,
    and the other processes of a multi-process run).
    """
    from unmirage.runs import atomic_write_json

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UnmirageError("the output folder is a file", file=out)
    _check_not_input(out, inputs)
    manifest = out / MANIFEST
    owner = read_owner(manifest)
    contents = list(out.iterdir()) if out.is_dir() else []
    only_claim = (
        owner is not None
        and owner.get("status") == RUNNING
        and owner["command"] == command
        and contents == [manifest]
    )
    if contents and not only_claim:
        if owner is None:
            extra = " (--overwrite replaces only unmirage outputs)" if overwrite else ""
            raise UnmirageError(
                f"holds files unmirage did not write (no manifest){extra}; choose another folder or empty it",
                file=out,
            )
        if not overwrite:
            return _decide(
                out, owner, command=command, identity=identity, resume=resume, resume_hint=resume_hint
            )
        if write:
            shutil.rmtree(out)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, owner_record(command, identity))
    return "new"


def claim_file(
    out: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    command: str,
    identity: Any,
    resume: bool = True,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    write: bool = True,
) -> Claim:
    """Make `out` this run's output file (its ownership record in `manifest`), or continue it.

    `write=False` only checks (other processes of a multi-process run).
    """
    from unmirage.runs import atomic_write_json

    out, manifest = Path(out), Path(manifest)
    if out.exists() and not out.is_file():
        raise UnmirageError("the output path is a folder, not a file", file=out)
    if manifest.exists() and not manifest.is_file():
        raise UnmirageError("the manifest path is a folder, not a file", file=manifest)
    _check_not_input(out, inputs)
    _check_not_input(manifest, inputs)
    owner = read_owner(manifest)
    if owner is not None and owner.get("output") not in (None, out.name):
        owner = None  # the manifest of another file with the same stem
    if out.exists():
        if not overwrite:
            return _decide(out, owner, command=command, identity=identity, resume=resume, resume_hint="")
        if write:
            out.unlink()
    elif manifest.exists() and owner is None and not overwrite:
        raise UnmirageError(
            "exists and was not written by unmirage for this output; choose another output or remove it",
            file=manifest,
        )
    if write:
        atomic_write_json(manifest, owner_record(command, identity, output=out.name))
    return "new"
