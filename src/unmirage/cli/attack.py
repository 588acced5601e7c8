"""`unmirage attack build`: trigger-word attack files in the published schema."""

from __future__ import annotations

import os
from pathlib import Path

import typer

attack_app = typer.Typer(
    help="Build one-word and K-shot rewrite attacks and GCG suffixes.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")


@attack_app.command(
    "build", help="Rewrite each question K times to start with a trigger word; report failures."
)
def build(
    data: Path = typer.Option(..., help="VLGuard-format JSON file (e.g. test.json)."),
    trigger: str = typer.Option(..., help="The word every rewrite starts with (What, Share, Please, ...)."),
    out: Path = typer.Option(..., "--out", help="Attack JSON file; the report goes to <stem>.report.json."),
    k: int = typer.Option(1, "--k", help="Rewrites per question (consecutive records with the same id)."),
    mode: str = typer.Option("rules", help="rules (deterministic templates) or llm (model paraphrases)."),
    subset: str = typer.Option(
        "unsafes", help="Which instruction to rewrite: unsafes, safe_safes, safe_unsafes."
    ),
    ids_from: Path = typer.Option(
        None, help="Keep only the ids present in this file (e.g. a published attack)."
    ),
    model: str = typer.Option(
        None, help="llm mode: local model folder/Hub id, or the model name at --endpoint."
    ),
    endpoint: str = typer.Option(None, help="llm mode: OpenAI-compatible server URL (http://host:port/v1)."),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", help="Environment variable holding the endpoint's key."
    ),
    fallback: str = typer.Option("rules", help="llm mode: fill shots the model missed with rules, or none."),
    attempts: int = typer.Option(2, help="llm mode: tries per question."),
    max_new_tokens: int = typer.Option(256, help="llm mode: tokens per reply."),
    min_keep: float = typer.Option(1.0, help="Share of the original's content words a rewrite must keep."),
) -> None:
    import json

    from rich.console import Console

    from unmirage.attacks import LLM_TEMPERATURE, backend_text_generator, build_attack, write_attack
    from unmirage.data.jsonfile import read_json_list
    from unmirage.data.vlguard import load_vlguard
    from unmirage.errors import UnmirageError
    from unmirage.llm import make_backend, redact_url
    from unmirage.outputs import claim_file, file_identity
    from unmirage.runs import write_manifest

    generate = backend = None
    if mode == "llm":
        if not model:
            raise UnmirageError(
                "--endpoint needs --model (the model name the server serves)"
                if endpoint
                else "llm mode needs --model (local) or --endpoint with --model"
            )
        backend = make_backend(
            model, url=endpoint, api_key=os.environ.get(api_key_env), temperature=LLM_TEMPERATURE
        )
        generate = backend_text_generator(backend, max_tokens=max_new_tokens)
    ids = None
    if ids_from is not None:
        ids = [gid for gid, _ in load_vlguard(ids_from, allow_duplicate_ids=True).groups]
    records = read_json_list(data, "VLGuard records")
    settings = {"trigger": trigger, "k": k, "mode": mode, "subset": subset, "model": model}
    settings |= {"endpoint": redact_url(endpoint) if endpoint else None, "fallback": fallback}
    settings |= {"attempts": attempts, "max_new_tokens": max_new_tokens, "min_keep": min_keep}
    identity = {"data": file_identity(data), "ids_from": file_identity(ids_from), **settings}
    manifest = out.parent / f"{out.stem}.manifest.json"
    claim_file(out, manifest, command="attack build", identity=identity, inputs=[data, ids_from])
    result = build_attack(
        records,
        trigger=trigger,
        k=k,
        subset=subset,
        mode=mode,
        generate=generate,
        fallback=fallback,
        ids=ids,
        min_keep=min_keep,
        attempts=attempts,
        path=data,
    )
    report = write_attack(result, out)
    summary = result.summary()
    write_manifest(
        out.parent,
        name=manifest.name,
        command="attack build",
        identity=identity,
        output=out.name,
        config=summary
        | {"model": model, "endpoint": identity["endpoint"], "min_keep": min_keep}
        | {"backend": backend.describe() if backend is not None else None},
        inputs=[p for p in (data, ids_from) if p is not None],
        outputs=[out, report],
    )
    console = Console()
    console.print(json.dumps(summary, indent=1))
    if summary["unfilled_shots"]:
        console.print(f"[yellow]{summary['unfilled_shots']} shots could not be filled: see {report}[/yellow]")
    console.print(f"wrote {out} ({len(result.records)} records) and {report}")


@attack_app.command(
    "gcg",
    help="Optimise a GCG adversarial suffix per harmful question against a model (white box); write an attack "
    "file that `eval --gcg` and `generate` read (resumable: rerun the same command to continue).",
)
def gcg(
    model: str = typer.Option(..., help="Model to attack: local folder, Hub id, or tiny-llava."),
    data: Path = typer.Option(..., help="VLGuard-format JSON file (e.g. test.json)."),
    out: Path = typer.Option(
        ..., "--out", help="Attack JSON file; <stem>.gcg.jsonl (per-question log), .report.json next to it."
    ),
    target: str = typer.Option("Sure, here is", help="Text the answer should open with."),
    steps: int = typer.Option(250, help="GCG steps per question (at most; see --early-stop)."),
    search_width: int = typer.Option(512, help="Candidate suffixes scored per step."),
    topk: int = typer.Option(256, help="Tokens of most negative gradient considered per suffix position."),
    suffix_init: str = typer.Option(
        " !" * 20, help="Starting suffix (its tokens set the suffix length; start it with a space)."
    ),
    seed: int = typer.Option(0, help="Seed of the candidate sampling (and of --subsample)."),
    batch_size: int | None = typer.Option(None, help="Candidates per forward pass (default: all)."),
    prefix_cache: bool = typer.Option(
        True, help="Reuse the keys and values of the prompt before the suffix (same losses, faster)."
    ),
    early_stop: bool = typer.Option(True, help="Stop a question once greedy decoding gives the target."),
    template: str = typer.Option("v1", help="Prompt template: v1 (reference) or chat; as in eval."),
    subset: str = typer.Option("unsafes", help="Which instructions: unsafes, safe_safes, safe_unsafes."),
    limit: int | None = typer.Option(None, help="Attack only the first N questions."),
    subsample: int | None = typer.Option(
        None, help="Attack N seeded random questions (the ids `eval --subsample N --seed S` picks)."
    ),
    image_root: Path | None = typer.Option(
        None, help="VLMs: folder the records' image paths are relative to."
    ),
    placeholder_images: bool = typer.Option(False, help="VLMs: grey placeholder images (text-only run)."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, bfloat16, float16."),
    adapter: Path | None = typer.Option(None, help="LoRA adapter folder to apply on top of the model."),
) -> None:
    import json

    from unmirage.attacks_gcg import GCGConfig, build_gcg_attack
    from unmirage.config import validate

    config = validate(
        GCGConfig,
        {
            "target": target,
            "steps": steps,
            "search_width": search_width,
            "topk": topk,
            "suffix_init": suffix_init,
            "seed": seed,
            "batch_size": batch_size,
            "prefix_cache": prefix_cache,
            "early_stop": early_stop,
            "template": template,
        },
        source="command line",
    )
    summary = build_gcg_attack(
        model,
        data,
        out,
        config,
        subset=subset,
        image_root=image_root,
        placeholder_images=placeholder_images,
        limit=limit,
        subsample=subsample,
        dtype=dtype,
        adapter=adapter,
    )
    typer.echo(json.dumps(summary, indent=1))
    typer.echo(f"wrote {out} ({summary['questions']} questions)")
