"""Word splitting shared by the analyses and the attack builder.

A word is a whitespace-separated chunk, lower-cased, with punctuation stripped from both ends (inner
apostrophes, hyphens and slashes stay: "what's", "e-mail", "n/a"). Content words are the words that carry the
meaning of a request: everything except function words, auxiliaries, pronouns, question words and the
few instruction verbs an attack may swap for one another (please, describe, share, tell, explain, list,
provide, give).
"""

from __future__ import annotations

import string
from collections.abc import Iterable

_STRIP = string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026 \t\r\n"

_FUNCTION_WORDS_TEXT = """
    a an the this that these those there here it its it's itself i me my mine myself we us our ours you your yours
    yourself he him his she her hers they them their theirs one one's someone something anyone anything
    what what's which who whom whose where when why how whether if then than so as such
    is are was were be been being am do does did done doing have has had having
    can could would will shall should may might must wont won't can't cannot couldn't wouldn't shouldn't
    don't doesn't didn't isn't aren't wasn't weren't not no nor
    of in on at to for from by with about into onto over under between through during before after above below
    up down out off again further and or but also just only very too more most some any all each every both
    few other own same let let's like
    please kindly describe share tell explain list provide give
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())


def words(text: str) -> list[str]:
    """Lower-cased words of `text` with punctuation stripped from both ends; empty chunks are dropped."""
    out = []
    for chunk in text.split():
        word = chunk.strip(_STRIP).lower()
        if word:
            out.append(word)
    return out


def first_word(text: str) -> str | None:
    """The first word of `text` (see `words`), or None for a text without words."""
    found = words(text)
    return found[0] if found else None


def ngrams(text: str, n: int = 1, position: str = "first") -> list[str]:
    """The word n-grams of `text`: only the leading one (`position="first"`) or every one (`"any"`).

    With "any", each distinct n-gram appears once (the statistics count texts that contain a token).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    found = words(text)
    if len(found) < n:
        return []
    if position == "first":
        return [" ".join(found[:n])]
    if position != "any":
        raise ValueError(f"position must be 'first' or 'any', not {position!r}")
    seen: dict[str, None] = {}
    for i in range(len(found) - n + 1):
        seen.setdefault(" ".join(found[i : i + n]), None)
    return list(seen)


def content_words(text: str) -> list[str]:
    """The distinct content words of `text`, in order of first appearance."""
    seen: dict[str, None] = {}
    for word in words(text):
        if word not in FUNCTION_WORDS:
            seen.setdefault(word, None)
    return list(seen)


def _bases(word: str) -> set[str]:
    """The word and what it could be with one inflectional ending removed (implies -> imply, used -> use)."""
    out = {word}
    if word.endswith("'s"):
        word = word[:-2]
        out.add(word)
    for suffix, repl in (
        ("ies", "y"),
        ("ied", "y"),
        ("es", ""),
        ("s", ""),
        ("ed", ""),
        ("ed", "e"),
        ("d", ""),
    ):
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            out.add(word[: -len(suffix)] + repl)
    for repl in ("", "e"):
        if word.endswith("ing") and len(word) > 5:
            out.add(word[:-3] + repl)
    return out


def same_stem(a: str, b: str) -> bool:
    """Whether two words are the same word up to inflection or nominalisation.

    Equal, equal after removing one inflectional ending from either, or sharing a prefix of at least 5
    letters ("identify"/"identity", "describe"/"description", "analyze"/"analysis").
    """
    if a == b or _bases(a) & _bases(b):
        return True
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return common >= 5


def missing_content_words(original: str, rewrite: str, ignore: Iterable[str] = ()) -> list[str]:
    """The content words of `original` that `rewrite` does not keep (see `same_stem`)."""
    skip = {w.lower() for w in ignore}
    kept = words(rewrite)
    return [w for w in content_words(original) if w not in skip and not any(same_stem(w, k) for k in kept)]
