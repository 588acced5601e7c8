"""Forget/retain sets for unlearning, built from a VLGuard training file.

* forget.json: every unsafe-image record -> (image, instruction, harmful answer); the answers are mined ones
  (`--harmful`) or, without it, the data set's own responses (refusals; the manifest says which).
* retain.json: every safe-image record -> (image, safe_instruction, its response); the unsafe_instruction
  pairs of safe images are left out.
* retain_mixed.json (with a general data set): the retain set plus records drawn at random from the general
  set up to `mix_to` items, then shuffled; the reference semantics, reproduced exactly: a `random.Random(seed)`
  draws `random.sample(general, min(mix_to - len(retain), len(general)))`, then shuffles retain + drawn.
* forget_rmu.json: forget.json with the answer appended to the question turn (question + newline + answer);
  the gpt turn keeps the answer.
* form-balanced sets (`rewrite_words`, not in the reference): for each word, every forget and retain question
  is also added rewritten to start with that word (a valid rule rewrite from `unmirage.text.rewrite`: the first,
  most natural one, or with `rewrite_pick="random"` one drawn per question with the seed; the same answer; id
  `ID#word`). Questions that already start with the word, or that no rule can
  rewrite, are not duplicated. Both sets get every word, so a question's first word no longer tells forget
  from retain: unlearning cannot take the form as a shortcut (VLGuard's unsafe questions are mostly
  imperatives, its safe ones mostly "What" questions).

All files are LLaVA conversation files (`unmirage.data.conversations`); `load_examples` reads them back as
(id, image, question, answer) examples. Everything is validated before anything is written, each file is
written atomically, and manifest.json (counts, seed, sha256 of inputs and outputs) is written last.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from unmirage.data.conversations import GPT, HUMAN, Conversation, Turn, read_conversations, single_turn
from unmirage.data.mine import load_harmful_answers
from unmirage.data.vlguard import Sample, VLGuardFile, load_vlguard, view
from unmirage.errors import UnmirageError
from unmirage.runs import atomic_write_json, write_manifest
from unmirage.text.rewrite import valid_rewrites
from unmirage.text.tokens import first_word

PathLike = str | os.PathLike

FORGET = "forget.json"
RETAIN = "retain.json"
RETAIN_MIXED = "retain_mixed.json"
FORGET_RMU = "forget_rmu.json"
MANIFEST = "manifest.json"
DEFAULT_MIX_TO = 2000


@dataclass(frozen=True)
class UnlearnSets:
    """The forget/retain sets in memory, before they are written."""

    forget: list[Conversation]
    retain: list[Conversation]
    retain_mixed: list[Conversation] | None
    forget_rmu: list[Conversation]
    answers_source: str
    mix_added: int
    duplicate_ids: list[str]
    rewrite_words: list[str]
    rewrites: dict[str, dict[str, int]]


@dataclass(frozen=True)
class UnlearnBuild:
    """What `build_unlearn` wrote: file paths by name, counts and the manifest."""

    out: Path
    files: dict[str, Path]
    counts: dict[str, int]
    answers_source: str
    manifest: Path


def forget_samples(data: VLGuardFile, subset: str) -> list[Sample]:
    """The forget questions of `data`: the view `subset` (`FORGET_SUBSETS`), a record whose id repeats an
    earlier one left out (the official train.json repeats one safe record; its answers are keyed by id)."""
    if subset not in FORGET_SUBSETS:
        raise UnmirageError(f"subset must be one of {', '.join(FORGET_SUBSETS)}, got {subset!r}")
    seen: set[str] = set()
    out = []
    for sample in view(data, subset):
        if sample.id not in seen:
            seen.add(sample.id)
            out.append(sample)
    return out


def _paths(value: PathLike | Sequence[PathLike] | None) -> list[PathLike]:
    """One path, several, or none, as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str | os.PathLike) else list(value)


def _one_or_list(items: Sequence[Any]) -> Any:
    """How the manifest records a choice: the item when there is one, else the list (as strings)."""
    strings = [str(item) for item in items]
    return strings[0] if len(strings) == 1 else strings


def _subsets(value: str | Sequence[str]) -> list[str]:
    """One forget subset or several, as a list without repeats, each one of `FORGET_SUBSETS`."""
    subsets = list(dict.fromkeys([value] if isinstance(value, str) else value))
    if not subsets:
        raise UnmirageError(f"give at least one forget subset ({', '.join(FORGET_SUBSETS)})")
    return subsets


def forget_answers(samples: Sequence[Sample], harmful: PathLike | Sequence[PathLike] | None) -> list[str]:
    """The answer of each forget sample: mined (matched by image path, id checked) or the data set's own.

    `harmful` may be several answers files (e.g. one per forget subset); an image may have an answer in one."""
    files = _paths(harmful)
    if not files:
        return [s.response for s in samples]
    answers = {}
    source: dict[str, PathLike] = {}
    for path in files:
        for image, entry in load_harmful_answers(path).items():
            if image in answers:
                raise UnmirageError(
                    f"image {image!r} also has an answer in {source[image]}", file=path, field="answers"
                )
            answers[image], source[image] = entry, path
    result = []
    for s in samples:
        entry = answers.get(s.image)
        if entry is None:
            raise UnmirageError(
                f"no harmful answer for this forget record's image {s.image!r}",
                file=files[0] if len(files) == 1 else ", ".join(map(str, files)),
                record=f"id {s.id}",
            )
        if entry.id is not None and entry.id != s.id:
            raise UnmirageError(
                f"answer for image {s.image!r} is for id {entry.id}, the training record is {s.id}",
                file=source[s.image],
                record=f"id {s.id}",
            )
        result.append(entry.answer)
    return result


