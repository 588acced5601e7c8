"""Training throughput of parity NPO (precomputed reference): tokens/s and model-FLOPs utilisation (MFU).

MFU = model FLOP/s of a training step / this machine's fp32 matmul ceiling. `mfu` is against the ceiling at
the run's thread count, `mfu_vs_1_thread` and `mfu_vs_2_threads` against the ceilings at one and two threads
(on a 2-core machine the two-thread ceiling is the whole machine), all in wall time. One-thread runs also
report `_cpu_time` variants: FLOPs per second of process CPU time over the ceilings in CPU time (threads x
matmul FLOPs per CPU-second), which other jobs on a shared machine barely move.
Model FLOPs per step, over the forget and the retain batch: 6 x (language-model + projector linear
weights) x tokens for forward and backward, 2 x vision-tower linear weights x image tokens (frozen tower,
forward only), and 12 x layers x width x sequence length per token for attention. Presets: "lab" (MirageLab's
459k-parameter tiny LLaVA, batch 64) and "37m" (a 33M-parameter tiny LLaVA, batch 4).

`python bench/train_throughput.py [--threads 1] [--steps 6]` (the load average is recorded with each result)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from _train_common import PRESETS, matmul_ceilings, train_once, write_data  # noqa: E402

BENCH = "train_throughput"
NPO = ["method.name=npo", "method.beta=0.9", "method.retain_npo_weight=1", "method.retain_ce_weight=1"]
BATCH = {"lab": 64, "37m": 4}
WARMUP = 2


def linear_params(model: nn.Module, prefix: str) -> int:
    """Weights of the nn.Linear modules whose name starts with `prefix` (or all when prefix is '')."""
    return sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith(prefix)
    )


def step_flops(model: nn.Module, batches: dict[str, dict], layers: int, width: int) -> float:
    """Model FLOPs of one training step over `batches` (see the module doc)."""
    from unmirage.models import family_for

    family = family_for(model)
    vision = linear_params(model, family.vision_tower)
    text = linear_params(model, "") - vision
    total = 0.0
    for batch in batches.values():
        tokens = int(batch["attention_mask"].sum())
        seq = batch["input_ids"].shape[1]
        image = int(family.image_mask(batch["input_ids"], model).sum())
        total += 6 * text * tokens + 2 * vision * image + 12 * layers * width * seq * tokens
    return total


def measure(preset: str, steps: int, workdir: Path) -> None:
    data = write_data(workdir / "data", n=max(BATCH[preset] * 2, 16), words=24)
    stats = train_once(
        out=workdir / preset, data=data, preset=preset, method=NPO, batch=BATCH[preset], steps=steps
    )
    from unmirage.data.collate import Collator
    from unmirage.models import load_model
    from unmirage.train.data import load_training_examples

    loaded = load_model("tiny-llava", tiny_sizes=PRESETS[preset])
    collator = Collator(loaded, placeholder_images=True)
    batches = {
        side: collator(load_training_examples(path)[: BATCH[preset]])
        for side, path in zip(("forget", "retain"), data)
    }
    sizes = PRESETS[preset]
    flops = step_flops(loaded.model, batches, sizes["layers"], sizes["hidden"])
    step_s = statistics.median(stats["step_times"][WARMUP:])
    threads = torch.get_num_threads()
    ceilings = matmul_ceilings(tuple(sorted({1, 2, threads})))
    common = {
        "preset": preset,
        "params": stats["params"],
        "batch": BATCH[preset],
        "threads": threads,
        "load_average": round(os.getloadavg()[0], 1),
    }
    tokens = sum(int(b["attention_mask"].sum()) for b in batches.values())
    emit(BENCH, f"{preset}_step_time", step_s, "s", **common)
    emit(BENCH, f"{preset}_tokens_per_s", tokens / step_s, "tok/s", **common)
    achieved = flops / step_s
    emit(
        BENCH,
        f"{preset}_mfu",
        achieved / ceilings[threads],
        "",
        achieved_gflops=round(achieved / 1e9, 2),
        peak_matmul_gflops=round(ceilings[threads] / 1e9, 2),
        **common,
    )
    variants = [("", achieved, ceilings)]
    if threads == 1:  # with more threads, waits cost no CPU time and the CPU-time rate is overstated
        achieved_cpu = flops / statistics.median(stats["step_cpu_times"][WARMUP:])
        variants.append(("_cpu_time", achieved_cpu, matmul_ceilings((1, 2), cpu_time=True)))
    for count in (1, 2):
        name = f"{preset}_mfu_vs_{count}_thread{'s' if count > 1 else ''}"
        for suffix, rate, peak in variants:
            emit(
                BENCH,
                name + suffix,
                rate / peak[count],
                "",
                achieved_gflops=round(rate / 1e9, 2),
                peak_matmul_gflops=round(peak[count] / 1e9, 2),
                **common,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--steps", type=int, default=6, help=f"optimizer steps per preset ({WARMUP} warm-up)")
    parser.add_argument("--presets", nargs="+", default=["lab", "37m"], choices=sorted(PRESETS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            measure(preset, args.steps, Path(tmp))


if __name__ == "__main__":
    main()
