"""Batched generation vs the reference's one-at-a-time loop: same model, prompts and greedy outputs.

Prints tokens/s of both and their ratio at batch 32 with the protocol's 256 new tokens, for the default tiny
LLaVA and a >= 20M-parameter one (32 px images: 16 image tokens, so decoding, not the prompt, dominates as
with real answers; with long prompts the prefill, which batching cannot shorten, takes a larger share).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, timed  # noqa: E402,I001  (sets OMP_WAIT_POLICY before torch starts)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from unmirage.generate import BatchedGenerator, GenerationConfig, GenItem  # noqa: E402
from unmirage.models import load_model  # noqa: E402

WORDS = [
    "What is in the picture",
    "Share the recipe of this object",
    "Can you describe the colours",
    "How do I make this at home",
    "Please explain the chart",
    "Tell me about the person",
]


def items(n: int) -> list[GenItem]:
    return [
        GenItem(
            id=str(i),
            question=f"{WORDS[i % len(WORDS)]} {'in detail ' * (i % 5)}?",
            image=Image.new("RGB", (32, 32), ((37 * i) % 255, 90, 160)),
        )
        for i in range(n)
    ]


def one_at_a_time(loaded, batch: list[GenItem], max_new: int) -> tuple[list[str], int]:
    """The reference loop: one prompt per `generate` call, image processed inline."""
    gen = BatchedGenerator(loaded, GenerationConfig(max_new_tokens=max_new, batch_size=1))
    answers, tokens = [], 0
    for item in batch:
        inputs, _ = gen.encode([item])
        with torch.inference_mode():
            out = loaded.model.generate(
                **inputs, max_new_tokens=max_new, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
            )
        new = out[0, inputs["input_ids"].shape[1] :]
        tokens += int((new != loaded.tokenizer.pad_token_id).sum())
        answers.append(loaded.tokenizer.decode(new, skip_special_tokens=True))
    return answers, tokens


def run(name: str, sizes: dict, n: int, max_new: int) -> None:
    loaded = load_model("tiny-llava", tiny_sizes=sizes)
    params = sum(p.numel() for p in loaded.model.parameters())
    batch = items(n)
    gen = BatchedGenerator(loaded, GenerationConfig(max_new_tokens=max_new, batch_size=32))
    gen(batch[:4])  # warm-up
    t_batched, rows = timed(lambda: gen(batch))
    t_single, (answers, tokens) = timed(lambda: one_at_a_time(loaded, batch, max_new))
    equal = [r["answer"] for r in rows] == [a.strip() for a in answers]
    emit("generation", f"{name} ({params / 1e6:.1f}M) one-at-a-time", tokens / t_single, "tok/s")
    emit("generation", f"{name} ({params / 1e6:.1f}M) batched 32", tokens / t_batched, "tok/s")
    emit(
        "generation",
        f"{name} speed-up (outputs equal: {equal})",
        t_single / t_batched,
        "x",
        target=">= 10x tiny, >= 8x 20M+",
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    run("tiny", {}, n=64, max_new=256)
    run("20M+", {"hidden": 512, "layers": 8, "heads": 8, "vision_hidden": 128}, n=32, max_new=256)