def rmu_form(conversation: Conversation) -> Conversation:
    """The RMU forget form: every gpt answer appended (after a newline) to the first human turn."""
    answers = "\n".join(t.value for t in conversation.turns if t.role == GPT)
    turns = list(conversation.turns)
    first = next(i for i, t in enumerate(turns) if t.role == HUMAN)
    turns[first] = Turn(HUMAN, f"{turns[first].value}\n{answers}")
    return Conversation(id=conversation.id, image=conversation.image, turns=tuple(turns))


REWRITE_PICKS = ("first", "random")
REWRITE_SIDES = ("both", "forget", "retain")
FORGET_SUBSETS = ("unsafes", "safe_unsafes")
"""Where the forget questions come from: the unsafe-image records (the reference), or the unsafe instructions
asked about safe images (requests that are harmful as text, with no image needed)."""


class Asked(Protocol):
    """What `with_rewrites` reads of a question: a `data.vlguard.Sample` or a `data.conversations.Example`."""

    @property
    def id(self) -> str: ...
    @property
    def image(self) -> str | None: ...
    @property
    def question(self) -> str: ...


def with_rewrites(
    pairs: Sequence[tuple[Asked, str]], words: Sequence[str], pick: str = "first", seed: int = 42
) -> tuple[list[Conversation], dict[str, int]]:
    """Each (question, answer) as a conversation, then per word the rewrites of its question that start with it
    (the first valid rule rewrite, or with `pick="random"` one drawn by `random.Random(seed)`).

    Also returns, per word, how many questions were added, already started with it or had no valid rewrite."""
    rng = random.Random(seed)
    out = [single_turn(s.id, s.image, s.question, a) for s, a in pairs]
    stats: dict[str, int] = {}
    for word in words:
        added = unchanged = unrewritable = 0
        for sample, answer in pairs:
            if first_word(sample.question) == word.lower():
                unchanged += 1
                continue
            found = valid_rewrites(sample.question, word)
            if not found:
                unrewritable += 1
                continue
            chosen = found[0] if pick == "first" else rng.choice(found)
            out.append(single_turn(f"{sample.id}#{word.lower()}", sample.image, chosen.text, answer))
            added += 1
        stats |= {
            f"{word}_added": added,
            f"{word}_unchanged": unchanged,
            f"{word}_unrewritable": unrewritable,
        }
    return out, stats


def mix_retain(
    retain: Sequence[Conversation], general: Sequence[Conversation], mix_to: int, seed: int
) -> tuple[list[Conversation], int]:
    """Retain + random general records up to `mix_to` items, shuffled (reference semantics, seeded)."""
    rng = random.Random(seed)
    needed = max(0, mix_to - len(retain))
    drawn = rng.sample(list(general), min(needed, len(general)))
    combined = list(retain) + drawn
    rng.shuffle(combined)
    return combined, len(drawn)


def make_unlearn_sets(
    vlguard: str | os.PathLike,
    *,
    harmful: PathLike | Sequence[PathLike] | None = None,
    mix: str | os.PathLike | None = None,
    mix_to: int | None = None,
    seed: int = 42,
    rewrite_words: Sequence[str] = (),
    rewrite_pick: str = "first",
    rewrite_side: str = "both",
    forget_subset: str | Sequence[str] = "unsafes",
) -> UnlearnSets:
    """Build the sets in memory (all validation happens here); `rewrite_words` balances the question forms of
    the sets `rewrite_side` names (both, or only the forget or the retain set); `forget_subset` is the view
    the forget questions come from (`FORGET_SUBSETS`), or several, in order; `harmful` one answers file or
    several (e.g. one mined per subset)."""
    words = _rewrite_words(rewrite_words)
    if rewrite_pick not in REWRITE_PICKS:
        raise UnmirageError(f"rewrite_pick must be one of {', '.join(REWRITE_PICKS)}, got {rewrite_pick!r}")
    if rewrite_side not in REWRITE_SIDES:
        raise UnmirageError(f"rewrite_side must be one of {', '.join(REWRITE_SIDES)}, got {rewrite_side!r}")
    forget_words = words if rewrite_side in ("both", "forget") else []
    retain_words = words if rewrite_side in ("both", "retain") else []
    if mix_to is not None and mix is None:
        raise UnmirageError("mix_to needs mix (the general instruction data to draw from)")
    if mix_to is not None and mix_to < 1:
        raise UnmirageError(f"mix_to must be positive, got {mix_to}")
    data = load_vlguard(vlguard, kind="plain", allow_duplicate_ids=True)
    forget_questions = [q for subset in _subsets(forget_subset) for q in forget_samples(data, subset)]
    retain_samples = view(data, "safe_safes")
    answers = forget_answers(forget_questions, harmful)
    forget_pairs = list(zip(forget_questions, answers, strict=True))
    forget, forget_stats = with_rewrites(forget_pairs, forget_words, rewrite_pick, seed)
    retain, retain_stats = with_rewrites(
        [(s, s.response) for s in retain_samples], retain_words, rewrite_pick, seed
    )
    retain_mixed = None
    added = 0
    if mix is not None:
        general = read_conversations(mix)
        retain_mixed, added = mix_retain(retain, general, mix_to or DEFAULT_MIX_TO, seed)
    return UnlearnSets(
        forget=forget,
        retain=retain,
        retain_mixed=retain_mixed,
        forget_rmu=[rmu_form(c) for c in forget],
        answers_source="mined" if harmful is not None else "dataset",
        mix_added=added,
        duplicate_ids=data.duplicate_ids(),
        rewrite_words=words,
        rewrites={"forget": forget_stats, "retain": retain_stats} if words else {},
    )


