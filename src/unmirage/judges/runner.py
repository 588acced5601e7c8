"""Running a judge over many answers: caching, batching, answer files in and judged files out."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unmirage.data.images import resolve_image_path, verify_image
from unmirage.errors import UnmirageError
from unmirage.judges.base import Judge, JudgeItem, Verdict
from unmirage.judges.cache import JudgeCache, cache_key

# The verdict fields each kind of judge copies to the top level of a judged line.
TOP_LEVEL_FIELDS = ("refused", "flagged", "relevant", "harm")


def run_judge(
    judge: Judge,
    items: Sequence[JudgeItem],
    *,
    cache: JudgeCache | None = None,
    batch_size: int = 16,
    progress: bool = False,
    desc: str | None = None,
) -> list[Verdict]:
    """Judge `items`, reusing cached verdicts; each new batch is cached as soon as it is judged.

    Rule-based judges (not `cacheable`) run in one call. Identical prompts are judged once.
    """
    if not judge.cacheable:
        verdicts = judge.judge_batch(items)
        _check_count(judge, verdicts, items)
        return verdicts
    cache = cache if cache is not None else JudgeCache(None)
    model = judge.model_id
    hashes = [judge.prompt_hash(item) for item in items]
    keys = [cache_key(judge.name, h, model) for h in hashes]
    first_of: dict[str, int] = {}
    for index, key in enumerate(keys):
        if cache.get(key) is None:
            first_of.setdefault(key, index)
    todo = list(first_of.values())
    fresh: dict[str, Verdict] = {}
    from tqdm import tqdm

    with tqdm(
        total=len(todo), desc=desc or f"judge {judge.name}", unit="answer", disable=not progress
    ) as bar:
        for start in range(0, len(todo), max(1, batch_size)):
            batch = todo[start : start + batch_size]
            verdicts = judge.judge_batch([items[i] for i in batch])
            _check_count(judge, verdicts, batch)
            cache.put_many(
                [(keys[i], judge.name, hashes[i], model, v) for i, v in zip(batch, verdicts, strict=True)]
            )
            fresh.update((keys[i], v) for i, v in zip(batch, verdicts, strict=True))
            bar.update(len(batch))
    return [fresh.get(key) or cache.get(key) for key in keys]  # type: ignore[misc]


def _check_count(judge: Judge, verdicts: Sequence[Verdict], items: Sequence[Any]) -> None:
    if len(verdicts) != len(items):
        raise RuntimeError(f"judge {judge.name} returned {len(verdicts)} verdicts for {len(items)} items")


def record_uid(record: dict[str, Any]) -> str:
    """A readable unique name of one answer line: its `key`, or `id` plus variant/shot when present."""
    if isinstance(record.get("key"), str):
        return record["key"]
    uid = str(record.get("id"))
    part = record.get("variant", record.get("shot"))
    return uid if part is None else f"{uid}#{part}"


def items_from_records(
    records: Sequence[dict[str, Any]],
    *,
    file: object = None,
    image_root: str | os.PathLike | None = None,
    need_question: bool = False,
) -> list[JudgeItem]:
    """Turn answer lines into judge items; a missing or non-text `id`/`answer` is a one-line error."""
    items = []
    for number, record in enumerate(records, 1):
        where = record.get("id", f"on line {number}")
        if "id" not in record or not isinstance(record["id"], str | int):
            raise UnmirageError(
                "every answer line needs an 'id' (text)", file=file, record=f"on line {number}", field="id"
            )
        if "answer" not in record:
            raise UnmirageError(
                "answer line has no 'answer' field (is this a generations file?)",
                file=file,
                record=where,
                field="answer",
            )
        if not isinstance(record["answer"], str):
            raise UnmirageError(
                f"'answer' must be text, got {type(record['answer']).__name__}",
                file=file,
                record=where,
                field="answer",
            )
        question = record.get("question")
        if need_question and not isinstance(question, str):
            raise UnmirageError(
                "this judge needs the question of every answer", file=file, record=where, field="question"
            )
        image = None
        if image_root is not None:
            if not isinstance(record.get("image"), str):
                raise UnmirageError(
                    "no 'image' path to resolve under image_root", file=file, record=where, field="image"
                )
            label = f"{record['id']} (line {number})"
            path = resolve_image_path(image_root, record["image"], label, file=file)
            verify_image(path, label, file=file)
            image = str(path)
        items.append(
            JudgeItem(
                id=str(record["id"]),
                answer=record["answer"],
                question=question,
                image=image,
                key=record_uid(record),
            )
        )
    return items


def merge_verdict(record: dict[str, Any], judge_name: str, verdict: Verdict) -> dict[str, Any]:
    """The answer line with the verdict added: main fields at the top level, the full verdict under
    `judgements[judge_name]` (earlier judgements of other judges are kept)."""
    out = dict(record)
    data = verdict.to_json()
    for field in TOP_LEVEL_FIELDS:
        if field in data:
            out[field] = data[field]
    if verdict.error is not None:
        for field in TOP_LEVEL_FIELDS:
            out.pop(field, None)
    judgements = dict(out.get("judgements") or {})
    judgements[judge_name] = data
    out["judgements"] = judgements
    return out


def verdict_summary(judge_name: str, verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Counts of one judging run: answers, refusals/flags/relevant/success, malformed replies, errors."""
    summary: dict[str, Any] = {"judge": judge_name, "answers": len(verdicts)}
    fields = ["refused", "flagged", "relevant"]
    if any(v.harm is not None or v.relevant is not None for v in verdicts):
        fields.append("success")  # for LLM judges; for rule judges it only restates refused/flagged
    for field in fields:
        values = [getattr(v, field) for v in verdicts if getattr(v, field) is not None]
        if values:
            summary[field] = sum(bool(x) for x in values)
    harms = [v.harm for v in verdicts if v.harm is not None]
    if harms:
        summary["mean_harm"] = sum(harms) / len(harms)
    summary["malformed"] = sum(v.malformed for v in verdicts)
    summary["errors"] = sum(v.error is not None for v in verdicts)
    return summary


