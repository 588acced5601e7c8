"""Helpers shared by the benchmark scripts: every script prints `RESULT {json}` lines that run_all.py tabulates."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

# Threads sleep between parallel regions (the Makefile's setting for long jobs on a shared machine), unless a
# benchmark asks for OpenMP's own default (spin a while, then sleep) with OMP_WAIT_POLICY=default.
if os.environ.get("OMP_WAIT_POLICY") == "default":
    del os.environ["OMP_WAIT_POLICY"]
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def emit(
    bench: str, metric: str, value: float, unit: str = "", target: str | None = None, **extra: Any
) -> None:
    """Print one result line. `target` is the goal in words (e.g. '>= 10x'), shown next to the value."""
    row = {"bench": bench, "metric": metric, "value": round(float(value), 4), "unit": unit, "target": target}
    row.update(extra)
    print("RESULT " + json.dumps(row), flush=True)


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Best wall time of `repeats` calls of fn, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result
