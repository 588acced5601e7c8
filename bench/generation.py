"""Batched generation with each KV cache vs the reference's one-at-a-time loop, under both OpenMP policies.

Variants, timed in turn within every round (the order rotates from round to round, so load that comes and
goes on a shared machine falls on all of them alike), each round repeated `--rounds` times (median and
min-max reported):

- one at a time: one `generate` call per prompt, transformers' default cache, image processed inline (the
  reference's loop), on every `--stride`-th prompt;
- batched (`BatchedGenerator`, all prompts in one batch) with transformers' static cache (the default) and
  with its dynamic cache;
- batched with the static cache on one thread (`torch.set_num_threads(1)` for that variant only): what the
  second thread buys, or costs, under each policy.

Each variant's tokens/s is measured in wall time (what a user waits) and in process CPU time (what the work
costs; steadier than wall time while other jobs share the cores). Greedy outputs are checked equal across
every variant. Tiny LLaVAs with random weights and 32-px images (16 image tokens), so decoding, not the
prompt, dominates as with real answers.

Each (model, OpenMP policy) pair runs in its own child process, because OpenMP reads OMP_WAIT_POLICY once
when torch loads: PASSIVE (threads sleep between parallel regions; the Makefile's setting) and OpenMP's
default (threads spin a while, then sleep). Every child pins torch's thread count and records this
machine's fp32 matmul GFLOP/s at 1 and 2 threads, the load average at its start and end, the cost of
waking the worker threads (one small parallel op, back to back and after a 0.2 ms pause) and where a
batched decoding step spends its time (torch profiler: matrix multiplies, attention, everything else).

    python bench/generation.py                         # both policies, both models (--budget 280 s)
    python bench/generation.py --policy PASSIVE --models tiny
    python bench/generation.py --new-tokens 256 --prompts 32 --batch-size 32   # the larger budget
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLICIES = ("PASSIVE", "default")
CACHES = ("static", "dynamic")
ONE_THREAD = "static, 1 thread"
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "20M+": {"hidden": 512, "layers": 8, "heads": 8, "vision_hidden": 128},
}
SHARE = {"tiny": 1, "20M+": 3}  # relative shares of the time budget
WORDS = [
    "What is in the picture",
    "Share the recipe of this object",
    "Can you describe the colours",
    "How do I make this at home",
    "Please explain the chart",
    "Tell me about the person",
]
MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


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


def one_at_a_time(loaded: Any, batch: list, max_new: int) -> tuple[list[str], int]:
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
        answers.append(loaded.tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers, tokens


def batched(loaded: Any, batch: list, max_new: int, batch_size: int, cache: str) -> tuple[list[str], int]:
    """All prompts through `BatchedGenerator` with one KV cache; answers and generated (non-pad) tokens."""
    from unmirage.generate import BatchedGenerator, GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new,
        batch_size=batch_size,
        cache_implementation=None if cache == "dynamic" else cache,
    )
    gen = BatchedGenerator(loaded, config)
    rows = gen(batch)
    return [r["answer"] for r in rows], gen.new_tokens


def one_thread(fn: Any) -> Any:
    """Call fn with torch on one thread, then restore the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def wake_cost(repeats: int = 400) -> dict[str, float]:
    """Microseconds of one small parallel op (64 x 1024 add): back to back, and after a 0.2 ms serial pause
    (long enough for PASSIVE's workers to be asleep, short enough for the default policy's to still spin)."""
    import torch

    x, y = torch.randn(64, 1024), torch.randn(64, 1024)
    for _ in range(50):
        x.add(y)
    start = time.perf_counter()
    for _ in range(repeats):
        x.add(y)
    back_to_back = (time.perf_counter() - start) / repeats
    after_pause = 0.0
    for _ in range(repeats // 4):
        pause = time.perf_counter()
        while time.perf_counter() - pause < 2e-4:
            pass
        start = time.perf_counter()
        x.add(y)
        after_pause += time.perf_counter() - start
    return {"back_to_back_us": back_to_back * 1e6, "after_pause_us": after_pause / (repeats // 4) * 1e6}


def step_profile(loaded: Any, batch: list, batch_size: int, cache: str, steps: int = 8) -> dict[str, float]:
    """Milliseconds per batched decoding step (profiler self time) in matmuls, attention and everything else,
    and the number of operators per step."""
    from torch.profiler import ProfilerActivity, profile

    batched(loaded, batch, steps, batch_size, cache)  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        batched(loaded, batch, steps, batch_size, cache)
    split = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    ops = 0
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        ops += event.count
        kind = "matmul" if event.key in MATMUL else "attention" if "attention" in event.key else "other"
        split[kind] += event.self_cpu_time_total / 1e3
    out = {f"{k}_ms": v / steps for k, v in split.items()}
    out["aten_ops"] = ops / steps
    return out


def child(args: argparse.Namespace) -> None:
    """One model under this process's OpenMP policy. Prints `INFO` (machine), `STEP` (decoding step split)
    and, after every round of the interleaved variants, `ROUND` (all rates so far) JSON lines, so a parent
    that stops it at its time limit keeps the finished rounds."""
    import torch

    from _train_common import matmul_ceilings
    from unmirage.models import load_model

    def say(kind: str, payload: dict[str, Any]) -> None:
        print(f"{kind} {json.dumps(payload)}", flush=True)

    load = os.getloadavg()[0]
    gflops = {threads: flops / 1e9 for threads, flops in matmul_ceilings().items()}
    torch.set_num_threads(args.threads)
    say("INFO", {"gflops": gflops, "threads": torch.get_num_threads(), "wake": wake_cost(), "load": load})
    torch.manual_seed(0)
    loaded = load_model("tiny-llava", tiny_sizes=MODELS[args.model])
    prompts = items(args.prompts)
    singles = prompts[:: args.stride]
    run = {"one at a time": lambda: one_at_a_time(loaded, singles, args.new_tokens)}
    for cache in CACHES:
        run[cache] = lambda c=cache: batched(loaded, prompts, args.new_tokens, args.batch_size, c)
    run[ONE_THREAD] = lambda: one_thread(lambda: run[CACHES[0]]())
    for cache in CACHES:  # warm-up: first allocations, lazy imports
        batched(loaded, prompts[:2], 4, args.batch_size, cache)
    params = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    say("STEP", {"params_m": params, **step_profile(loaded, prompts, args.batch_size, CACHES[0])})
    rates: dict[str, list[float]] = {name: [] for name in run}
    cpu_rates: dict[str, list[float]] = {name: [] for name in run}
    answers: dict[str, list[str]] = {}
    names = list(run)
    picked = {item.id for item in singles}
    for r in range(args.rounds):
        round_start = time.time()
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, cpu = time.perf_counter(), time.process_time()
            answers[name], tokens = run[name]()
            rates[name].append(tokens / (time.perf_counter() - start))
            cpu_rates[name].append(tokens / (time.process_time() - cpu))
        batched_equal = all(answers[c] == answers[CACHES[0]] for c in (*CACHES, ONE_THREAD))
        single = [a for item, a in zip(prompts, answers[CACHES[0]]) if item.id in picked]
        equal = batched_equal and answers["one at a time"] == single
        say("ROUND", {"rates": rates, "cpu_rates": cpu_rates, "equal": equal, "load": os.getloadavg()[0]})
        if time.time() + (time.time() - round_start) > args.deadline:
            break  # the next round would not finish in this child's share of the time budget


def run_child(model: str, policy: str, argv: list[str], share: float) -> dict[str, Any]:
    """Run `child` for one model under one policy; its INFO, STEP and last ROUND lines, merged."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "UNMIRAGE_BENCH_POLICY": policy}
    forwarded = [a for a in argv if a not in ("--policy", *POLICIES)]
    deadline = time.time() + share
    command = [sys.executable, __file__, *forwarded, "--model", model, "--deadline", str(deadline)]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=share + 5)
        stdout, code = proc.stdout, proc.returncode
        if code:
            print(proc.stderr[-4000:], file=sys.stderr)
    except subprocess.TimeoutExpired as stopped:
        stdout, code = (stopped.stdout or b"").decode(), 0
    res: dict[str, Any] = {"model": model, "policy": policy, "code": code}
    for line in stdout.splitlines():
        kind, _, payload = line.partition(" ")
        if kind in ("INFO", "STEP", "ROUND"):
            res[kind.lower()] = json.loads(payload)
    return res


def spread(values: list[float], digits: int = 1) -> str:
    """Median (min-max)."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(res: dict[str, Any], limit: float) -> tuple[str, str]:
    """Emit RESULT lines for one child; its rows of the speed table and of the decoding-step table."""
    from _common import emit

    info, step, rnd = res.get("info"), res.get("step"), res.get("round")
    name = f"{res['model']} ({step['params_m']:.1f}M)" if step else res["model"]
    label = f"{name}, OMP {res['policy']}"
    if not rnd:
        why = "failed" if res["code"] else f"no round finished within {limit:.0f} s"
        print(f"{label}: {why}", file=sys.stderr)
        speed = f"| {name} | {res['policy']} | {why} |"
    else:
        rates = rnd["rates"]
        single = rates["one at a time"]
        emit("generation", f"{label}: one-at-a-time", statistics.median(single), "tok/s")
        cells = []
        for cache in (*CACHES, ONE_THREAD):
            ratios = [b / s for b, s in zip(rates[cache], single)]  # per round: the two ran close in time
            emit("generation", f"{label}: batched, {cache} cache", statistics.median(rates[cache]), "tok/s")
            emit(
                "generation",
                f"{label}: speed-up, {cache} cache (outputs equal: {rnd['equal']})",
                statistics.median(ratios),
                "x",
                low=round(min(ratios), 2),
                high=round(max(ratios), 2),
            )
            cells.append(spread(ratios) + "x")
        for measure, per in (("wall", rates), ("CPU", rnd["cpu_rates"])):
            own = [s / d for s, d in zip(per["static"], per["dynamic"])]
            emit(
                "generation", f"{label}: static / dynamic cache, {measure} time", statistics.median(own), "x"
            )
            cells.append(spread(own, 2))
        speed = (
            f"| {name} | {res['policy']} | {len(single)} | {spread(single, 0)} | {' | '.join(cells)} | "
            f"{rnd['equal']} | {info['load']:.1f}-{rnd['load']:.1f} |"
        )
    step_row = f"| {name} | {res['policy']} |"
    if step:
        step_row += (
            f" {step['matmul_ms']:.1f} | {step['attention_ms']:.1f} | {step['other_ms']:.1f} | "
            f"{step['aten_ops']:.0f} |"
        )
    if info:
        wake = info["wake"]
        step_row += f" {wake['back_to_back_us']:.0f} | {wake['after_pause_us']:.0f} |"
    return speed, step_row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=POLICIES, action="append", help="OpenMP policy (default: both)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every variant (interleaved)")
    parser.add_argument("--new-tokens", type=int, default=64, help="max new tokens per answer")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per batched variant")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of the batched variants")
    parser.add_argument("--stride", type=int, default=4, help="one-at-a-time answers every n-th prompt")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2), help="torch threads")
    parser.add_argument(
        "--budget",
        type=float,
        default=280,
        help="seconds for the whole run, shared by the (model, policy) pairs (the larger model gets 3 shares); "
        "a round that would not finish in its pair's share is not started",
    )
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # set in the child processes
    parser.add_argument("--model", help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.model:
        import _common  # noqa: F401  (applies the OpenMP policy before torch loads)

        child(args)
        return 0
    started, load = time.perf_counter(), os.getloadavg()[0]
    pairs = [(model, policy) for model in args.models for policy in args.policy or POLICIES]
    unit = args.budget / sum(SHARE[model] for model, _ in pairs)
    results = [run_child(model, policy, argv, unit * SHARE[model]) for model, policy in pairs]
    rows = [report(res, unit * SHARE[res["model"]]) for res in results]
    gflops = next(res["info"]["gflops"] for res in results if "info" in res)
    print(
        f"\nbatch {args.batch_size}, {args.prompts} prompts (one at a time: every {args.stride}th), "
        f"{args.new_tokens} new tokens, {args.rounds} rounds, {args.threads} threads; fp32 matmul "
        f"{gflops['1']:.0f} GFLOP/s at 1 thread, {gflops['2']:.0f} at 2; load average {load:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; {time.perf_counter() - started:.0f} s\n"
    )
    print(
        "| model | OpenMP policy | rounds | one at a time (tok/s) | static cache (default) | dynamic cache | "
        "static, 1 thread | static / dynamic | static / dynamic, CPU time | outputs equal | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(speed for speed, _ in rows))
    print(
        "\n| model | OpenMP policy | matmul ms/step | attention ms/step | other ms/step | operators/step | "
        "parallel op (us) | after 0.2 ms pause (us) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(step for _, step in rows))
    return int(any(res["code"] for res in results))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
