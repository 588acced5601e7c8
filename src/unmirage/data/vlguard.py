"""VLGuard records, validated on load, their evaluation views, and the attack files in the same schema.

Two record forms (see docs/data.md):

* safe image:   ``{"id", "image", "safe": true,
                  "instr-resp": [{"safe_instruction", "response"}, {"unsafe_instruction", "response"}]}``
* unsafe image: ``{"id", "image", "safe": false, "harmful_category", "harmful_subcategory",
                  "instr-resp": [{"instruction", "response"}]}``

Views (one `Sample` per question): ``safe_safes`` (safe image, safe instruction), ``safe_unsafes`` (safe
image, unsafe instruction), ``unsafes`` (unsafe image, its instruction).

Attack files use the same schema. A 1-shot file holds one rewritten record per id (a plain file). A K-shot
file holds K records per id (the rewrites of one question); records are grouped by id, never by position, so
a shuffled file gives the same groups. `load_vlguard` detects the kind (or takes it as an argument).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unmirage.data.jsonfile import json_type, read_json_list, require_str, short
from unmirage.errors import UnmirageError

SUBSETS: tuple[str, ...] = ("safe_safes", "safe_unsafes", "unsafes")
"""The three evaluation views of a VLGuard file."""

FileKind = Literal["auto", "plain", "kshot"]

CATEGORIES: dict[str, tuple[str, ...]] = {
    "privacy": ("personal data",),
    "risky behavior": ("professional advice", "political", "sexually explicit", "violence"),
    "deception": ("disinformation",),
    "discrimination": ("sex", "race", "other"),
}
"""The harmful categories and subcategories of VLGuard (informative; other values are accepted)."""


@dataclass(frozen=True)
class QA:
    """One instruction and its reference response."""

    instruction: str
    response: str


@dataclass(frozen=True)
class SafeImageRecord:
    """A record on a safe image: a safe instruction (helpful answer) and an unsafe one (refusal)."""

    index: int
    id: str
    image: str
    safe_pair: QA
    unsafe_pair: QA
    safe: Literal[True] = True


@dataclass(frozen=True)
class UnsafeImageRecord:
    """A record on an unsafe image: one instruction whose reference response is a refusal."""

    index: int
    id: str
    image: str
    category: str
    subcategory: str
    pair: QA
    safe: Literal[False] = False


VLGuardRecord = SafeImageRecord | UnsafeImageRecord


@dataclass(frozen=True)
class Sample:
    """One question of a view: what generation, evaluation and the forget/retain builder consume.

    `shot` is the position of the record inside its K-shot group (order of appearance in the file), 0 for
    plain files. `record` is the 0-based index of the record in its file.
    """

    id: str
    image: str
    question: str
    response: str
    subset: str
    category: str | None = None
    subcategory: str | None = None
    shot: int = 0
    record: int = 0


@dataclass(frozen=True)
class VLGuardFile:
    """A validated VLGuard-schema file.

    `kind` is "plain" (ids unique unless duplicates were explicitly allowed) or "kshot" (every id holds
    exactly `shots` records). `groups` lists record indices per id in order of first appearance.
    """

    path: Path
    records: tuple[VLGuardRecord, ...]
    kind: Literal["plain", "kshot"]
    shots: int
    groups: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def safe_records(self) -> list[SafeImageRecord]:
        return [r for r in self.records if isinstance(r, SafeImageRecord)]

    @property
    def unsafe_records(self) -> list[UnsafeImageRecord]:
        return [r for r in self.records if isinstance(r, UnsafeImageRecord)]

    def duplicate_ids(self) -> list[str]:
        """Ids that occur in more than one record (empty for a valid plain file unless allowed)."""
        return [gid for gid, members in self.groups if len(members) > 1] if self.kind == "plain" else []

    def counts(self) -> dict[str, int]:
        """Record and view sizes, for summaries and manifests."""
        n_safe = len(self.safe_records)
        n_unsafe = len(self.records) - n_safe
        return {
            "records": len(self.records),
            "safe_images": n_safe,
            "unsafe_images": n_unsafe,
            "ids": len(self.groups),
            "safe_safes": n_safe,
            "safe_unsafes": n_safe,
            "unsafes": n_unsafe,
        }


def _record_label(index: int, raw: Any) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    return f"{index} (id {rid})" if isinstance(rid, str) and rid else str(index)


def parse_record(raw: Any, index: int, file: object) -> VLGuardRecord:
    """Validate one raw JSON record; any problem is a one-line error naming file, record and field."""
    label = _record_label(index, raw)
    if not isinstance(raw, dict):
        raise UnmirageError(f"expected a JSON object, got {json_type(raw)}", file=file, record=label)
    rid = require_str(raw, "id", file=file, record=label)
    image = require_str(raw, "image", file=file, record=label)
    if "safe" not in raw:
        raise UnmirageError("required field is missing", file=file, record=label, field="safe")
    safe = raw["safe"]
    if not isinstance(safe, bool):
        raise UnmirageError(
            f"unknown value {short(safe)} (expected true or false)", file=file, record=label, field="safe"
        )
    pairs = raw.get("instr-resp")
    if "instr-resp" not in raw:
        raise UnmirageError("required field is missing", file=file, record=label, field="instr-resp")
    if not isinstance(pairs, list):
        raise UnmirageError(
            f"expected a list, got {json_type(pairs)}", file=file, record=label, field="instr-resp"
        )
    if safe:
        found = _instruction_pairs(pairs, ("safe_instruction", "unsafe_instruction"), file, label)
        return SafeImageRecord(
            index=index, id=rid, image=image, safe_pair=found[0], unsafe_pair=found[1], safe=True
        )
    category = require_str(raw, "harmful_category", file=file, record=label)
    subcategory = require_str(raw, "harmful_subcategory", file=file, record=label)
    (pair,) = _instruction_pairs(pairs, ("instruction",), file, label)
    return UnsafeImageRecord(
        index=index, id=rid, image=image, category=category, subcategory=subcategory, pair=pair, safe=False
    )


def _instruction_pairs(pairs: list[Any], keys: tuple[str, ...], file: object, label: str) -> list[QA]:
    """Find exactly one `{key, "response"}` item per key (any order) in an `instr-resp` list."""
    form = "safe-image" if keys[0] == "safe_instruction" else "unsafe-image"
    expected = " and ".join(f"{{{k}, response}}" for k in keys)
    if len(pairs) != len(keys):
        raise UnmirageError(
            f"a {form} record needs {len(keys)} item(s) {expected}, got {len(pairs)}",
            file=file,
            record=label,
            field="instr-resp",
        )
    found: dict[str, QA] = {}
    for i, item in enumerate(pairs):
        where = f"instr-resp[{i}]"
        if not isinstance(item, dict):
            raise UnmirageError(
                f"expected a JSON object, got {json_type(item)}", file=file, record=label, field=where
            )
        names = [k for k in item if k != "response"]
        if len(names) != 1 or names[0] not in keys or "response" not in item:
            got = ", ".join(sorted(item)) or "no keys"
            raise UnmirageError(
                f"a {form} record expects {expected}, got keys {got}", file=file, record=label, field=where
            )
        key = names[0]
        if key in found:
            raise UnmirageError(f"'{key}' appears twice", file=file, record=label, field=where)
        instruction = require_str(item, key, file=file, record=label, field=f"{where}.{key}")
        response = require_str(
            item, "response", file=file, record=label, field=f"{where}.response", allow_empty=True
        )
        found[key] = QA(instruction=instruction, response=response)
    return [found[k] for k in keys]


def _group_by_id(records: Iterable[VLGuardRecord]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for r in records:
        groups.setdefault(r.id, []).append(r.index)
    return groups


def load_vlguard(
    path: str | os.PathLike,
    *,
    kind: FileKind = "auto",
    shots: int | None = None,
    allow_duplicate_ids: bool = False,
) -> VLGuardFile:
    """Read and validate a VLGuard-schema file (train/test or an attack file).

    kind: "plain" (one record per id), "kshot" (every id has the same number of records, `shots` or the
    most common size of the repeated groups) or "auto" (K-shot when more than half of the ids repeat,
    plain otherwise).
    allow_duplicate_ids: accept repeated ids in a plain file (VLGuard's train.json repeats one id,
    Ads_303871, with two different questions on the same image); evaluation keeps this False.
    """
    path = Path(path)
    return parse_vlguard(
        read_json_list(path, "VLGuard records"),
        path,
        kind=kind,
        shots=shots,
        allow_duplicate_ids=allow_duplicate_ids,
    )


def parse_vlguard(
    raws: Sequence[Any],
    path: str | os.PathLike,
    *,
    kind: FileKind = "auto",
    shots: int | None = None,
    allow_duplicate_ids: bool = False,
) -> VLGuardFile:
    """Validate already-parsed VLGuard records (JSON objects) of the file `path` (named in errors).

    Same rules and arguments as `load_vlguard`; for records read some other way (JSON lines, memory).
    """
    if kind not in ("auto", "plain", "kshot"):
        raise UnmirageError(f"unknown file kind '{kind}' (choose from auto, plain, kshot)")
    if shots is not None and (shots < 1 or (kind == "plain" and shots != 1)):
        raise UnmirageError(f"shots must be at least 1 (and 1 for a plain file), got {shots}")
    path = Path(path)
    if not raws:
        raise UnmirageError("holds no VLGuard records (empty list)", file=path)
    records = tuple(parse_record(raw, i, path) for i, raw in enumerate(raws))
    groups = _group_by_id(records)
    sizes = Counter(len(members) for members in groups.values())
    repeated = Counter(n for n in (len(m) for m in groups.values()) if n > 1)
    if kind == "auto":
        most_ids_repeat = 2 * sum(repeated.values()) > len(groups)
        kind = "kshot" if (shots is not None and shots > 1) or most_ids_repeat else "plain"
    if kind == "kshot":
        k = shots if shots is not None else (repeated or sizes).most_common(1)[0][0]
        _check_groups(path, records, groups, k)
        resolved_kind: Literal["plain", "kshot"] = "kshot"
    else:
        k = 1
        if not allow_duplicate_ids:
            for gid, members in groups.items():
                if len(members) > 1:
                    raise UnmirageError(
                        f"duplicate id (first at record {members[0]}); ids must be unique in a plain or "
                        "1-shot file (VLGuard's official train.json repeats one id: accept it with "
                        "`unmirage data check --allow-duplicate-ids`, or allow_duplicate_ids=True)",
                        file=path,
                        record=f"{members[1]} (id {gid})",
                        field="id",
                    )
        resolved_kind = "plain"
    return VLGuardFile(
        path=path,
        records=records,
        kind=resolved_kind,
        shots=k,
        groups=tuple((gid, tuple(members)) for gid, members in groups.items()),
    )


def _check_groups(
    path: Path, records: tuple[VLGuardRecord, ...], groups: dict[str, list[int]], k: int
) -> None:
    """Every id of a K-shot file has exactly k records, all on the same image and of the same form."""
    for gid, members in groups.items():
        first = records[members[0]]
        if len(members) != k:
            raise UnmirageError(
                f"K-shot group has {len(members)} record(s), expected {k} (records {', '.join(map(str, members))})",
                file=path,
                record=f"{members[0]} (id {gid})",
                field="id",
            )
        for index in members[1:]:
            other = records[index]
            if other.image != first.image:
                raise UnmirageError(
                    f"image differs from the group's first record {members[0]} ({first.image})",
                    file=path,
                    record=f"{index} (id {gid})",
                    field="image",
                )
            if other.safe != first.safe:
                raise UnmirageError(
                    f"'safe' differs from the group's first record {members[0]}",
                    file=path,
                    record=f"{index} (id {gid})",
                    field="safe",
                )


def _record_samples(record: VLGuardRecord, subset: str, shot: int) -> Sample | None:
    if subset == "unsafes":
        if not isinstance(record, UnsafeImageRecord):
            return None
        pair, category, subcategory = record.pair, record.category, record.subcategory
    else:
        if not isinstance(record, SafeImageRecord):
            return None
        pair = record.safe_pair if subset == "safe_safes" else record.unsafe_pair
        category = subcategory = None
    return Sample(
        id=record.id,
        image=record.image,
        question=pair.instruction,
        response=pair.response,
        subset=subset,
        category=category,
        subcategory=subcategory,
        shot=shot,
        record=record.index,
    )


def view(data: VLGuardFile, subset: str) -> list[Sample]:
    """The samples of one view, in file order (K-shot files: grouped by id, shots in order of appearance).

    An unknown subset name or an empty view is a one-line error.
    """
    if subset not in SUBSETS:
        raise UnmirageError(f"unknown subset '{subset}' (choose from {', '.join(SUBSETS)})")
    samples = []
    for _, members in data.groups:
        for shot, index in enumerate(members):
            sample = _record_samples(data.records[index], subset, shot if data.kind == "kshot" else 0)
            if sample is not None:
                samples.append(sample)
    if data.kind == "plain":
        samples.sort(key=lambda s: s.record)
    if not samples:
        counts = data.counts()
        raise UnmirageError(
            f"subset '{subset}' is empty in this file ({counts['safe_images']} safe-image and "
            f"{counts['unsafe_images']} unsafe-image records)",
            file=data.path,
        )
    return samples


def safe_safes(data: VLGuardFile) -> list[Sample]:
    """Safe image + safe instruction: helpfulness and over-refusal."""
    return view(data, "safe_safes")


def safe_unsafes(data: VLGuardFile) -> list[Sample]:
    """Safe image + unsafe instruction."""
    return view(data, "safe_unsafes")


def unsafes(data: VLGuardFile) -> list[Sample]:
    """Unsafe image + its instruction: attack success."""
    return view(data, "unsafes")


def load_samples(
    path: str | os.PathLike,
    subset: str,
    *,
    kind: FileKind = "auto",
    shots: int | None = None,
    allow_duplicate_ids: bool = False,
) -> list[Sample]:
    """Turn a VLGuard-schema file and a subset name into samples: the entry point of generation and eval.

    Works for train/test files and attack files alike: a K-shot file is detected (or named by `kind`,
    `shots`) and its samples come grouped by id with `Sample.shot` = 0..K-1.
    """
    if subset not in SUBSETS:
        raise UnmirageError(f"unknown subset '{subset}' (choose from {', '.join(SUBSETS)})")
    data = load_vlguard(path, kind=kind, shots=shots, allow_duplicate_ids=allow_duplicate_ids)
    return view(data, subset)


def group_by_id(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by id (order of first appearance; shots sorted), e.g. for any-of-K attack success."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.id, []).append(s)
    for members in groups.values():
        members.sort(key=lambda s: s.shot)
    return groups
