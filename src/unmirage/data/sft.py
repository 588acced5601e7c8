"""The safety fine-tuning set: every (image, instruction, response) pair of a VLGuard training file.

This is the data of the SFT baseline whose mirage the project exposes: unsafe-image instructions with their
refusals (`unsafes`), safe-image safe instructions with helpful answers (`safe_safes`) and safe-image unsafe
instructions with refusals (`safe_unsafes`); 1023 + 977 + 977 = 2977 pairs on the real training file. Written
as a LLaVA conversation file in record order (the trainer shuffles), with a manifest beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

from unmirage.data.conversations import Conversation, single_turn
from unmirage.data.vlguard import load_vlguard, view
from unmirage.errors import UnmirageError
from unmirage.runs import atomic_write_json, write_manifest

SFT_SUBSETS = ("unsafes", "safe_safes", "safe_unsafes")


def make_sft_set(vlguard: str | os.PathLike) -> tuple[list[Conversation], dict[str, int]]:
    """The conversations (ids suffixed by subset, so each is unique) and the count per subset."""
    data = load_vlguard(vlguard, kind="plain", allow_duplicate_ids=True)
    samples = [s for subset in SFT_SUBSETS for s in view(data, subset)]
    samples.sort(key=lambda s: (s.record, SFT_SUBSETS.index(s.subset)))
    counts = {subset: sum(s.subset == subset for s in samples) for subset in SFT_SUBSETS}
    return [single_turn(f"{s.id}/{s.subset}", s.image, s.question, s.response) for s in samples], counts


def build_sft(vlguard: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, dict[str, int]]:
    """Write the SFT set to `out` (JSON) and `OUT_STEM.manifest.json` beside it; returns (path, counts)."""
    from unmirage.outputs import claim_file, file_identity

    out = Path(out)
    if out.suffix != ".json":
        raise UnmirageError("the SFT set is a .json file", file=out)
    identity = {"vlguard": file_identity(vlguard)}
    manifest = out.parent / f"{out.stem}.manifest.json"
    claim_file(out, manifest, command="data build-sft", identity=identity, inputs=[vlguard])
    conversations, counts = make_sft_set(vlguard)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, [c.to_json() for c in conversations])
    write_manifest(
        out.parent,
        name=manifest.name,
        identity=identity,
        output=out.name,
        command="data build-sft",
        config={"vlguard": str(vlguard)},
        inputs=[vlguard],
        outputs=[out],
        counts={**counts, "total": len(conversations)},
        format="llava-conversations",
    )
    return out, counts
