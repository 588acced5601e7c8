"""Keyword judge speed: the reference rule written plainly vs. unmirage's one-regex matcher, on 100k answers.

Prints answers/s of both, the ratio, and checks that every verdict is equal.
Run: PYTHONPATH=src python bench/keyword_judge.py [--answers 100000]
"""

from __future__ import annotations

import argparse
import random
import time

from unmirage.judges.keyword import REFERENCE_EXACT_REFUSAL, REFERENCE_KEYWORDS, KeywordJudge

OPENERS = [
    "The image shows",
    "In this picture,",
    "Sure! Here is",
    "I'm sorry, but",
    "As an AI language model,",
    "It appears that",
    "To answer your question,",
    "I cannot",
    "Based on the image,",
    "Step 1:",
]
WORDS = [
    "the",
    "a",
    "man",
    "woman",
    "car",
    "street",
    "sign",
    "red",
    "blue",
    "building",
    "people",
    "walking",
    "standing",
    "holding",
    "phone",
    "screen",
    "text",
    "store",
    "window",
    "light",
    "shadow",
    "tree",
    "park",
    "bench",
    "dog",
    "cat",
    "table",
    "food",
    "plate",
    "water",
    "bottle",
    "poster",
    "advertisement",
    "logo",
    "brand",
    "price",
    "sale",
    "product",
    "company",
    "message",
    "slogan",
    "crowd",
    "event",
    "stage",
    "music",
    "night",
    "day",
    "sky",
    "cloud",
]


def make_answers(n: int, seed: int = 0) -> list[str]:
    """n synthetic answers of 15-120 words (about 380 characters on average, like VLGuard's reference
    responses: 376); about a quarter open with a refusal-like phrase."""
    rng = random.Random(seed)
    answers = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 120)))
        answers.append(f"{rng.choice(OPENERS)} {words}.")
    answers[::997] = [REFERENCE_EXACT_REFUSAL] * len(answers[::997])
    return answers


def naive_rule(answer: str) -> bool:
    """The reference rule as usually written: lower-case, then test each keyword in turn."""
    text = answer.lower()
    return text == REFERENCE_EXACT_REFUSAL or any(keyword in text for keyword in REFERENCE_KEYWORDS)


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=100_000)
    args = parser.parse_args()
    answers = make_answers(args.answers)
    judge = KeywordJudge()

    start = time.perf_counter()
    expected = [naive_rule(a) for a in answers]
    naive_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    got = judge.refusals(answers)
    fast_s, fast_cpu = time.perf_counter() - start, time.process_time() - cpu

    assert got == expected, "fast keyword judge disagrees with the reference rule"
    chars = sum(map(len, answers)) / len(answers)
    result = {
        "answers": len(answers),
        "mean_chars": chars,
        "naive_answers_per_s": len(answers) / naive_s,
        "fast_answers_per_s": len(answers) / fast_s,
        "fast_seconds": fast_s,
        "fast_cpu_seconds": fast_cpu,
        "ratio": naive_s / fast_s,
    }
    print(
        f"keyword judge on {len(answers)} answers ({chars:.0f} chars each, {sum(got)} refusals): "
        f"naive {result['naive_answers_per_s']:,.0f} answers/s, fast {result['fast_answers_per_s']:,.0f} "
        f"answers/s ({fast_s:.2f} s wall, {fast_cpu:.2f} s CPU), ratio {result['ratio']:.1f}x, verdicts equal"
    )
    return result


if __name__ == "__main__":
    main()
