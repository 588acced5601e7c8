"""`unmirage lab run`: the safety mirage, end to end, in a synthetic world, on a CPU, in minutes.

Stages (one seed; each after the first two is one of the toolkit's commands, run in-process with the same
arguments a user would type, and listed in OUT/commands.sh):

1. world: pictures, `sft_train.json` (VLGuard train schema), `general.json`, `test.json` (VLGuard test schema);
   the SFT files `sft_posthoc.json` (every VLGuard-style pair as a conversation) and `sft_mixed.json` (the
   same plus general instruction data, LLaVA-style replay);
2. base model (lab-specific, `unmirage.lab.pretrain`): tiny LLaVA, vision pretraining, base training;
3. `attack build` (3-shot "What" on unsafes, 1-shot "Share" on safe_safes) and `analyze spurious`;
4. `unlearn` Posthoc and Mixed SFT from the base model;
5. `data mine-harmful` (the base model's own answers), `data build-unlearn` (forget/retain + general mix),
   `unlearn` NPO and RMU from the base model;
6. `eval` of every model on the four cases, the prefill attack (answers forced to open with a compliant
   phrase), oracle scoring (`unmirage.lab.score`), and `report` over all models plus `miragelab.md`.

Outputs: OUT/<model>/metrics.json (eval's fields plus an `oracle` block) for base, sft-mixed, sft-posthoc,
npo, rmu; OUT/models/<model>/ (model folders), OUT/world/, OUT/data/, OUT/recipes/, OUT/report/,
OUT/miragelab.md, OUT/summary.json, OUT/timings.json. With --seeds N each seed gets OUT/seed-<s>/ and OUT/
holds the medians.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unmirage.errors import UnmirageError
from unmirage.lab.config import MODELS, LabConfig
from unmirage.lab.narrative import lab_markdown, median_rows
from unmirage.lab.parallel import default_workers
from unmirage.lab.stages import STAGES, SeedRun
from unmirage.runs import atomic_write_json, atomic_write_text, write_manifest

#: The folders a run writes under OUT (removed before a run that does not resume).
LAB_FOLDERS = ("world", "models", "data", "recipes", "spurious", "report", "logs", *MODELS)


def run_seed(
    config: LabConfig, out: Path, seed: int, progress: bool = True, resume: bool = False, workers: int = 1
) -> dict[str, Any]:
    """The whole lab for one seed under `out` (`stages.STAGES` in order, each timed); returns the seed's
    summary ({model: headline numbers} under "models"). With `workers` > 1 the base model trains
    data-parallel and the trainings after it, then the evaluations, run side by side in forked processes
    (`unmirage.lab.parallel`); a seed's numbers are reproducible for a given number of workers.

    With `resume`, stages whose outputs are already there (a finished model folder, an eval's metrics.json
    with its oracle block, ...) are skipped, so a killed run continues where it stopped.
    """
    if not resume:  # commands such as eval resume from what they find: start from a clean folder
        for name in LAB_FOLDERS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    run = SeedRun(config, out, seed, progress, resume, workers)
    start = time.perf_counter()
    for name, stage in STAGES:
        with run.runner.stage(name):
            stage(run)
    timings = dict(run.runner.timings)
    timings["total"] = round(time.perf_counter() - start, 2)
    atomic_write_json(out / "timings.json", timings)
    summary = {
        "seed": seed,
        "models": run.results,
        "timings": timings,
        "base_training": run.base_info,
        "config": run.config.model_dump(mode="json"),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "miragelab.md", lab_markdown(run.results, timings, run.config, seeds=[seed]))
    return summary


def run_lab(
    config: LabConfig,
    out: str | os.PathLike,
    seeds: Sequence[int] = (0,),
    progress: bool = True,
    resume: bool = False,
    on_seed: Callable[[int, dict[str, Any]], None] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run every seed (one seed: directly under `out`; several: `out/seed-<s>/`) and write the medians.
    `workers`: processes side by side (None: one per core, at most 4; see `run_seed`).

    `out` is claimed first (`unmirage.outputs.claim_folder`): a lab run with the same settings and seeds
    reruns (or, with `resume`, continues) in it, one with other settings needs `overwrite`, and a folder of
    files unmirage did not write is never touched (a run removes its own sub-folders before it starts)."""
    import torch

    from unmirage.outputs import claim_folder

    out = Path(out)
    if not seeds:
        raise UnmirageError("give at least one seed")
    identity = {"config": config.model_dump(mode="json"), "seeds": list(seeds)}
    claim_folder(
        out,
        command="lab run",
        identity=identity,
        overwrite=overwrite,
        resume_hint="the same settings rerun it; ",
    )
    if os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))
    if workers is None:
        workers = default_workers()
    start = time.perf_counter()
    per_seed = []
    for seed in seeds:
        folder = out if len(seeds) == 1 else out / f"seed-{seed}"
        summary = run_seed(config, folder, seed, progress, resume, workers)
        per_seed.append(summary["models"])
        if on_seed is not None:
            on_seed(seed, summary)
    wall = round(time.perf_counter() - start, 1)
    rows = per_seed[0] if len(seeds) == 1 else median_rows(per_seed)
    result = {"seeds": list(seeds), "models": rows, "wall_seconds": wall}
    if len(seeds) > 1:
        result["per_seed"] = dict(zip(map(str, seeds), per_seed, strict=True))
        atomic_write_json(out / "summary.json", result)
        atomic_write_text(
            out / "miragelab.md", lab_markdown(rows, {"total": wall}, config, seeds, f"seed-{seeds[0]}/")
        )
    # the claim ("running") becomes the finished run's manifest
    write_manifest(
        out,
        command="lab run",
        identity=identity,
        config=identity["config"],
        seed=seeds[0],
        seeds=list(seeds),
        workers=workers,
        outputs=[out / "summary.json", out / "miragelab.md"],
    )
    return result
