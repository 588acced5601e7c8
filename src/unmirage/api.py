"""The Python API: the command line's main steps as functions (`import unmirage`).

Each function does what its command does, with the same checks, files and manifests, and returns the result
instead of printing it; bad input raises `unmirage.UnmirageError` (one line naming the file, record and
field). Heavy libraries (torch, transformers) are imported on first call, so `import unmirage` stays quick.

    import unmirage

    unmirage.save_tiny_model("runs/tiny/model")
    unmirage.check_data("data/vlguard/train.json", allow_duplicate_ids=True)
    unmirage.mine_harmful("data/vlguard/train.json", "runs/tiny/harmful.json",
                          generators=["runs/tiny/model"], placeholder_images=True, max_new_tokens=16)
    unmirage.build_unlearn("data/vlguard/train.json", "runs/tiny/unlearn", harmful="runs/tiny/harmful.json")
    run = unmirage.unlearn("recipes/tiny/npo.yaml", ["train.max_steps=10"])
    metrics = unmirage.evaluate(run.output_dir, "data/vlguard/test.json", "runs/tiny/eval-npo",
                                share="data/vlguard/test_share_1shot.json", placeholder_images=True)
    unmirage.build_report(["runs/tiny/eval-npo"], "runs/tiny/report")

See docs/api.md for a worked example.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover (types only)
    from unmirage.data.build import UnlearnBuild
    from unmirage.models.load import LoadedModel
    from unmirage.train.run import RunResult

PathLike = str | os.PathLike


def load_model(source: PathLike, **options: Any) -> LoadedModel:
    """Load a model and its processor: a Hub id, a local folder (safetensors only) or `tiny-llava` /
    `tiny-qwen2_5_vl` (built in memory).

    `options` are those of `unmirage.models.load_model`: `dtype` ("auto", "float32", "bfloat16", ...),
    `device_map`, `adapter` (a LoRA folder), `trust_remote_code` (off unless given), `tiny_sizes`. Returns a
    `LoadedModel` with `.model`, `.processor` and `.family` (the family adapter the trainer and generators use).
    """
    from unmirage.models import load_model as load

    return load(str(source), **options)


def save_tiny_model(out: PathLike, family: str = "llava", **sizes: Any) -> Path:
    """Write a tiny random model of the real class (`llava` or `qwen2_5_vl`) with its processor to `out`
    (like `unmirage models tiny`); `sizes`: `layers`, `hidden`, `heads`, `vision_layers`, `seed`, ...
    Returns the folder."""
    from unmirage.models.tiny import save_tiny

    return save_tiny(out, family, **sizes)


def check_data(path: PathLike, *, allow_duplicate_ids: bool = False) -> dict[str, int]:
    """Validate a VLGuard-schema file (train/test or an attack file) like `unmirage data check` and return its
    counts: `records`, `safe_safes`, `safe_unsafes`, `unsafes`. The official train.json repeats one id:
    pass `allow_duplicate_ids=True` for it."""
    from unmirage.data.vlguard import load_vlguard

    return dict(load_vlguard(path, allow_duplicate_ids=allow_duplicate_ids).counts())


def mine_harmful(
    vlguard: PathLike, out: PathLike, *, generators: Sequence[str], judge: str | None = None, **options: Any
) -> Path:
    """Answer every unsafe query of a VLGuard training file with each generator and keep the most harmful
    answer (the judge's pick when there are several generators), like `unmirage data mine-harmful`.
    Resumable: work files go to `OUT.work/`. `options`: the other `unmirage.settings.MineSettings` fields,
    `image_root` or `placeholder_images=True`, `template`, `max_new_tokens`, `batch_size`, `dtype`, `device`,
    ... Returns the answers file."""
    from unmirage.config import validate
    from unmirage.mining import run_mine_harmful
    from unmirage.settings import MineSettings

    values = {"vlguard": vlguard, "generators": list(generators), "judge": judge, **options}
    return run_mine_harmful(validate(MineSettings, values, source="unmirage.mine_harmful"), out)


def build_unlearn(
    vlguard: PathLike, out: PathLike, *, harmful: PathLike | None = None, **options: Any
) -> UnlearnBuild:
    """Build the forget/retain sets (forget.json, retain.json, forget_rmu.json, manifest.json) from a VLGuard
    training file, like `unmirage data build-unlearn`. `harmful`: the answers from `mine_harmful` (without
    it the forget answers are the data set's own refusals). `options`: `mix`, `mix_to`, `seed`,
    `rewrite_words`, `rewrite_pick`. Returns the files and their counts."""
    from unmirage.data.build import build_unlearn as build

    return build(vlguard, out, harmful=harmful, **options)


def unlearn(
    recipe: PathLike | Mapping[str, Any],
    overrides: Iterable[str] = (),
    *,
    resume: bool = False,
    merge: bool | None = None,
) -> RunResult:
    """Train an unlearning (or SFT) recipe, like `unmirage unlearn`.

    `recipe` is a YAML file or a dict with the same keys (`model`, `data`, `method`, `train`, `output_dir`,
    ...: docs/unlearning.md); `overrides` are dotted `key=value` strings applied on top, e.g.
    `["method.beta=0.5", "train.max_steps=10"]`. `resume=True` continues from the last checkpoint.
    Returns a `RunResult` with `output_dir`, `global_step`, the logged `metrics` rows and the `trainer`
    (its `.model` is the trained model).
    """
    from unmirage.train.recipe import load_recipe
    from unmirage.train.run import run_unlearning

    overrides = tuple(overrides)
    if isinstance(recipe, Mapping):
        parsed, config = load_recipe(None, overrides, base=copy.deepcopy(dict(recipe)))
        recipe_path = None
    else:
        parsed, config = load_recipe(recipe, overrides)
        recipe_path = recipe
    return run_unlearning(
        parsed, config, recipe_path=recipe_path, resume=resume, merge=merge, overrides=overrides
    )


def evaluate(
    model: PathLike, vlguard_test: PathLike | None, out: PathLike, **settings: Any
) -> dict[str, Any]:
    """Evaluate a model, like `unmirage eval`, and return its metrics (also written to `OUT/metrics.json` with
    generations, judgements and a manifest).

    Give the VLGuard test file (`vlguard_test`, the four-case protocol; None for none), registered benchmarks
    (`benchmarks=["xstest", "figstep"]`, optionally `cases=["xstest.safe"]` and `data_root=DIR`, else
    `UNMIRAGE_DATA_DIR`), or both: one model load answers every case.
    `settings` are `unmirage.eval.EvalSettings` fields: `share` and `what` (the attack files), `image_root` or
    `placeholder_images=True`, `subsample` (N random questions per case), `max_new_tokens`,
    `asr_methods` (the judges, e.g. `["keyword"]`), `label`, `prefill`, `template`, `seed`, ...
    The VLGuard headline values are `metrics["rr_normal"]`, `["rr_share"]`, `["asr_normal"]`,
    `["asr_attack"]`; a benchmark's are under `metrics["benchmarks"][NAME][CASE]["rate"]`.
    """
    from unmirage.config import validate
    from unmirage.eval import EvalSettings, run_eval

    values = {"model": str(model), "vlguard_test": vlguard_test, **settings}
    return run_eval(validate(EvalSettings, values, source="unmirage.evaluate"), out)


def build_report(runs: Sequence[PathLike], out: PathLike, overwrite: bool = False) -> dict[str, Path]:
    """Compare evaluation runs (folders written by `evaluate`), like `unmirage report`: table.md,
    headline.csv, chart.png, report.md, report.html and summary.json in `out` (and its manifest.json).
    The same runs rebuild a report in place; `overwrite` replaces a report of other runs. Returns the
    written files by name."""
    from unmirage.report.build import build_report as build

    return build(list(runs), out, overwrite=overwrite)
