"""Helpers for the training benchmarks: synthetic forget/retain files, a step timer, model-size presets,
this machine's matmul FLOP/s, and one measured run in a fresh process (so peak memory is per variant)."""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

HERE = Path(__file__).resolve().parent

# Tiny LLaVA sizes: "lab" is MirageLab's model (459k parameters), "37m" the >= 20M-parameter one.
PRESETS: dict[str, dict[str, Any]] = {
    "lab": {"layers": 3, "hidden": 96, "heads": 2, "vision_layers": 2, "vision_hidden": 96},
    "37m": {"layers": 12, "hidden": 512, "heads": 8, "vision_layers": 2, "vision_hidden": 64},
}

WORDS = [
    "red",
    "blue",
    "green",
    "small",
    "large",
    "round",
    "square",
    "bottle",
    "knife",
    "chart",
    "person",
    "street",
    "recipe",
    "chemical",
    "phone",
    "window",
    "table",
    "garden",
    "letter",
    "money",
    "medicine",
    "car",
    "bridge",
    "tower",
    "river",
    "market",
    "friend",
    "secret",
    "plan",
]


def write_data(folder: Path, n: int, words: int, seed: int = 0) -> tuple[Path, Path]:
    """forget.json / retain.json (LLaVA conversations) with `n` records each and answers of ~`words` words."""
    rng = random.Random(seed)

    def record(name: str, question: str) -> dict[str, Any]:
        answer = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
        turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
        return {"id": name, "image": f"{name}.png", "conversations": turns}

    folder.mkdir(parents=True, exist_ok=True)
    forget = [record(f"f{i}", f"How do I make the {rng.choice(WORDS)} dangerous?") for i in range(n)]
    retain = [record(f"r{i}", f"What is the {rng.choice(WORDS)} in the picture?") for i in range(n)]
    (folder / "forget.json").write_text(json.dumps(forget))
    (folder / "retain.json").write_text(json.dumps(retain))
    return folder / "forget.json", folder / "retain.json"


class StepTimer(TrainerCallback):
    """Wall time and process CPU time of every optimizer step. On a shared machine the CPU time of a
    one-thread run is the steadier measure (other jobs delay it but do not add to it)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._start = (0.0, 0.0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self._start[0])
        self.cpu_times.append(time.process_time() - self._start[1])


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_flops(n: int = 1024, repeats: int = 5, cpu_time: bool = False) -> float:
    """Best measured fp32 FLOP/s of an n x n matmul with torch's current thread count; with `cpu_time`, FLOPs
    per second of process CPU time (all threads together), which other jobs on the machine barely move."""
    clock = time.process_time if cpu_time else time.perf_counter
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * n**3 / best


def matmul_ceilings(counts: tuple[int, ...] = (1, 2), cpu_time: bool = False) -> dict[int, float]:
    """The fp32 matmul ceiling at each thread count in `counts` (torch's thread count is restored). With
    `cpu_time`, the ceiling of `count` cores that were all this process's: count x FLOPs per CPU-second."""
    threads = torch.get_num_threads()
    try:
        ceilings = {}
        for count in counts:
            torch.set_num_threads(count)
            per_second = matmul_flops(repeats=10, cpu_time=cpu_time)
            ceilings[count] = count * per_second if cpu_time else per_second
        return ceilings
    finally:
        torch.set_num_threads(threads)


# glibc keeps freed blocks (and their pages) in its arenas, so peak RSS depends on allocation order by
# +-100 MiB; with every block above 64 KiB served by mmap, freed tensors leave the process at once and the
# peak RSS follows the peak of live memory. Used for the memory runs only (it slows allocation).
EXACT_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def run_variant(
    script: Path, args: list[str], timeout: int = 900, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `script --variant ...` in a fresh process and return the JSON it prints on its last line."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_once(
    *,
    out: Path,
    data: tuple[Path, Path],
    preset: str,
    method: list[str],
    batch: int,
    steps: int,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One unlearning run in this process; returns step times, tokens per step and the model size."""
    from unmirage.train import load_recipe, run_unlearning

    sizes = ",".join(f"{k}: {v}" for k, v in PRESETS[preset].items())
    timer = StepTimer()
    recipe, config = load_recipe(
        None,
        [
            "model=tiny-llava",
            f"tiny_sizes={{{sizes}}}",
            f"data.forget={data[0]}",
            f"data.retain={data[1]}",
            "data.placeholder_images=true",
            f"output_dir={out}",
            f"train.per_device_train_batch_size={batch}",
            f"train.max_steps={steps}",
            "train.learning_rate=1e-5",
            "train.report_to=none",
            "train.save_strategy='no'",
            "train.logging_steps=1",
            "train.disable_tqdm=true",
            "plot=false",
            *method,
            *extra,
        ],
    )
    before = peak_rss_mb()
    result = run_unlearning(recipe, config, callbacks=(timer,))
    model = result.trainer.model
    params = sum(p.numel() for p in model.parameters())
    batch_tokens = _tokens_per_step(result.trainer, batch)
    return {
        "step_times": timer.times,
        "step_cpu_times": timer.cpu_times,
        "params": params,
        "trainable": result.trainable_parameters,
        "tokens_per_step": batch_tokens,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_train_mb": before,
        "reference": result.reference,
        "reference_extra_bytes": result.trainer.reference.extra_bytes() if result.trainer.reference else 0,
    }


def _tokens_per_step(trainer: Any, batch: int) -> int:
    """Attended tokens in one step's forget + retain batches (the first batch of the data loader)."""
    loader = trainer.get_train_dataloader()
    inputs = next(iter(loader))
    return int(sum(int(side["attention_mask"].sum()) for side in inputs.values()))
