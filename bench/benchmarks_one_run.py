"""Two benchmarks in one `unmirage eval` run vs one run per benchmark, model load counted.

One run (`--benchmark A --benchmark B`) loads the model once and sends every case through the same
generator; two runs (`--benchmark A`, then `--benchmark B`) load it twice. Each variant is timed end to end
(settings to metrics.json: spec and data reading, model load, generation, judging; wall and process CPU
time), after one untimed warm-up run, in turn within every
round with the order rotating from round to round (load that comes and goes on a shared machine falls on
both alike); medians over `--rounds` are reported, with the model loads each variant made and the load
time alone. The answers of both variants are checked equal (greedy decoding).

    python bench/benchmarks_one_run.py --model models/smollm2 --template chat --data-root ../shared/data
    python bench/benchmarks_one_run.py --model tiny-llava --cases xstest.safe figstep.text --subsample 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def _answers(out: Path) -> dict[str, list[str]]:
    return {
        f.stem: [json.loads(line)["answer"] for line in f.read_text().splitlines()]
        for f in sorted((out / "generations").glob("*.jsonl"))
    }


def _run(settings: dict[str, Any], cases: list[list[str]], folder: Path) -> tuple[float, int, dict]:
    """Wall time of one variant (one eval run per entry of `cases`), its model loads, their time, its
    process CPU time and its answers."""
    from unmirage.eval import EvalSettings, run_eval
    from unmirage.generate import backends

    loads = []
    real = backends.load_for_generation

    def counting(model: str, **kwargs: Any) -> Any:
        start = time.perf_counter()
        loaded = real(model, **kwargs)
        loads.append(time.perf_counter() - start)
        return loaded

    backends.load_for_generation = counting
    answers: dict[str, list[str]] = {}
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for i, chosen in enumerate(cases):
            out = folder / f"run{i}"
            run_eval(EvalSettings(**settings, cases=chosen), out)
            answers |= _answers(out)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        backends.load_for_generation = real
    shutil.rmtree(folder)
    return wall, len(loads), {"answers": answers, "load_s": sum(loads), "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--data-root", default=None, help="default: $UNMIRAGE_DATA_DIR")
    parser.add_argument("--cases", nargs=2, default=["xstest.safe", "figstep.text"], metavar="NAME.CASE")
    parser.add_argument("--subsample", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--template", default="v1", help="v1 (reference) or chat (the model's own)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from unmirage.benchmarks import data_root
    from unmirage.machine import matmul_flops

    root = data_root(args.data_root)
    if root is None:
        raise SystemExit("give --data-root or set UNMIRAGE_DATA_DIR")
    settings = {
        "model": args.model,
        "data_root": root,
        "subsample": args.subsample,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "template": args.template,
        "dtype": "float32",
        "placeholder_images": True,
        "bootstrap": 10,
    }
    variants = {"one run": [list(args.cases)], "two runs": [[c] for c in args.cases]}
    times: dict[str, list[float]] = {name: [] for name in variants}
    loads: dict[str, int] = {}
    load_s: dict[str, list[float]] = {name: [] for name in variants}
    cpu_s: dict[str, list[float]] = {name: [] for name in variants}
    answers: dict[str, dict] = {}
    flops = matmul_flops()
    with tempfile.TemporaryDirectory() as tmp:  # warm-up, not timed: imports, caches, first-call costs
        _run(settings, variants["one run"], Path(tmp) / "warm")
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                wall, n_loads, info = _run(settings, variants[name], Path(tmp) / "v")
            times[name].append(wall)
            loads[name] = n_loads
            load_s[name].append(info["load_s"])
            cpu_s[name].append(info["cpu_s"])
            answers[name] = info["answers"]
    if answers["one run"] != answers["two runs"]:
        raise SystemExit("the two variants gave different answers")
    one, two = (statistics.median(times[n]) for n in ("one run", "two runs"))
    common = {
        "model": args.model,
        "cases": args.cases,
        "subsample": args.subsample,
        "max_new_tokens": args.max_new_tokens,
        "template": args.template,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "gflops": round(flops / 1e9, 1),
    }
    for name in variants:
        emit(
            "benchmarks_one_run",
            f"{name} wall",
            statistics.median(times[name]),
            "s",
            model_loads=loads[name],
            load_s=round(statistics.median(load_s[name]), 3),
            cpu_s=round(statistics.median(cpu_s[name]), 3),
            runs=[round(t, 2) for t in times[name]],
            **common,
        )
    cpu = statistics.median(cpu_s["two runs"]) / statistics.median(cpu_s["one run"])
    emit("benchmarks_one_run", "two runs / one run", two / one, "x", cpu_ratio=round(cpu, 3), **common)


if __name__ == "__main__":
    main()
