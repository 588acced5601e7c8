"""`make demo` timing: one seed of MirageLab (`unmirage lab run`, the default config) end to end.

The issue's budget is 5 minutes on this 2-core machine; the result line gives the wall time and the budget
ratio (budget / wall: >= 1 means within budget). Stage times come from the run's timings.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit

BUDGET_S = 300.0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lab-demo-") as tmp:
        out = Path(tmp) / "lab-out"
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "unmirage", "lab", "run", "--out", str(out), "--quiet"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
        timings = json.loads((out / "timings.json").read_text())
        models = json.loads((out / "summary.json").read_text())["models"]
    emit("lab_demo", "wall time, one seed", wall, "s", f"<= {BUDGET_S:.0f} s", stages=timings)
    emit("lab_demo", "budget / wall", BUDGET_S / wall, "x", ">= 1x")
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
