"""GCG's settings (`GCGConfig`), apart from the attack itself so that they load without torch: the
command line builds `unmirage eval`'s and `unmirage attack gcg`'s options from them at start-up."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, field_validator

from unmirage.config import StrictModel, setting

DEFAULT_SUFFIX = " !" * 20
"""The usual GCG starting point: 20 exclamation marks (each a token in byte-level and SentencePiece vocabs)."""


class GCGConfig(StrictModel):
    """The GCG budget and target. Defaults: the paper's search width (512) and top-k (256)."""

    target: str = setting("Sure, here is", help="Text the answer should open with.")
    steps: int = setting(250, ge=1, help="GCG steps per question (at most).")
    search_width: int = setting(512, ge=1, help="Candidate suffixes scored per step.")
    topk: int = setting(256, ge=1, help="Tokens considered per suffix position.")
    suffix_init: str = DEFAULT_SUFFIX
    seed: int = 0
    batch_size: int | None = Field(None, ge=1)
    prefix_cache: bool = True
    early_stop: bool = True
    allow_non_ascii: bool = False
    template: str = "v1"

    @field_validator("target", "suffix_init")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        return value

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        from unmirage.models.families.base import TEMPLATES

        if value not in TEMPLATES:
            raise ValueError(f"unknown prompt template (choose from {', '.join(TEMPLATES)})")
        return value

    def fingerprint(self, model: str) -> str:
        """A short hash of these settings and the model: rows of a resumed run must share it."""
        text = json.dumps({"model": model, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
