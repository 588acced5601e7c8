"""NPO's reference model: precomputed per-example statistics vs a live frozen copy, side by side.

Parity NPO (beta 0.9, retain-NPO term, CE on retain), fp32 AdamW, a >= 20M-parameter tiny LLaVA ("37m"
preset), each variant in its own process, alternating variants over rounds. Reports the step-time ratio
in process CPU time (target >= 1.18x; steady even when other jobs share the cores) and in wall time, the
memory each reference holds (exact), the peak-RSS saving against one fp32 copy of the weights (measured
in separate short runs with glibc returning freed blocks at once), and for LoRA the disabled-adapter
reference's cost (no weight copy at all).

`python bench/npo_reference.py [--rounds 2] [--steps 8] [--threads 1]`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from _train_common import EXACT_RSS_ENV, run_variant, train_once, write_data  # noqa: E402

BENCH = "npo_reference"
NPO = ["method.name=npo", "method.beta=0.9", "method.retain_npo_weight=1", "method.retain_ce_weight=1"]
VARIANTS = {
    "precomputed": ("reference=precomputed",),
    "copy": ("reference=copy",),
    "lora_precomputed": ("reference=precomputed", "lora.r=8", "lora.alpha=16"),
    "lora_adapter": ("reference=adapter", "lora.r=8", "lora.alpha=16"),
}
WARMUP = 2  # the first step also computes the reference statistics


def child(variant: str, steps: int, batch: int, workdir: Path) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = write_data(workdir / "data", n=32, words=24)
    stats = train_once(
        out=workdir / variant,
        data=data,
        preset="37m",
        method=NPO,
        batch=batch,
        steps=steps,
        extra=VARIANTS[variant],
    )
    stats["step_s"] = statistics.median(stats["step_times"][WARMUP:])
    stats["step_cpu_s"] = statistics.median(stats["step_cpu_times"][WARMUP:])
    print(json.dumps(stats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="(internal) run one variant")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the variants")
    parser.add_argument("--steps", type=int, default=8, help=f"optimizer steps per run ({WARMUP} warm-up)")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (forget and retain)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.variant:
        child(args.variant, args.steps, args.batch, args.workdir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        memory: dict[str, dict] = {}

        def launch(variant: str, steps: int, rundir: Path, env: dict | None = None) -> dict:
            options = ["--variant", variant, "--steps", str(steps), "--batch", str(args.batch)]
            options += ["--threads", str(args.threads), "--workdir", str(rundir)]
            return run_variant(Path(__file__), options, env=env)

        for round_ in range(args.rounds):
            for variant in VARIANTS:
                runs[variant].append(launch(variant, args.steps, workdir / f"round{round_}"))
        for variant in VARIANTS:  # memory: short runs where freed memory leaves the process at once
            memory[variant] = launch(variant, WARMUP + 1, workdir / "memory", EXACT_RSS_ENV)
    best = {v: min(r["step_s"] for r in rs) for v, rs in runs.items()}
    cpu = {v: min(r["step_cpu_s"] for r in rs) for v, rs in runs.items()}
    peak = {v: r["peak_rss_mb"] for v, r in memory.items()}
    params = runs["precomputed"][0]["params"]
    weights_mb = 4 * params / 2**20
    tokens = runs["precomputed"][0]["tokens_per_step"]
    common = {"params": params, "threads": args.threads, "batch": args.batch, "tokens_per_step": tokens}
    emit(
        BENCH, "step_time_precomputed", best["precomputed"], "s", cpu_s=round(cpu["precomputed"], 3), **common
    )
    emit(BENCH, "step_time_live_copy", best["copy"], "s", cpu_s=round(cpu["copy"], 3), **common)
    emit(
        BENCH,
        "step_speedup_precomputed_vs_copy",
        best["copy"] / best["precomputed"],
        "x",
        ">= 1.18x",
        **common,
    )
    emit(
        BENCH,
        "peak_memory_saving_vs_copy",
        peak["copy"] - peak["precomputed"],
        "MiB",
        f">= one fp32 weight copy ({weights_mb:.0f} MiB)",
        ratio_to_weights=round((peak["copy"] - peak["precomputed"]) / weights_mb, 3),
        **common,
    )
    held = {v: rs[0]["reference_extra_bytes"] / 2**20 for v, rs in runs.items()}
    emit(BENCH, "reference_memory_held_copy", held["copy"], "MiB", "one fp32 weight copy", **common)
    emit(
        BENCH, "reference_memory_held_precomputed", held["precomputed"], "MiB", "~0 (two floats per example)"
    )
    emit(BENCH, "reference_memory_held_lora_adapter", held["lora_adapter"], "MiB", "0 (no weight copy)")
    emit(
        BENCH,
        "lora_adapter_vs_precomputed_peak_rss",
        peak["lora_adapter"] - peak["lora_precomputed"],
        "MiB",
        f"<< one weight copy ({weights_mb:.0f} MiB)",
        note="no weights held; what remains is the reference forwards' transient activations",
        **common,
    )
    one_time = min(r["step_times"][0] - r["step_s"] for r in runs["precomputed"])
    emit(
        BENCH, "precompute_pass_one_time", one_time, "s", note="2 x 32 examples, paid once per run", **common
    )
    emit(
        BENCH,
        "lora_step_speedup_precomputed_vs_adapter",
        best["lora_adapter"] / best["lora_precomputed"],
        "x",
    )


if __name__ == "__main__":
    main()
