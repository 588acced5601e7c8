"""Settings of the commands whose code loads torch (GCG, generation), here so that they load without it: the
command line builds its options from settings models at start-up (`unmirage.cli.settings`), and `unmirage
--help` should not wait for torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field, field_validator, model_validator

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


INPUT, MODEL, DECODING, JUDGE = "Input", "Model", "Decoding", "Judge"
"""The help panels of `unmirage generate`'s and `unmirage data mine-harmful`'s options."""


class GenerateSettings(StrictModel):
    """`unmirage generate` (`generate.vlguard.generate_vlguard`): which questions, which model, how decoded."""

    model: str = setting(
        help="Model: a local folder, a Hub id, or tiny-llava / tiny-qwen2_5_vl.", panel=MODEL
    )
    data: Path = setting(
        help="VLGuard-schema file: train/test.json or an attack file (K-shot too).", panel=INPUT
    )
    subset: str = setting(
        "unsafes", help="Questions to answer: unsafes, safe_safes or safe_unsafes.", panel=INPUT
    )
    image_root: Path | None = setting(
        None, help="Folder the records' image paths are relative to.", panel=INPUT
    )
    placeholder_images: bool = setting(
        False, help="Grey placeholder images instead of `image_root` (text-only run; recorded).", panel=INPUT
    )
    limit: int | None = setting(
        None, ge=1, help="Answer only the first N ids (all their shots).", panel=INPUT
    )
    template: str = setting(
        "v1", help="Prompt template: v1 (reference) or chat (the model's own).", panel=DECODING
    )
    batch_size: int = setting(16, ge=1, help="Generation batch size.", panel=DECODING)
    max_new_tokens: int = setting(256, ge=1, help="Maximum new tokens per answer (greedy).", panel=DECODING)
    assistant_prefix: str | None = setting(
        None,
        help="Text the answer is forced to start with (prefill attack); kept in the answer.",
        panel=DECODING,
    )
    dtype: str = setting("auto", help="Model dtype: auto, float32, bfloat16, float16.", panel=MODEL)
    adapter: Path | None = setting(
        None, help="LoRA adapter folder to apply on top of the model.", panel=MODEL
    )
    backend: str = setting(
        "hf", help="Generation backend: hf (transformers) or vllm (GPU, extra 'vllm').", panel=MODEL
    )

    @model_validator(mode="after")
    def _images_or_placeholders(self) -> GenerateSettings:
        if (self.image_root is None) == (not self.placeholder_images):
            raise ValueError("give either image_root or placeholder_images (for text-only experiments)")
        return self


class MineSettings(StrictModel):
    """`unmirage data mine-harmful` (`mining.run_mine_harmful`): generators, judge, decoding."""

    vlguard: Path = setting(
        help="VLGuard training file (train.json); the questions of --subset are mined.", panel=INPUT
    )
    subset: str = setting(
        "unsafes",
        help="Which questions: unsafes (unsafe-image records, the reference) or safe_unsafes (the unsafe "
        "instructions on safe images: harmful as text; build-unlearn --forget-subset takes the same).",
        panel=INPUT,
    )
    generators: list[str] = setting(
        min_length=1,
        help="A model that answers the unsafe queries (Hub id, local folder or tiny-*); repeat for several.",
        panel=MODEL,
        flag="generator",
    )
    image_root: Path | None = setting(
        None, help="Folder the records' image paths are relative to.", panel=INPUT
    )
    placeholder_images: bool = setting(
        False,
        help="Use grey placeholder images instead of real ones (text-only experiments; recorded).",
        panel=INPUT,
    )
    template: str = setting("v1", help="Generators' prompt template: v1 (reference) or chat.", panel=DECODING)
    max_new_tokens: int = setting(256, ge=1, help="New tokens per candidate answer (greedy).", panel=DECODING)
    batch_size: int = setting(
        16, ge=1, help="Samples per generation batch (and per resumable step).", panel=DECODING
    )
    dtype: str = setting("auto", help="Model dtype: auto, float32, bfloat16 or float16.", panel=MODEL)
    device: str = setting("auto", help="auto (GPU if present), cpu, or a device such as cuda:1.", panel=MODEL)
    judge: str | None = setting(
        None,
        help="Text model that picks the most harmful candidate (needed with several `generators`).",
        panel=JUDGE,
    )
    judge_template: str = setting(
        "chat", help="Judge's prompt template: chat (reference) or v1.", panel=JUDGE
    )
    judge_max_new_tokens: int = setting(100, ge=1, help="New tokens of the judge's reply.", panel=JUDGE)

    @model_validator(mode="after")
    def _consistent(self) -> MineSettings:
        if len(set(self.generators)) != len(self.generators):
            raise ValueError("each of generators must be a different model")
        if len(self.generators) > 1 and self.judge is None:
            raise ValueError("several generators need a judge to choose among their answers")
        if self.image_root is not None and self.placeholder_images:
            raise ValueError("give either image_root or placeholder_images, not both")
        return self
