"""`unmirage judge NAME --answers gens.jsonl --out judged.jsonl`: judge every answer of a generations file."""

from __future__ import annotations

from pathlib import Path

import typer

JUDGE_HELP = "Judge: keyword, keyword-strict, rules, llm-relevance, llm-harm or llm-topic."


def register(app: typer.Typer) -> None:
    app.command(
        "judge",
        short_help="Judge answers in a JSONL file: refusal, hedge, relevance, harm or topic.",
        help="Judge every answer of a JSONL file (keyword, keyword-strict, rules, llm-relevance, llm-harm, llm-topic) and "
        'write each line back with its verdict (e.g. "refused": true).',
    )(judge)


def judge(
    name: str = typer.Argument(..., help=JUDGE_HELP),
    answers: Path = typer.Option(
        ..., help="JSONL file; each line needs 'id' and 'answer' (LLM judges: 'question')."
    ),
    out: Path = typer.Option(..., help="Where to write the judged lines (JSONL)."),
    image_root: Path | None = typer.Option(
        None, help="Folder the lines' 'image' paths are relative to (LLM judges)."
    ),
    text_only: bool = typer.Option(False, help="LLM judges: send no image (the judge sees only text)."),
    judge_model: str | None = typer.Option(
        None,
        help="LLM judges: local Hugging Face model (path or hub id), or with --judge-url the served model name.",
    ),
    judge_url: str | None = typer.Option(
        None, help="LLM judges: base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."
    ),
    api_key_env: str = typer.Option(
        "UNMIRAGE_JUDGE_API_KEY", help="Environment variable holding the server's API key (if it needs one)."
    ),
    timeout: float = typer.Option(60.0, help="Seconds before one HTTP request times out."),
    retries: int = typer.Option(4, help="Retries of a failed HTTP request (exponential back-off)."),
    concurrency: int = typer.Option(4, help="Parallel HTTP requests."),
    batch_size: int = typer.Option(16, help="Answers per judging batch (cached after each batch)."),
    dtype: str = typer.Option("auto", help="Local judge model dtype: auto, float32, bfloat16, float16."),
    cache: Path | None = typer.Option(
        None, help="Verdict cache (JSONL). Default: judge_cache.jsonl next to --out."
    ),
    extended: bool = typer.Option(
        False, help="rules: use the 3-shot list (adds unfortunately, no direct, ...)."
    ),
    harm_threshold: float = typer.Option(
        0.5, help="llm-harm: score at or above which an answer is a success."
    ),
    topic_threshold: float | None = typer.Option(
        None, help="llm-topic: nats per token at or above which an answer is on topic (default 0.2)."
    ),
    scoring: str = typer.Option(
        "generate",
        help="LLM judges: generate (free reply, parsed) or choice (the likeliest allowed opening; "
        "local models; llm-relevance).",
    ),
    on_malformed: str = typer.Option(
        "default",
        help="Malformed LLM judge replies: 'default' records them (with the documented default verdict) and "
        "reports the count; 'error' stops with an error naming the first one and writes nothing.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out even if it was judged from other answers or settings."
    ),
) -> None:
    """Judge every answer in --answers and write the lines, with verdicts, to --out."""
    from unmirage.errors import UnmirageError
    from unmirage.judges import JUDGES, get_judge, judge_file, make_backend
    from unmirage.judges.backends import read_api_key

    cls = JUDGES.get(name)
    if cls is None:
        raise UnmirageError(f"unknown judge '{name}' (known: {', '.join(sorted(JUDGES))})")
    options: dict[str, object] = {}
    if name == "rules":
        options["extended"] = extended
    if name == "llm-harm":
        options["threshold"] = harm_threshold
    if name == "llm-topic" and topic_threshold is not None:
        options["threshold"] = topic_threshold
    if cls.needs_backend:
        options["scoring"] = scoring
        if name != "llm-topic":
            options["use_images"] = not text_only
        if scoring == "choice" and judge_url is not None:
            raise UnmirageError(
                "--scoring choice needs a local judge model (it reads the model's probabilities)"
            )
        if image_root is None and not text_only:
            raise UnmirageError(f"judge '{name}' looks at the image: give --image-root DIR, or --text-only")
        if image_root is not None and text_only:
            raise UnmirageError("give either --image-root or --text-only, not both")
        options["backend"] = make_backend(
            judge_model,
            url=judge_url,
            api_key=read_api_key(api_key_env) if judge_url else None,
            timeout=timeout,
            max_retries=retries,
            concurrency=concurrency,
            dtype=dtype,
            batch_size=batch_size,
        )
    judge_obj = get_judge(name, **options)
    summary = judge_file(
        judge_obj,
        answers,
        out,
        cache_path=cache,
        image_root=image_root if cls.needs_backend else None,
        batch_size=batch_size,
        on_malformed=on_malformed,
        overwrite=overwrite,
    )
    counts = ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items() if k != "judge"
    )
    typer.echo(f"{name}: {counts} -> {out}")
    if summary["malformed"]:
        typer.echo(
            f'warning: {summary["malformed"]} judge replies were malformed; they are marked "malformed": true '
            "in judgements and hold the default verdict (use --on-malformed error to stop instead)",
            err=True,
        )
    if summary["errors"]:
        typer.echo(
            f"error: {summary['errors']} answers could not be judged (recorded under judgements.{name}.error); "
            "rerun the same command to retry only those",
            err=True,
        )
        raise typer.Exit(1)
