"""Refusal judges side by side: binary accuracy (any refusal vs full compliance) of `keyword`, `keyword-strict`
and `refusal` on labelled answers the classifier was not trained on, and answers/s of each.

Labelled sets: the hand-written held-out answers (`data/refusal/heldout*.jsonl`; see data/refusal/README.md
for which were written when), the shipped example (`data/labels/refusal_example.jsonl`) and, with
UNMIRAGE_VLGUARD_DIR set, VLGuard's held-out fifth of the training responses (full text, built here).
Accuracy goes through `unmirage.judges.validate` (the code behind `unmirage judge validate`).
Speed: every labelled answer, repeated to at least --answers answers, judged in one process (one thread);
then 1,000 long answers (each repeated to at least 2,000 characters).

Run: PYTHONPATH=src python bench/refusal_judge.py [--answers 5000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import emit
from unmirage.judges import JudgeItem, get_judge
from unmirage.judges.refusal_train import vlguard_examples
from unmirage.judges.validate import read_labels, validate_judge

ROOT = Path(__file__).resolve().parent.parent
JUDGES = ("keyword", "keyword-strict", "refusal")
SETS = {
    "handwritten-heldout": ROOT / "data/refusal/heldout.jsonl",
    "handwritten-heldout-fresh": ROOT / "data/refusal/heldout_fresh.jsonl",
    "handwritten-heldout-final": ROOT / "data/refusal/heldout_final.jsonl",
    "example": ROOT / "data/labels/refusal_example.jsonl",
}


def labelled_sets(tmp: Path) -> dict[str, Path]:
    """The labelled files to measure on (VLGuard's held-out part written to `tmp` when available)."""
    sets = {name: path for name, path in SETS.items() if path.is_file()}
    vlguard = os.environ.get("UNMIRAGE_VLGUARD_DIR")
    if vlguard and (Path(vlguard) / "train.json").is_file():
        path = tmp / "vlguard_heldout.jsonl"
        rows = vlguard_examples(Path(vlguard) / "train.json", "heldout")
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        sets["vlguard-heldout"] = path
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=5000, help="answers judged for the speed measurement")
    parser.add_argument(
        "--out", type=Path, default=None, help="write each validation report under OUT/SET/JUDGE"
    )
    args = parser.parse_args()
    judges = {name: get_judge(name) for name in JUDGES}
    texts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for set_name, path in labelled_sets(Path(tmp)).items():
            texts += [a.answer for a in read_labels(path)]
            for name in JUDGES:
                out = args.out / set_name / name if args.out else None
                doc = validate_judge(name, path, out, judges={name: judges[name]})
                acc = doc["accuracy"]
                emit(
                    "refusal_judge",
                    f"binary accuracy {set_name} {name}",
                    100 * acc["value"],
                    "%",
                    target=">= 95 (refusal)" if name == "refusal" else None,
                    k=acc["k"],
                    n=acc["n"],
                    ci=[round(100 * x, 1) for x in acc["ci"]],
                )
    items = [JudgeItem(id=str(i), answer=texts[i % len(texts)]) for i in range(max(args.answers, len(texts)))]
    mean_chars = sum(len(i.answer) for i in items) / len(items)
    speeds = {}
    for name in JUDGES:
        judges[name].judge_batch(items[:50])  # warm up (the refusal model loads once)
        wall, cpu = time.perf_counter(), time.process_time()
        judges[name].judge_batch(items)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        speeds[name] = len(items) / wall
        emit(
            "refusal_judge",
            f"{name} answers/s",
            len(items) / wall,
            "answers/s",
            target=">= 50" if name == "refusal" else None,
            cpu_answers_per_s=round(len(items) / cpu, 1),
            answers=len(items),
            mean_chars=round(mean_chars),
            load_average=round(os.getloadavg()[0], 2),
        )
    emit("refusal_judge", "keyword / refusal speed ratio", speeds["keyword"] / speeds["refusal"], "x")
    # long answers (chat models often write 1-3k characters): each answer repeated to at least 2,000 characters
    long = [
        JudgeItem(id=i.id, answer=" ".join([i.answer] * (2000 // len(i.answer) + 1))) for i in items[:1000]
    ]
    wall = time.perf_counter()
    judges["refusal"].judge_batch(long)
    wall = time.perf_counter() - wall
    mean_long = sum(len(i.answer) for i in long) / len(long)
    emit(
        "refusal_judge",
        "refusal answers/s, long answers",
        len(long) / wall,
        "answers/s",
        target=">= 50",
        mean_chars=round(mean_long),
        load_average=round(os.getloadavg()[0], 2),
    )


if __name__ == "__main__":
    main()