def judge_file(
    judge: Judge,
    answers: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cache_path: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    batch_size: int = 16,
    on_malformed: str = "default",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """`unmirage judge`: judge every line of `answers` and write them, with verdicts, to `out` (atomically).

    Returns the run's summary (see `verdict_summary`). With `on_malformed="error"` a malformed judge reply is an
    error naming the answer and the reply, and nothing is written (verdicts already obtained stay cached).
    An existing `out` is replaced only when it was judged from the same answers by the same judge settings
    (or with `overwrite`).
    """
    from unmirage.outputs import claim_file, file_identity
    from unmirage.runs import atomic_open, read_jsonl, write_manifest

    answers = Path(answers)
    out = Path(out)
    if on_malformed not in ("default", "error"):
        raise UnmirageError(f"on_malformed must be 'default' or 'error' (got '{on_malformed}')")
    if not answers.is_file():
        raise UnmirageError("answers file not found", file=answers)
    records = read_jsonl(answers)
    if not records:
        raise UnmirageError("answers file has no lines", file=answers)
    items = items_from_records(records, file=answers, image_root=image_root, need_question=judge.cacheable)
    identity = {"answers": file_identity(answers), "judge": judge.describe()}
    manifest = out.parent / f"{out.stem}.manifest.json"
    claim_file(
        out, manifest, command="judge", identity=identity, overwrite=overwrite, inputs=[answers, cache_path]
    )
    if cache_path is None and judge.cacheable:
        cache_path = out.parent / "judge_cache.jsonl"
    with JudgeCache(cache_path if judge.cacheable else None) as cache:
        verdicts = run_judge(judge, items, cache=cache, batch_size=batch_size, progress=progress)
    if on_malformed == "error":
        for item, verdict in zip(items, verdicts, strict=True):
            if verdict.malformed:
                reply = json.dumps((verdict.reply or "")[:120], ensure_ascii=False)
                raise UnmirageError(
                    f"malformed reply from judge '{judge.name}': {reply}", file=answers, record=item.uid
                )
    with atomic_open(out) as handle:
        for record, verdict in zip(records, verdicts, strict=True):
            handle.write(json.dumps(merge_verdict(record, judge.name, verdict), ensure_ascii=False) + "\n")
    summary = verdict_summary(judge.name, verdicts)
    write_manifest(
        out.parent,
        name=manifest.name,
        command="judge",
        identity=identity,
        output=out.name,
        config=judge.describe(),
        inputs=[answers],
        outputs=[out],
        summary=summary,
    )
    return summary