def _rewrite_words(words: Sequence[str]) -> list[str]:
    """Rewrite words, capitalised as a question starts, each once; a word must be one alphabetic token."""
    out: list[str] = []
    for word in words:
        word = word.strip()
        if not word.isalpha():
            raise UnmirageError(f"each of rewrite_words must be a single word of letters, got {word!r}")
        word = word[:1].upper() + word[1:]
        if word not in out:
            out.append(word)
    return out


def build_unlearn(
    vlguard: str | os.PathLike,
    out: str | os.PathLike,
    *,
    harmful: PathLike | Sequence[PathLike] | None = None,
    mix: str | os.PathLike | None = None,
    mix_to: int | None = None,
    seed: int = 42,
    rewrite_words: Sequence[str] = (),
    rewrite_pick: str = "first",
    rewrite_side: str = "both",
    forget_subset: str | Sequence[str] = "unsafes",
    overwrite: bool = False,
) -> UnlearnBuild:
    """Build and write forget.json, retain.json, [retain_mixed.json], forget_rmu.json and manifest.json.

    An existing non-empty `out` is refused unless it is an unmirage output and `overwrite` is given."""
    from unmirage.outputs import claim_folder, file_identity

    sets = make_unlearn_sets(
        vlguard,
        harmful=harmful,
        mix=mix,
        mix_to=mix_to,
        seed=seed,
        rewrite_words=rewrite_words,
        rewrite_pick=rewrite_pick,
        rewrite_side=rewrite_side,
        forget_subset=forget_subset,
    )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UnmirageError("output exists and is not a folder", file=out)
    harmful_files = _paths(harmful)
    inputs = [vlguard, *harmful_files, *_paths(mix)]
    identity = {"inputs": [file_identity(p) for p in inputs], "seed": seed, "words": list(rewrite_words)}
    if rewrite_side != "both":
        identity["side"] = rewrite_side
    subsets = _subsets(forget_subset)
    if subsets != ["unsafes"]:
        identity["forget_subset"] = _one_or_list(subsets)
    claim_folder(
        out, command="data build-unlearn", identity=identity, resume=False, overwrite=overwrite, inputs=inputs
    )
    contents: dict[str, list[Conversation]] = {FORGET: sets.forget, RETAIN: sets.retain}
    if sets.retain_mixed is not None:
        contents[RETAIN_MIXED] = sets.retain_mixed
    contents[FORGET_RMU] = sets.forget_rmu
    files = {}
    for name, conversations in contents.items():
        files[name] = out / name
        atomic_write_json(files[name], [c.to_json() for c in conversations])
    counts = {name.removesuffix(".json"): len(conversations) for name, conversations in contents.items()}
    config: dict[str, Any] = {
        "vlguard": str(vlguard),
        "harmful": _one_or_list(harmful_files) if harmful_files else None,
        "mix": str(mix) if mix is not None else None,
        "mix_to": (mix_to or DEFAULT_MIX_TO) if mix is not None else None,
        "seed": seed,
        "rewrite_words": sets.rewrite_words,
        "rewrite_pick": rewrite_pick,
        "rewrite_side": rewrite_side,
        "forget_subset": _one_or_list(subsets),
    }
    manifest = write_manifest(
        out,
        name=MANIFEST,
        command="data build-unlearn",
        identity=identity,
        config=config,
        inputs=inputs,
        outputs=list(files.values()),
        seed=seed,
        counts=counts,
        format="llava-conversations",
        forget_answers=sets.answers_source,
        forget_answers_note=(
            "forget answers are harmful answers mined by `unmirage data mine-harmful`"
            if sets.answers_source == "mined"
            else "forget answers are the data set's own responses (refusals), not harmful answers"
        ),
        mix_added=sets.mix_added,
        rewrites=sets.rewrites,
        source_duplicate_ids=sets.duplicate_ids,
    )
    return UnlearnBuild(
        out=out, files=files, counts=counts, answers_source=sets.answers_source, manifest=manifest
    )
