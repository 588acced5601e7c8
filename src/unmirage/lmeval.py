"""Utility through lm-evaluation-harness (`pip install 'unmirage[lmeval]'`): `unmirage utility lm-eval`.

The harness already implements hundreds of benchmarks (MMMU through its `hf-multimodal` model, MMLU, GSM8K,
... through `hf`); this bridge runs it on any model unmirage trains, with the same model conventions (local
folder or Hub id, safetensors, no remote code, optional LoRA adapter), and files the scores where `unmirage
report` reads them: `RUN_DIR/lm_eval.json` (the harness's results, configs and versions) and, when RUN_DIR is
an `unmirage eval` folder, `utility.lm_eval` in its metrics.json ({task: {metric: value}}).

Tasks come from the harness's registry or from `--include-path DIR` (task YAMLs of your own, e.g. over local
files: nothing here downloads unless a task's dataset lives on the Hub).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from unmirage.config import StrictModel, setting
from unmirage.errors import UnmirageError

MODEL_TYPES = ("auto", "hf", "hf-multimodal")
MODEL_PANEL, TASKS_PANEL = "Model", "Tasks"
"""The help panels of `unmirage utility lm-eval`'s options."""


def harness_model_type(model: str, model_type: str = "auto") -> str:
    """`hf-multimodal` for image-text models, `hf` for causal LMs (`auto`), or the type given."""
    if model_type not in MODEL_TYPES:
        raise UnmirageError(
            f"unknown lm-eval model type '{model_type}' (choose from {', '.join(MODEL_TYPES)})"
        )
    if model_type != "auto":
        return model_type
    from unmirage.models.load import source_is_multimodal

    return "hf-multimodal" if source_is_multimodal(model) else "hf"


def scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from the harness's `results` block (filter suffixes such as `,none` dropped,
    standard errors kept as `<metric>_stderr`; non-numeric entries skipped)."""
    out: dict[str, dict[str, float]] = {}
    for task, block in results.items():
        values = {}
        for key, value in block.items():
            if key == "alias" or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            metric, _, filt = key.partition(",")
            values[metric if filt in ("", "none") else f"{metric} ({filt})"] = float(value)
        if values:
            out[task] = values
    return out


def task_manager(manager_class: Any, tasks: Sequence[str], include_path: str | os.PathLike | None) -> Any:
    """The harness's task index: only `include_path` when it defines every requested task (indexing the
    harness's ~15,000 built-in task files takes tens of seconds), else the built-in tasks plus `include_path`."""
    if include_path is not None:
        local = manager_class(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return manager_class(include_path=str(include_path) if include_path is not None else None)


class LmEvalSettings(StrictModel):
    """What `run_lm_eval` runs: a model, the harness's tasks, and how (recorded in OUT/lm_eval.json)."""

    model: str = setting(help="Model to evaluate: local folder or hub id.", panel=MODEL_PANEL)
    tasks: list[str] = setting(
        min_length=1, help="lm-eval task or group, repeatable (e.g. mmmu_val, mmlu).", panel=TASKS_PANEL
    )
    include_path: Path | None = setting(None, help="Folder of your own task YAMLs.", panel=TASKS_PANEL)
    model_type: Literal["auto", "hf", "hf-multimodal"] = setting(
        "auto",
        help="Harness model: auto (hf-multimodal for image-text models, else hf), hf, hf-multimodal.",
        panel=MODEL_PANEL,
    )
    adapter: Path | None = setting(
        None, help="LoRA adapter folder to apply on top of the model.", panel=MODEL_PANEL
    )
    dtype: str = setting("auto", help="Model dtype: auto, float32, bfloat16, float16.", panel=MODEL_PANEL)
    device: str = setting(
        "auto", help="auto (GPU when there is one), cpu, cuda, cuda:1, ...", panel=MODEL_PANEL
    )
    batch_size: int = setting(8, ge=1, help="Harness batch size.", panel=TASKS_PANEL)
    limit: int | None = setting(
        None, ge=1, help="Only the first N documents of each task (quick runs).", panel=TASKS_PANEL
    )
    chat_template: bool = setting(False, help="Wrap prompts in the model's chat template.", panel=TASKS_PANEL)
    seed: int = setting(0, help="Seed for the harness's sampling and few-shot selection.", panel=TASKS_PANEL)


def run_lm_eval(settings: LmEvalSettings, out: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Run the harness on `settings.model` for `settings.tasks`; write OUT/lm_eval.json (the settings, the
    harness's results, configs and versions) and metrics.json's utility block when OUT holds an `unmirage eval`
    run; return {task: {metric: value}}."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UnmirageError(
            "lm-evaluation-harness is not installed: pip install 'unmirage[lmeval]'"
        ) from None
    from unmirage.models import resolve_device
    from unmirage.runs import atomic_write_json

    model, tasks, include_path, adapter = (
        settings.model,
        settings.tasks,
        settings.include_path,
        settings.adapter,
    )
    if include_path is not None and not Path(include_path).is_dir():
        raise UnmirageError("task folder not found", file=include_path)
    kind = harness_model_type(model, settings.model_type)
    model_args: dict[str, Any] = {
        "pretrained": model,
        "dtype": settings.dtype,
        "device": resolve_device(settings.device) or "cpu",
        "trust_remote_code": False,
    }
    if adapter is not None:
        model_args["peft"] = str(adapter)
    manager = task_manager(TaskManager, tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UnmirageError(
            f"unknown lm-eval task(s) {', '.join(unknown)} (see `lm-eval ls tasks`, or include_path)"
        )
    result = lm_eval.simple_evaluate(
        model=kind,
        model_args=model_args,
        tasks=list(tasks),
        task_manager=manager,
        batch_size=settings.batch_size,
        limit=settings.limit,
        apply_chat_template=settings.chat_template,
        random_seed=settings.seed,
        numpy_random_seed=settings.seed,
        torch_random_seed=settings.seed,
        fewshot_random_seed=settings.seed,
    )
    if result is None:  # the harness returns None on non-zero ranks
        return {}
    found = scores(result.get("results", {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "model": model,
        "model_type": kind,
        "adapter": str(adapter) if adapter else None,
        "tasks": list(tasks),
        "limit": settings.limit,
        "settings": settings.model_dump(mode="json"),
        "scores": found,
        "results": result.get("results", {}),
        "configs": result.get("configs", {}),
        "versions": result.get("versions", {}),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }
    atomic_write_json(out / "lm_eval.json", json.loads(json.dumps(record, default=str)))
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        utility = metrics.setdefault("utility", {})
        utility["lm_eval"] = {**utility.get("lm_eval", {}), **found}
        atomic_write_json(metrics_path, metrics)
    return found
