"""`unmirage utility ...`: utility benchmarks beyond the VQA file of `unmirage eval --vqa`."""

from __future__ import annotations

from pathlib import Path

import typer

utility_app = typer.Typer(help="Utility benchmarks: lm-evaluation-harness tasks.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(utility_app, name="utility")


@utility_app.command("lm-eval")
def lm_eval_command(
    model: str = typer.Option(..., help="Model to evaluate: local folder or hub id."),
    tasks: list[str] = typer.Option(..., help="lm-eval task or group, repeatable (e.g. mmmu_val, mmlu)."),
    out: Path = typer.Option(
        ...,
        help="Folder for lm_eval.json; an `unmirage eval` folder also gets utility.lm_eval in metrics.json.",
    ),
    include_path: Path | None = typer.Option(None, help="Folder of your own task YAMLs."),
    model_type: str = typer.Option(
        "auto", help="Harness model: auto (hf-multimodal for image-text models, else hf), hf, hf-multimodal."
    ),
    adapter: Path | None = typer.Option(None, help="LoRA adapter folder to apply on top of the model."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, bfloat16, float16."),
    device: str = typer.Option("auto", help="auto (GPU when there is one), cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(8, min=1, help="Harness batch size."),
    limit: int | None = typer.Option(
        None, min=1, help="Only the first N documents of each task (quick runs)."
    ),
    chat_template: bool = typer.Option(False, help="Wrap prompts in the model's chat template."),
    seed: int = typer.Option(0, help="Seed for the harness's sampling and few-shot selection."),
) -> None:
    """Score a model on lm-evaluation-harness tasks (pip install 'unmirage[lmeval]')."""
    from unmirage.lmeval import run_lm_eval

    found = run_lm_eval(
        model,
        tasks,
        out,
        include_path=include_path,
        model_type=model_type,
        adapter=adapter,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        limit=limit,
        chat_template=chat_template,
        seed=seed,
    )
    for task, values in found.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if not k.endswith("_stderr"))
        typer.echo(f"{task}: {shown}")
    typer.echo(f"-> {out / 'lm_eval.json'}")
