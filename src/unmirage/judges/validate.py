"""`unmirage judge validate`: measure a judge against answers labelled by people.

A labels file (JSON lines or CSV) has one answer per line with `question`, `answer` and `label` (optional:
`id`, `image`). Two kinds of labels:

- refusal labels `compliance`, `refusal`, `partial_refusal`, for refusal judges (`refusal_judges()`);
  the headline is the binary accuracy, any refusal (full or partial) against full compliance;
- attack labels `success`, `irrelevant`, `refusal`, for ASR methods (`judges.cascades.ASR_METHODS`: a judge
  cascade; refused and hedge-filtered answers are `refusal`, irrelevant and harmless ones `irrelevant`).

The kind follows from the judge, or from the file's labels when the judge can do both. Results: accuracy,
per-class precision / recall / F1, the confusion matrix, 95% Wilson score intervals for every proportion,
the worst misses (the most confident wrong verdicts first), judge errors counted and listed (never a
class), as JSON, Markdown and a confusion-matrix PNG, written only when everything is ready.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unmirage.errors import UnmirageError
from unmirage.judges.base import Judge, JudgeItem, Verdict, refusal_judges
from unmirage.judges.cache import JudgeCache
from unmirage.judges.cascades import ASR_METHODS, cascade_for, stage_outcome
from unmirage.judges.runner import run_judge
from unmirage.stats import wilson_interval

REFUSAL_LABELS = ("compliance", "refusal", "partial_refusal")
ASR_LABELS = ("success", "irrelevant", "refusal")
KINDS = {"refusal": REFUSAL_LABELS, "asr": ASR_LABELS}
# Judges whose verdict is a refusal flag (the binary refusal / compliance decision).
# ASR cascade outcome (cascades.stage_outcome) -> attack label.
OUTCOME_LABEL = {
    "success": "success",
    "irrelevant": "irrelevant",
    "harmless": "irrelevant",
    "refused": "refusal",
    "filtered": "refusal",
}
ERROR = "error"
CONFIDENCE = 0.95
WORST_MISSES = 15


@dataclass(frozen=True)
class LabelledAnswer:
    """One human-labelled answer (`line`: its line in the labels file, counting a CSV header as line 1)."""

    id: str
    question: str
    answer: str
    label: str
    line: int
    image: str | None = None


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in ("question", "answer", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise UnmirageError(
                f"CSV header has no '{missing[0]}' column (needs question, answer, label)",
                file=path,
                record="on line 1",
                field=missing[0],
            )
        return [(reader.line_num, row) for row in reader]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UnmirageError(f"not JSON ({err.msg})", file=path, record=f"on line {number}") from None
        if not isinstance(row, dict):
            raise UnmirageError("a line must be a JSON object", file=path, record=f"on line {number}")
        rows.append((number, row))
    return rows


def read_labels(path: str | os.PathLike, labels: Sequence[str] | None = None) -> list[LabelledAnswer]:
    """Read a labels file (`.csv`, else JSON lines). `labels`: the allowed label values (default: either
    kind's, all lines of one kind). A missing column, an empty answer or an unknown label is a one-line error
    naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise UnmirageError("labels file not found", file=path)
    rows = _rows(path)
    if not rows:
        raise UnmirageError("labels file has no answers", file=path)
    allowed = tuple(labels) if labels is not None else kind_of_labels(rows)
    out = []
    seen: dict[str, int] = {}
    for number, row in rows:
        uid = str(row.get("id") or f"line-{number}")
        where = f"{uid} (line {number})" if row.get("id") else f"on line {number}"
        for field in ("question", "answer", "label"):
            if field not in row or row[field] is None:
                raise UnmirageError(f"no '{field}'", file=path, record=where, field=field)
            if not isinstance(row[field], str):
                raise UnmirageError(
                    f"'{field}' must be text, got {type(row[field]).__name__}",
                    file=path,
                    record=where,
                    field=field,
                )
        if not row["answer"].strip():
            raise UnmirageError("empty answer", file=path, record=where, field="answer")
        label = row["label"].strip().lower()
        if label not in allowed:
            raise UnmirageError(
                f"unknown label '{row['label']}' (expected one of {', '.join(allowed)})",
                file=path,
                record=where,
                field="label",
            )
        if uid in seen:
            raise UnmirageError(f"id repeats line {seen[uid]}", file=path, record=where, field="id")
        seen[uid] = number
        image = row.get("image") if isinstance(row.get("image"), str) and row.get("image") else None
        out.append(LabelledAnswer(uid, row["question"], row["answer"], label, number, image))
    return out


def kind_of_labels(rows: Sequence[tuple[int, dict[str, Any]]]) -> tuple[str, ...]:
    """The label set a file uses: the first label that belongs to only one kind decides (refusal labels
    when every label is `refusal`)."""
    for _number, row in rows:
        label = str(row.get("label", "")).strip().lower()
        if label in REFUSAL_LABELS and label not in ASR_LABELS:
            return REFUSAL_LABELS
        if label in ASR_LABELS and label not in REFUSAL_LABELS:
            return ASR_LABELS
    return REFUSAL_LABELS


def judge_kinds(name: str) -> tuple[str, ...]:
    """The label kinds a judge (or ASR method) can be validated on."""
    refusal = refusal_judges()
    kinds = tuple(k for k, ok in (("refusal", name in refusal), ("asr", name in ASR_METHODS)) if ok)
    if not kinds:
        usable = sorted(set(refusal) | set(ASR_METHODS))
        raise UnmirageError(
            f"judge '{name}' cannot be validated against labels (choose from {', '.join(usable)})"
        )
    return kinds


# ----- statistics ---------------------------------------------------------------------------------------------


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n trials (None when n = 0); never zero width."""
    return wilson_interval(k / n, n, confidence) if n > 0 else None


def proportion(k: int, n: int) -> dict[str, Any]:
    """k of n as {value, ci (Wilson 95%), k, n}; value and ci are None when n = 0."""
    ci = wilson(k, n)
    return {"value": k / n if n else None, "ci": list(ci) if ci else None, "k": k, "n": n}


def class_scores(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Precision, recall (each a proportion with its interval) and F1 of every class; support = true count."""
    out = {}
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(truth, predicted))
        called = sum(p == c for p in predicted)
        support = sum(t == c for t in truth)
        precision = proportion(tp, called)
        recall = proportion(tp, support)
        f1 = 2 * tp / (called + support) if called + support else None
        out[c] = {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": called}
    return out


def confusion(
    truth: Sequence[str], predicted: Sequence[str], rows: Sequence[str], cols: Sequence[str]
) -> dict:
    """Counts of (true row, predicted column)."""
    matrix = [[sum(t == r and p == c for t, p in zip(truth, predicted)) for c in cols] for r in rows]
    return {"true": list(rows), "predicted": list(cols), "matrix": matrix}


# ----- running the judge --------------------------------------------------------------------------------------


def _items(
    answers: Sequence[LabelledAnswer], image_root: str | os.PathLike | None, file: Path
) -> list[JudgeItem]:
    from unmirage.data.images import resolve_image_path

    items = []
    for a in answers:
        image = None
        if image_root is not None:
            if a.image is None:
                where = f"{a.id} (line {a.line})"
                raise UnmirageError(
                    "no 'image' to resolve under image_root", file=file, record=where, field="image"
                )
            image = str(resolve_image_path(image_root, a.image, a.id, file=file))
        items.append(JudgeItem(id=a.id, answer=a.answer, question=a.question or None, image=image, key=a.id))
    return items


def predict_refusal(judge: Judge, items: Sequence[JudgeItem], cache: JudgeCache) -> list[tuple[str, Verdict]]:
    """(predicted label, verdict) per item for a refusal judge: the judge's own 3-way `label` when it gives
    one, else refusal / compliance from `refused`; `error` when the judge failed or gave no refusal flag."""
    verdicts = run_judge(judge, items, cache=cache, progress=judge.cacheable, desc=f"validate {judge.name}")
    out = []
    for v in verdicts:
        if v.error is not None or v.refused is None:
            out.append((ERROR, v))
        elif v.label in REFUSAL_LABELS:
            out.append((v.label, v))
        else:
            out.append(("refusal" if v.refused else "compliance", v))
    return out


def predict_asr(
    method: str, judges: dict[str, Judge], items: Sequence[JudgeItem], cache: JudgeCache
) -> list[tuple[str, Verdict | None]]:
    """(predicted attack label, deciding verdict) per item under an ASR method: each judge of its cascade
    runs on the answers that passed the earlier ones; a failed verdict makes the item an `error`."""
    results: list[tuple[str, Verdict | None] | None] = [None] * len(items)
    last: list[Verdict | None] = [None] * len(items)
    for name in cascade_for(method):
        todo = [i for i in range(len(items)) if results[i] is None]
        if not todo:
            break
        judge = judges[name]
        verdicts = run_judge(
            judge, [items[i] for i in todo], cache=cache, progress=judge.cacheable, desc=f"validate {name}"
        )
        for i, verdict in zip(todo, verdicts):
            last[i] = verdict
            if verdict.error is not None:
                results[i] = (ERROR, verdict)
            elif not verdict.success:
                results[i] = (OUTCOME_LABEL[stage_outcome(name)], verdict)
    return [r if r is not None else ("success", v) for r, v in zip(results, last)]


# ----- the report ---------------------------------------------------------------------------------------------


def validation_summary(
    name: str, kind: str, answers: Sequence[LabelledAnswer], predictions: Sequence[tuple[str, Verdict | None]]
) -> dict[str, Any]:
    """Every number of a validation (see the module docstring)."""
    classes = KINDS[kind]
    truth = [a.label for a in answers]
    predicted = [p for p, _v in predictions]
    n = len(answers)
    errors = [i for i, p in enumerate(predicted) if p == ERROR]
    cols = [c for c in classes if c in predicted or c in truth] + ([ERROR] if errors else [])
    doc: dict[str, Any] = {
        "judge": name,
        "kind": kind,
        "labels": list(classes),
        "answers": n,
        "label_counts": {c: truth.count(c) for c in classes},
        "interval": "Wilson score interval, 95% (proportions: accuracy, precision, recall)",
        "errors": len(errors),
        "note_errors": "an answer the judge failed on is an error: never a class, always counted as wrong",
    }
    gives_labels = kind == "asr" or any(v is not None and v.label in REFUSAL_LABELS for _p, v in predictions)
    if kind == "refusal":
        binary_truth = ["compliance" if t == "compliance" else "refusal" for t in truth]
        binary_pred = [p if p in ("compliance", ERROR) else "refusal" for p in predicted]
        doc["binary"] = {
            "positive": "refusal (full or partial)",
            "accuracy": proportion(sum(t == p for t, p in zip(binary_truth, binary_pred)), n),
            "classes": class_scores(binary_truth, binary_pred, ("compliance", "refusal")),
            "confusion": confusion(
                binary_truth,
                binary_pred,
                ("compliance", "refusal"),
                ("compliance", "refusal", ERROR)[: 3 if errors else 2],
            ),
        }
        doc["accuracy"] = doc["binary"]["accuracy"]
        doc["accuracy_measure"] = "binary: any refusal (full or partial) vs full compliance"
        if gives_labels:
            doc["exact_accuracy"] = proportion(sum(t == p for t, p in zip(truth, predicted)), n)
    else:
        doc["accuracy"] = proportion(sum(t == p for t, p in zip(truth, predicted)), n)
        doc["accuracy_measure"] = "exact: success / irrelevant / refusal"
    doc["classes"] = class_scores(truth, predicted, classes)
    doc["confusion"] = confusion(truth, predicted, classes, cols)
    doc["worst_misses"] = worst_misses(kind, answers, predictions)
    doc["error_items"] = [
        {
            "id": answers[i].id,
            "line": answers[i].line,
            "error": predictions[i][1].error if predictions[i][1] else None,
        }
        for i in errors
    ]
    return doc


def _wrong(kind: str, truth: str, predicted: str) -> bool:
    if predicted == ERROR:
        return False  # listed with the errors
    if kind == "refusal":
        return (truth == "compliance") != (predicted == "compliance")
    return truth != predicted


def worst_misses(
    kind: str, answers: Sequence[LabelledAnswer], predictions: Sequence[tuple[str, Verdict | None]]
) -> list[dict[str, Any]]:
    """Wrong verdicts (refusal labels: wrong on the binary decision), most confident first when the judge
    gives a probability (`score`), else in file order; at most `WORST_MISSES`."""
    misses = []
    for a, (predicted, verdict) in zip(answers, predictions):
        if not _wrong(kind, a.label, predicted):
            continue
        score = verdict.score if verdict is not None and kind == "refusal" else None
        confidence = abs(score - 0.5) if isinstance(score, float) else None
        excerpt = " ".join(a.answer.split())
        misses.append(
            {
                "id": a.id,
                "line": a.line,
                "label": a.label,
                "predicted": predicted,
                "score": score,
                "matches": list(verdict.matches) if verdict is not None else [],
                "answer": excerpt if len(excerpt) <= 240 else excerpt[:239] + "\u2026",
                "_confidence": confidence,
            }
        )
    misses.sort(key=lambda m: -(m["_confidence"] or 0.0))
    for m in misses:
        del m["_confidence"]
    return misses[:WORST_MISSES]


def _pct(p: dict[str, Any]) -> str:
    if p["value"] is None:
        return "n/a"
    low, high = p["ci"]
    return f"{100 * p['value']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({p['k']}/{p['n']})"


def markdown(doc: dict[str, Any], labels_file: str) -> str:
    """The validation as a Markdown page."""
    lines = [
        f"# Judge `{doc['judge']}` against human labels",
        "",
        f"Labels: `{labels_file}` ({doc['answers']} answers: "
        + ", ".join(f"{c} {k}" for c, k in doc["label_counts"].items())
        + f"). Intervals: {doc['interval']}.",
        "",
        f"- accuracy ({doc['accuracy_measure']}): {_pct(doc['accuracy'])}",
    ]
    if "exact_accuracy" in doc:
        lines.append(f"- exact 3-way accuracy: {_pct(doc['exact_accuracy'])}")
    lines.append(f"- judge errors: {doc['errors']} (counted as wrong, never as a class)")
    sections = [("Per class", doc["classes"], doc["confusion"])]
    if "binary" in doc:
        sections.insert(
            0, ("Binary: any refusal vs compliance", doc["binary"]["classes"], doc["binary"]["confusion"])
        )
    for title, classes, conf in sections:
        lines += [
            "",
            f"## {title}",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for c, s in classes.items():
            f1 = "n/a" if s["f1"] is None else f"{s['f1']:.3f}"
            lines.append(f"| {c} | {_pct(s['precision'])} | {_pct(s['recall'])} | {f1} | {s['support']} |")
        lines += ["", "Confusion matrix (rows: human label, columns: judge):", ""]
        lines.append("| | " + " | ".join(conf["predicted"]) + " |")
        lines.append("|---" * (len(conf["predicted"]) + 1) + "|")
        for row, counts in zip(conf["true"], conf["matrix"]):
            lines.append(f"| **{row}** | " + " | ".join(str(c) for c in counts) + " |")
    lines += ["", "## Worst misses", ""]
    if not doc["worst_misses"]:
        lines.append("None.")
    for m in doc["worst_misses"]:
        score = "" if m["score"] is None else f", P(refusal) {m['score']:.2f}"
        answer = m["answer"].replace("|", "\\|")
        lines.append(
            f"- `{m['id']}` (line {m['line']}): label **{m['label']}**, judge **{m['predicted']}**{score}: {answer}"
        )
    if doc["error_items"]:
        lines += ["", "## Judge errors", ""]
        lines += [f"- `{e['id']}` (line {e['line']}): {e['error']}" for e in doc["error_items"]]
    return "\n".join(lines) + "\n"


def confusion_png(doc: dict[str, Any]) -> bytes:
    """The confusion matrix (counts and row shares) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    conf = doc["confusion"]
    matrix = np.array(conf["matrix"], dtype=float)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(conf["predicted"]), 1.4 + 1.0 * len(conf["true"])))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (r, c), count in np.ndenumerate(matrix):
        colour = "white" if shares[r, c] > 0.6 else "black"
        ax.text(
            c,
            r,
            f"{int(count)}\n{100 * shares[r, c]:.0f}%",
            ha="center",
            va="center",
            color=colour,
            fontsize=10,
        )
    ax.set_xticks(range(len(conf["predicted"])), conf["predicted"])
    ax.set_yticks(range(len(conf["true"])), conf["true"])
    ax.set_xlabel("judge")
    ax.set_ylabel("human label")
    measure = "binary accuracy (any refusal vs compliance)" if doc["kind"] == "refusal" else "accuracy"
    value = doc["accuracy"]["value"]
    ax.set_title(f"{doc['judge']}: {measure} {100 * value:.1f}% (n={doc['answers']})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def validate_judge(
    name: str,
    labels_file: str | os.PathLike,
    out: str | os.PathLike | None,
    *,
    judges: dict[str, Judge],
    image_root: str | os.PathLike | None = None,
    cache_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Validate judge (or ASR method) `name` on a labels file and, with `out`, write `validation.json`,
    `validation.md`, `confusion.png` and `manifest.json` there (rendered first, then written). `judges` holds the built judge of every
    name the run needs (`needed_judges`). Returns the JSON document."""
    from unmirage.runs import atomic_write_json, atomic_write_text, sha256_file

    kinds = judge_kinds(name)
    labels_file = Path(labels_file)
    answers = read_labels(labels_file, KINDS[kinds[0]] if len(kinds) == 1 else None)
    kind = kinds[0] if len(kinds) == 1 else ("refusal" if _is_refusal_file(answers) else "asr")
    items = _items(answers, image_root, labels_file)
    with JudgeCache(cache_path) as cache:
        if kind == "refusal":
            predictions = predict_refusal(judges[name], items, cache)
        else:
            predictions = predict_asr(name, judges, items, cache)
    doc = validation_summary(name, kind, answers, predictions)
    doc["labels_file"] = str(labels_file)
    doc["labels_sha256"] = sha256_file(labels_file)
    doc["judge_settings"] = {j: judges[j].describe() for j in needed_judges(name, kind)}
    if out is not None:
        out = Path(out)
        text = markdown(doc, labels_file.name)
        png = confusion_png(doc)
        out.mkdir(parents=True, exist_ok=True)
        from unmirage.runs import atomic_open, write_manifest

        with atomic_open(out / "confusion.png", "wb") as handle:
            handle.write(png)
        atomic_write_text(out / "validation.md", text)
        atomic_write_json(out / "validation.json", doc)
        outputs = [out / "validation.json", out / "validation.md", out / "confusion.png"]
        write_manifest(
            out,
            command="judge validate",
            config={"judge": name, "kind": kind, "judges": doc["judge_settings"]},
            inputs=[labels_file],
            outputs=outputs,
        )
    return doc


def _is_refusal_file(answers: Sequence[LabelledAnswer]) -> bool:
    return all(a.label in REFUSAL_LABELS for a in answers)


def needed_judges(name: str, kind: str) -> list[str]:
    """The judges a validation runs: the judge itself (refusal labels) or its ASR cascade."""
    return [name] if kind == "refusal" else list(cascade_for(name))
