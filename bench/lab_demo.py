"""`make demo` timing: one seed of MirageLab (`unmirage lab run`, the default config) end to end.

Prints the machine's fp32 matmul speed (measured before and after the run, with the run's thread count), the
wall time and each stage's time, the FLOP/s that vision pretraining and base training reached (their FLOPs
are counted by the lab on the first step) as a share of the matmul speed (MFU), and the wall time scaled to
a 49 GFLOP/s machine (the 2-core reference machine of the README). The budget is 300 s on such a machine.
With `--compare`, the same seed first runs in one process (`--workers 1`) and the ratio of the two wall times
is printed as well (the lab with its default workers over the lab in one process, measured in this run).

`python bench/lab_demo.py [--quick] [--keep DIR] [--compare]`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit

BUDGET_S = 300.0
REFERENCE_GFLOPS = 49.0


def machine_gflops() -> float:
    from unmirage.machine import matmul_flops

    return matmul_flops(seconds=2.0) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time `lab run --quick` instead")
    parser.add_argument("--keep", type=Path, default=None, help="write the lab here and keep it")
    parser.add_argument(
        "--compare", action="store_true", help="first time the lab in one process (--workers 1)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lab-demo-") as tmp:
        out = args.keep or Path(tmp) / "lab-out"
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
        command = [sys.executable, "-m", "unmirage", "lab", "run", "--quiet", "--overwrite"]
        command += ["--quick"] if args.quick else []

        def timed(*extra: str) -> float:
            start = time.perf_counter()
            subprocess.run(
                [*command, "--out", str(out), *extra], check=True, env=env, stdout=subprocess.DEVNULL
            )
            return time.perf_counter() - start

        before = machine_gflops()
        one_process = timed("--workers", "1") if args.compare else None
        wall = timed()
        after = machine_gflops()
        timings = json.loads((out / "timings.json").read_text())
        training = json.loads((out / "models" / "base" / "lab_training.json").read_text())
        models = json.loads((out / "summary.json").read_text())["models"]
    gflops = (before + after) / 2
    scaled = wall * gflops / REFERENCE_GFLOPS
    common = {"machine_gflops_before": round(before, 1), "machine_gflops_after": round(after, 1)}
    emit("lab_demo", "machine fp32 matmul", gflops, "GFLOP/s", **common)
    emit(
        "lab_demo", "wall time, one seed", wall, "s", f"<= {BUDGET_S:.0f} s at {REFERENCE_GFLOPS:.0f} GFLOP/s"
    )
    if one_process is not None:
        emit(
            "lab_demo",
            "wall time, one seed in one process (--workers 1)",
            one_process,
            "s",
            None,
            ratio_default_to_one_process=round(wall / one_process, 3),
        )
    emit(
        "lab_demo",
        f"wall time scaled to {REFERENCE_GFLOPS:.0f} GFLOP/s",
        scaled,
        "s",
        f"<= {BUDGET_S:.0f} s",
        budget_ratio=round(BUDGET_S / scaled, 3),
    )
    for stage, seconds in timings.items():
        if stage != "total":
            emit("lab_demo", f"stage {stage}", seconds, "s", share=round(seconds / timings["total"], 3))
    for name in ("vision", "base"):
        part = training[name]
        if "train_flop" not in part:
            continue
        reached = part["train_flop"] / part["seconds"] / 1e9
        emit(
            "lab_demo",
            f"{name} training FLOP/s reached",
            reached,
            "GFLOP/s",
            mfu=round(reached / gflops, 3),
            seconds=part["seconds"],
            tflop=round(part["train_flop"] / 1e12, 3),
        )
    for name in ("sft-posthoc", "npo"):
        row = models[name]
        emit(
            "lab_demo",
            f"{name}: ASR normal -> 3-shot What (oracle)",
            row["asr_attack"],
            "",
            f"normal {row['asr_normal']:.2f}",
        )


if __name__ == "__main__":
    main()
