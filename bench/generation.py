"""Batched generation vs the reference's one-at-a-time loop: same model, prompts and greedy outputs.

Prints tokens/s of both and their ratio at batch 32 with the protocol's 256 new tokens, for the default tiny
LLaVA and a >= 20M-parameter one (32 px images: 16 image tokens, so decoding, not the prompt, dominates as
with real answers; with long prompts the prefill, which batching cannot shorten, takes a larger share).
Batched generation runs with each KV cache side by side: the preallocated one (the default,
`unmirage.generate.cache`), transformers' static cache and its dynamic default.

The whole comparison runs twice, in child processes: with OMP_WAIT_POLICY=PASSIVE (threads sleep between
parallel regions; the Makefile's setting, right when other jobs share the cores) and with OpenMP's default
(threads spin briefly before sleeping, right on a quiet machine). The tiny model's batched decoding is made
of many very small operations, so waking sleeping threads dominates it under PASSIVE.

    python bench/generation.py                   # both policies
    python bench/generation.py --policy PASSIVE  # one
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

POLICIES = ("PASSIVE", "default")
CACHES = ("preallocated", "static", None)
MODELS = (
    # name, tiny LLaVA sizes, prompts
    ("tiny", {}, 64),
    ("20M+", {"hidden": 512, "layers": 8, "heads": 8, "vision_hidden": 128}, 32),
)
WORDS = [
    "What is in the picture",
    "Share the recipe of this object",
    "Can you describe the colours",
    "How do I make this at home",
    "Please explain the chart",
    "Tell me about the person",
]


def items(n: int) -> list:
    from PIL import Image

    from unmirage.generate import GenItem

    return [
        GenItem(
            id=str(i),
            question=f"{WORDS[i % len(WORDS)]} {'in detail ' * (i % 5)}?",
            image=Image.new("RGB", (32, 32), ((37 * i) % 255, 90, 160)),
        )
        for i in range(n)
    ]


def one_at_a_time(loaded, batch: list, max_new: int) -> tuple[list[str], int]:
    """The reference loop: one prompt per `generate` call (transformers' default cache), image processed inline."""
    import torch

    from unmirage.generate import BatchedGenerator, GenerationConfig

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


def run(policy: str, name: str, sizes: dict, n: int, max_new: int) -> None:
    import torch

    from _common import emit, timed
    from unmirage.generate import BatchedGenerator, GenerationConfig
    from unmirage.models import load_model

    torch.manual_seed(0)
    loaded = load_model("tiny-llava", tiny_sizes=sizes)
    params = sum(p.numel() for p in loaded.model.parameters())
    label = f"{name} ({params / 1e6:.1f}M), OMP {policy}"
    batch = items(n)
    t_single, (answers, tokens) = timed(lambda: one_at_a_time(loaded, batch, max_new))
    emit("generation", f"{label}: one-at-a-time", tokens / t_single, "tok/s")
    for cache in CACHES:
        gen = BatchedGenerator(
            loaded, GenerationConfig(max_new_tokens=max_new, batch_size=32, cache_implementation=cache)
        )
        gen(batch[:4])  # warm-up
        t_batched, rows = timed(lambda gen=gen: gen(batch))
        equal = [r["answer"] for r in rows] == [a.strip() for a in answers]
        cache_name = cache or "dynamic"
        emit("generation", f"{label}: batched 32, {cache_name} cache", tokens / t_batched, "tok/s")
        emit(
            "generation",
            f"{label}: speed-up, {cache_name} cache (outputs equal: {equal})",
            t_single / t_batched,
            "x",
            target=">= 10x tiny, >= 8x 20M+" if cache == CACHES[0] else None,
        )


def main(argv: list[str]) -> int:
    if "--child" in argv:
        policy = os.environ.get("UNMIRAGE_BENCH_POLICY", "PASSIVE")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import _common  # noqa: F401  (applies the OpenMP policy before torch loads)

        for name, sizes, n in MODELS:
            run(policy, name, sizes, n, max_new=256)
        return 0
    policies = [argv[argv.index("--policy") + 1]] if "--policy" in argv else list(POLICIES)
    for policy in policies:  # OpenMP reads its policy once, when torch loads: one process per policy
        env = {**os.environ, "OMP_WAIT_POLICY": policy, "UNMIRAGE_BENCH_POLICY": policy}
        code = subprocess.run([sys.executable, __file__, "--child"], env=env).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
