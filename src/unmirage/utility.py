"""Utility: VQA accuracy on a user-supplied VQA file (multiple choice, ScienceQA-IMG style, or short answers,
VQAv2 style). File format: docs/metrics.md ("Utility").

Multiple choice: the chosen letter is parsed from the answer (a lone letter, "(B)", "Answer: B", "the answer is
B", or the text of one choice); an answer with no recognisable choice is wrong and counted as `unparsed`.
Short answers: the VQAv2 soft accuracy. The answer and each human answer are normalised (lower case,
punctuation, number words to digits, articles dropped, common contractions restored); for each of the human
answers, min(1, matches among the other humans / 3); the item's score is the mean over the humans (the official
leave-one-out average; with 10 humans it equals min(1, #matching humans / 3) except for 1-3 matches, where it
gives 0.3, 0.6, 0.9 instead of 0.33, 0.67, 1.0).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unmirage.errors import UnmirageError
from unmirage.metrics import Bootstrap

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class VQAItem:
    """One VQA question: multiple choice (`choices` + `answer` index) or short answer (`answers`)."""

    id: str
    question: str
    image: str | None = None
    choices: tuple[str, ...] | None = None
    answer: int | None = None
    answers: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        return "multiple_choice" if self.choices is not None else "short_answer"

    def prompt(self) -> str:
        """The question as asked: choices listed as `A. ...` lines and the answer-format instruction."""
        if self.choices is not None:
            options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(self.choices))
            return f"{self.question}\n{options}\n{MC_INSTRUCTION}"
        return f"{self.question}\n{SHORT_INSTRUCTION}"


def _read_rows(path: Path) -> list[Any]:
    if not path.is_file():
        raise UnmirageError("VQA file not found", file=path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else data.get("questions") if isinstance(data, dict) else None
    except json.JSONDecodeError:
        from unmirage.runs import read_jsonl

        rows = read_jsonl(path)
    if not isinstance(rows, list) or not rows:
        raise UnmirageError("a VQA file is a non-empty JSON list (or JSON lines) of questions", file=path)
    return rows


def _answer_index(raw: Any, n: int, *, file: Path, record: str) -> int:
    if isinstance(raw, bool):
        raise UnmirageError(
            "'answer' must be a 0-based index or a letter", file=file, record=record, field="answer"
        )
    if isinstance(raw, int):
        index = raw
    elif isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in LETTERS:
        index = LETTERS.index(raw.strip().upper())
    else:
        raise UnmirageError(
            "'answer' must be a 0-based index or a letter", file=file, record=record, field="answer"
        )
    if not 0 <= index < n:
        raise UnmirageError(
            f"'answer' {raw!r} is not one of the {n} choices", file=file, record=record, field="answer"
        )
    return index


def load_vqa(path: str | os.PathLike) -> list[VQAItem]:
    """Read a VQA file; every problem is a one-line error naming the record and field."""
    path = Path(path)
    items: list[VQAItem] = []
    seen: set[str] = set()
    for number, row in enumerate(_read_rows(path), 1):
        where = f"{number}"
        if not isinstance(row, dict):
            raise UnmirageError("each question must be a JSON object", file=path, record=where)
        if not isinstance(row.get("id"), str | int) or isinstance(row.get("id"), bool):
            raise UnmirageError("needs an 'id' (text or integer)", file=path, record=where, field="id")
        qid = str(row["id"])
        where = f"{number} (id {qid})"
        if qid in seen:
            raise UnmirageError("duplicate id", file=path, record=where, field="id")
        seen.add(qid)
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise UnmirageError("needs a non-empty 'question'", file=path, record=where, field="question")
        image = row.get("image")
        if image is not None and not isinstance(image, str):
            raise UnmirageError("'image' must be a path", file=path, record=where, field="image")
        choices, answers = row.get("choices"), row.get("answers")
        if (choices is None) == (answers is None):
            raise UnmirageError(
                "give either 'choices' + 'answer' (multiple choice) or 'answers' (short answer)",
                file=path,
                record=where,
            )
        if choices is not None:
            if (
                not isinstance(choices, list)
                or not 2 <= len(choices) <= 26
                or not all(isinstance(c, str) for c in choices)
            ):
                raise UnmirageError(
                    "'choices' must be a list of 2 to 26 texts", file=path, record=where, field="choices"
                )
            index = _answer_index(row.get("answer"), len(choices), file=path, record=where)
            items.append(
                VQAItem(id=qid, question=question, image=image, choices=tuple(choices), answer=index)
            )
        else:
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise UnmirageError(
                    "'answers' must be a non-empty list of texts (the human answers)",
                    file=path,
                    record=where,
                    field="answers",
                )
            items.append(VQAItem(id=qid, question=question, image=image, answers=tuple(answers)))
    return items


# ----- multiple choice ------------------------------------------------------------------------------------------

# "B", "(B)", "B.", "B) ...", "B: ...", "(B) ..." (a capital "A " alone is the article, not a choice)
_LONE_LETTER = re.compile(r"^(?:\(?([A-Z])\)?[.:,]?$|\(([A-Z])\)|([A-Z])[.:)](?:\s|$))")
_ANSWER_IS = re.compile(r"(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*\(?([A-Z])\b(?![a-z'])")


def parse_choice(answer: str, choices: Sequence[str]) -> int | None:
    """The index of the choice an answer picks, or None."""
    text = answer.strip()
    n = len(choices)
    match = _LONE_LETTER.match(text)
    if match:
        letter = next(g for g in match.groups() if g)
        if LETTERS.index(letter) < n:
            return LETTERS.index(letter)
    match = _ANSWER_IS.search(text)
    if match and LETTERS.index(match.group(1)) < n:
        return LETTERS.index(match.group(1))
    lowered = text.lower().rstrip(".")
    hits = [i for i, c in enumerate(choices) if c.strip().lower() and lowered.startswith(c.strip().lower())]
    if len(hits) >= 1:
        return max(hits, key=lambda i: len(choices[i]))  # the longest choice the answer starts with
    return None


# ----- short answers (VQAv2) ----------------------------------------------------------------------------------

_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "im": "i'm",
    "isnt": "isn't",
    "itll": "it'll",
    "its": "it's",
    "ive": "i've",
    "shes": "she's",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "theres": "there's",
    "theyre": "they're",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "youre": "you're",
}
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!*#%^&$~'"
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalise_vqa(text: str) -> str:
    """VQAv2 answer normalisation: lower case, punctuation, number words, articles, contractions."""
    text = " ".join(text.replace("\n", " ").replace("\t", " ").lower().split())
    text = _COMMA_NUMBER.sub(r"\1\3", text)
    for p in _PUNCTUATION:
        text = text.replace(p, "" if p == "'" else " ")
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_soft_accuracy(answer: str, humans: Sequence[str]) -> float:
    """VQAv2 accuracy of one answer: the mean over humans of min(1, matches among the other humans / 3)."""
    pred = normalise_vqa(answer)
    gts = [normalise_vqa(h) for h in humans]
    if len(gts) == 1:
        return float(pred == gts[0])
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        scores.append(min(1.0, sum(g == pred for g in others) / 3))
    return sum(scores) / len(scores)


# ----- scoring ----------------------------------------------------------------------------------------------------


def mean_interval(values: Sequence[float], name: str, boot: Bootstrap) -> dict[str, Any]:
    """Mean of per-item scores with a seeded percentile bootstrap interval (items resampled)."""
    import zlib

    data = np.asarray(values, dtype=float)
    n = int(data.size)
    if n == 0:
        return {"value": None, "ci": None, "n": 0}
    rng = np.random.default_rng([boot.seed, zlib.crc32(name.encode("utf-8"))])
    means = np.empty(boot.samples)
    step = max(1, 2_000_000 // n)
    for start in range(0, boot.samples, step):
        rows = min(step, boot.samples - start)
        means[start : start + rows] = data[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    tail = (1 - boot.confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"value": float(data.mean()), "ci": [float(low), float(high)], "n": n}


def score_vqa(
    items: Sequence[VQAItem], answers: dict[str, str], *, boot: Bootstrap = Bootstrap(), name: str = "vqa"
) -> dict[str, Any]:
    """Accuracy of `answers` (id -> answer text) on `items`, overall and per kind, plus per-item scores."""
    missing = [item.id for item in items if item.id not in answers]
    if missing:
        raise UnmirageError(f"{len(missing)} VQA questions have no answer (first: {missing[0]})")
    per_item = []
    for item in items:
        answer = answers[item.id]
        if item.choices is not None:
            chosen = parse_choice(answer, item.choices)
            per_item.append(
                {
                    "id": item.id,
                    "kind": item.kind,
                    "score": float(chosen == item.answer),
                    "chosen": chosen,
                    "unparsed": chosen is None,
                }
            )
        else:
            per_item.append(
                {"id": item.id, "kind": item.kind, "score": vqa_soft_accuracy(answer, item.answers or ())}
            )
    result: dict[str, Any] = {"accuracy": mean_interval([p["score"] for p in per_item], name, boot)}
    for kind in ("multiple_choice", "short_answer"):
        scores = [p["score"] for p in per_item if p["kind"] == kind]
        if scores:
            result[kind] = mean_interval(scores, f"{name}/{kind}", boot)
    result["unparsed"] = sum(bool(p.get("unparsed")) for p in per_item)
    result["items"] = per_item
    return result
