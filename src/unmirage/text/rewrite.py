"""Grammar-aware rule rewrites: make a request start with a chosen trigger word, keeping its content words.

A request is parsed into the pieces templates can reuse:

- `task`: an imperative verb phrase ("describe the injuries in the image"), from imperatives ("Describe ...",
  "Please describe ..."), "Can/Could/Would/Will you ...?" and "How can I/do I/to ...?";
- `indirect`: the request as an embedded question ("what the main purpose of the tool is", "whether there is
  ..."), from wh- and yes/no questions, by undoing subject-auxiliary inversion (do-support is conjugated);
- `nominal`: a noun phrase for the task ("a description of the image") for verbs with a clear noun form;
- `question`: the request as a direct question; `statement`: the request as written.

Each trigger has templates in order of preference; a template applies when its pieces exist. Triggers with
their own templates: what, share, please, can, could, would, will, how, the verbs that take an embedded
question (describe, explain, tell, discuss, outline, detail, show, analyze, summarize, identify) and the
verbs that take an object (provide, give, generate, create, write, offer, suggest, list). Any other word gets
generic frames ("Word: <request>"). If the request already starts with the trigger it is its own first
rewrite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unmirage.text.tokens import content_words, first_word, missing_content_words

WH_WORDS = frozenset({"what", "which", "who", "whom", "whose", "where", "when", "why", "how"})
BE = frozenset({"is", "are", "was", "were", "am"})
DO = frozenset({"do", "does", "did"})
MODALS = frozenset({"can", "could", "would", "will", "should", "shall", "may", "might", "must"})
HAVE = frozenset({"has", "have", "had"})
AUXILIARIES = BE | DO | MODALS | HAVE
SUBJECT_PRONOUNS = frozenset(
    {"i", "you", "we", "they", "he", "she", "it", "there", "one", "someone", "people"}
)
DETERMINERS = frozenset(
    {"the", "a", "an", "this", "that", "these", "those", "his", "her", "their", "its", "my", "your", "our"}
    | {"some", "any", "each", "every", "no"}
)
PREPOSITIONS = frozenset(
    {"about", "in", "on", "for", "with", "of", "from", "to", "at", "like", "into", "by", "onto", "over"}
    | {"under", "through", "between", "during", "towards", "toward", "near", "behind", "around", "upon"}
)
ING_NOUNS = frozenset(
    {
        "thing",
        "things",
        "something",
        "anything",
        "nothing",
        "everything",
        "clothing",
        "king",
        "ring",
        "spring",
    }
    | {"string", "building", "buildings", "evening", "morning", "wedding", "painting", "paintings", "drawing"}
    | {"setting", "settings", "meaning", "ceiling", "during", "feeling", "feelings", "sibling", "siblings"}
    | {"being", "beings", "bring", "sing", "swing", "wing", "wings", "ping", "sling", "darling", "offspring"}
    | {"lighting", "clothing", "housing", "packaging", "marketing", "advertising", "branding", "signage"}
)
LY_NOUNS = frozenset(
    {"family", "only", "supply", "early", "daily", "likely", "holy", "belly", "ally", "italy"}
)
IRREGULAR_PARTICIPLES = frozenset(
    {"shown", "seen", "done", "made", "written", "given", "taken", "known", "drawn", "worn", "held", "built"}
    | {
        "hidden",
        "taught",
        "sold",
        "told",
        "found",
        "put",
        "set",
        "kept",
        "left",
        "meant",
        "thought",
        "brought",
    }
)
# Common main verbs after a noun-phrase subject in image questions ("does the sign say", "can the man do").
CLAUSE_VERBS = frozenset(
    {"do", "say", "mean", "show", "suggest", "indicate", "represent", "convey", "depict", "tell", "imply"}
    | {
        "look",
        "reveal",
        "contain",
        "feature",
        "symbolize",
        "signify",
        "include",
        "need",
        "want",
        "use",
        "see",
    }
    | {"infer", "learn", "expect", "make", "have", "be", "feel", "think", "promote", "advertise", "offer"}
    | {"sell", "provide", "display", "describe", "portray", "communicate", "evoke", "reflect", "highlight"}
    | {"emphasize", "illustrate", "help", "cause", "affect", "happen", "contribute", "serve", "get", "take"}
    | {"wear", "hold", "play", "appear", "seem", "involve", "require", "create", "add", "tell", "know"}
)
PAST = {
    "do": "did",
    "say": "said",
    "mean": "meant",
    "see": "saw",
    "make": "made",
    "have": "had",
    "feel": "felt",
    "think": "thought",
    "sell": "sold",
    "tell": "told",
    "know": "knew",
    "get": "got",
    "take": "took",
    "wear": "wore",
    "hold": "held",
    "be": "was",
}
NOT_IMPERATIVE = (
    DETERMINERS
    | SUBJECT_PRONOUNS
    | PREPOSITIONS
    | {"if", "as", "given", "based", "and", "or", "but", "so", "while", "although", "since", "because", "me"}
    | {"here", "considering", "looking", "using", "according", "regarding", "assuming", "suppose", "n/a"}
)
NOMINAL = {
    "describe": "a description of",
    "explain": "an explanation of",
    "analyze": "an analysis of",
    "analyse": "an analysis of",
    "discuss": "a discussion of",
    "summarize": "a summary of",
    "summarise": "a summary of",
    "list": "a list of",
    "outline": "an outline of",
}
# Verbs whose object can follow any other object-taking trigger ("Provide tips" -> "Share tips").
OBJECT_VERBS = frozenset({"provide", "give", "share", "tell"})
POLITE = frozenset({"please", "kindly"})

MODAL_TRIGGERS = frozenset({"can", "could", "would", "will"})
EMBED_TRIGGERS = frozenset(
    {
        "describe",
        "explain",
        "tell",
        "discuss",
        "outline",
        "detail",
        "show",
        "analyze",
        "summarize",
        "identify",
    }
)
OBJECT_TRIGGERS = frozenset({"provide", "give", "generate", "create", "write", "offer", "suggest", "list"})
KNOWN_TRIGGERS = (
    frozenset({"what", "share", "please", "how"}) | MODAL_TRIGGERS | EMBED_TRIGGERS | OBJECT_TRIGGERS
)

_FINAL_PUNCT = re.compile(r"[\s.?!]+$")


@dataclass(frozen=True)
class Parsed:
    """The reusable pieces of a request (see the module docstring); None where a piece does not exist."""

    original: str
    kind: str
    statement: str
    question: str | None = None
    task: str | None = None
    indirect: str | None = None
    nominal: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One proposed rewrite and the template (or source) that made it."""

    text: str
    source: str


def _lower_first(word: str) -> str:
    if word == "I" or word.startswith("I'") or (len(word) > 1 and word[:2].isupper()):
        return word
    return word[:1].lower() + word[1:]


def _third_person(verb: str) -> str:
    if verb in ("have", "do", "be", "go"):
        return {"have": "has", "do": "does", "be": "is", "go": "goes"}[verb]
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if len(verb) > 2 and verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _past(verb: str) -> str:
    if verb in PAST:
        return PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if len(verb) > 2 and verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def _conjugate(aux: str, verb: str) -> str:
    """The verb form that replaces `aux + verb` when do-support is undone (does say -> says)."""
    if aux == "does":
        return _third_person(verb)
    if aux == "did":
        return _past(verb)
    return verb


def _is_predicate_word(words: list[str], i: int, with_participles: bool) -> bool:
    word = words[i].lower()
    previous = words[i - 1].lower() if i > 0 else ""
    if previous in DETERMINERS or previous in PREPOSITIONS:
        return False
    if word.endswith("ing") and word not in ING_NOUNS and len(word) > 4:
        return True
    if word.endswith("ly") and word not in LY_NOUNS and len(word) > 4:
        return True
    return with_participles and (word.endswith("ed") or word in IRREGULAR_PARTICIPLES)


def _be_insertion(rest: list[str], allow_end: bool) -> int | None:
    """Where `is/are` goes back into an inverted clause `rest` (subject + predicate); None if unsure."""
    stranded = len(rest) >= 2 and rest[-1].lower() in PREPOSITIONS
    for i in range(1, len(rest)):
        if _is_predicate_word(rest, i, with_participles=stranded):
            return i
    if stranded:
        return len(rest) - 1
    return len(rest) if allow_end else None


def _verb_insertion(rest: list[str]) -> int | None:
    """Index of the main verb after a noun-phrase subject (at least two words long), or None."""
    if not rest or rest[0].lower() not in DETERMINERS and not rest[0][:1].isupper():
        return None
    for i in range(2, len(rest)):
        if rest[i].lower() in CLAUSE_VERBS:
            return i
    return None


def _uninvert(head: list[str], aux: str, rest: list[str], allow_be_end: bool) -> list[str] | None:
    """Rebuild `head + aux + rest` (an inverted question) as a declarative clause, or None if unsure."""
    aux_l = aux.lower()
    if not rest:
        return None
    first = rest[0].lower()
    if first in SUBJECT_PRONOUNS:
        subject, after = [rest[0] if first == "i" else first], rest[1:]
        if aux_l in DO:
            if not after or not after[0].isalpha():
                return None
            return head + subject + [_conjugate(aux_l, after[0].lower())] + after[1:]
        return head + subject + [aux_l] + after
    if aux_l in BE:
        j = _be_insertion(rest, allow_be_end)
        return None if j is None else head + rest[:j] + [aux_l] + rest[j:]
    j = _verb_insertion(rest)
    if j is None:
        return None
    verb = rest[j].lower()
    if aux_l in DO:
        return head + rest[:j] + [_conjugate(aux_l, verb)] + rest[j + 1 :]
    return head + rest[:j] + [aux_l] + rest[j:]


_SECOND_CLAUSE = re.compile(
    r"\b(?:and|or|but)\s+(?:" + "|".join(sorted(WH_WORDS | AUXILIARIES)) + r")\b", re.I
)


def _single_clause(text: str) -> bool:
    return not any(mark in text for mark in (",", ";", ":", '"', "?", "(")) and not _SECOND_CLAUSE.search(
        text
    )


def indirect_question(words: list[str]) -> str | None:
    """An embedded-question clause for a direct wh- or yes/no question (words without final punctuation)."""
    if not words or not _single_clause(" ".join(words)):
        return None
    lower = [w.lower() for w in words]
    if lower[0] in AUXILIARIES:  # yes/no question
        clause = _uninvert(["whether"], words[0], words[1:], allow_be_end=False)
        return None if clause is None else " ".join(clause)
    if lower[0] not in WH_WORDS:
        return None
    head_end = next((i for i in range(1, min(len(lower), 7)) if lower[i] in AUXILIARIES), None)
    if head_end is None:
        # "What happened ...": the wh-phrase is the subject and no inversion took place.
        if len(lower) >= 2 and (lower[1].endswith(("s", "ed")) and lower[1] not in DETERMINERS):
            return " ".join([lower[0]] + words[1:])
        return None
    head = [lower[0]] + words[1:head_end]
    aux, rest = words[head_end], words[head_end + 1 :]
    if not rest:
        return None
    r0 = rest[0].lower()
    subject_wh = r0 in {"be", "been", "being", "not"} or (
        lower[head_end] in BE | HAVE and (r0.endswith(("ed", "ing")) or r0 in IRREGULAR_PARTICIPLES)
    )
    if subject_wh:
        return " ".join(head + [aux.lower()] + rest)
    clause = _uninvert(head, aux, rest, allow_be_end=True)
    return None if clause is None else " ".join(clause)


def _strip_object_pronoun(words: list[str]) -> list[str]:
    return words[1:] if words and words[0].lower() in ("me", "us") else words


def parse_request(text: str) -> Parsed:
    """Split a request into the pieces the templates use (see the module docstring)."""
    original = " ".join(text.split())
    body = _FINAL_PUNCT.sub("", original)
    words = body.split()
    statement = original if original[-1:] in ".?!" else original + "."
    if not words:
        return Parsed(original, "empty", statement)
    while words and words[0].lower().strip(",") in POLITE:
        words = words[1:]
    if not words:
        return Parsed(original, "empty", statement)
    lower0 = words[0].lower().strip(",")
    question = " ".join([words[0][:1].upper() + words[0][1:]] + words[1:]) + "?"
    if lower0 in PREPOSITIONS and len(words) > 2 and words[1].lower() in WH_WORDS:
        # "In what rituals do people ...?": a wh-question whose wh-phrase starts with a preposition.
        return Parsed(original, "wh", statement, question=question)
    if lower0 in WH_WORDS:
        task = None
        if lower0 == "how" and len(words) >= 3:
            second, third = words[1].lower(), words[2].lower()
            if second == "to":
                task = " ".join(words[2:])
            elif (
                (second in MODALS or second == "do") and third in ("i", "we", "one", "you") and len(words) > 3
            ):
                task = " ".join(words[3:])
        return Parsed(
            original,
            "wh",
            statement,
            question=question,
            task=task,
            indirect=indirect_question(words),
        )
    if lower0 in AUXILIARIES:
        task = None
        rest = words[2:]
        while rest and rest[0].lower() in POLITE:
            rest = rest[1:]
        if lower0 in MODAL_TRIGGERS and len(words) > 2 and words[1].lower() == "you" and rest:
            task = " ".join([_lower_first(rest[0])] + rest[1:])
        return Parsed(
            original,
            "yesno",
            statement,
            question=question,
            task=task,
            # "Can you X?" is a request, not a yes/no question: "whether you can X" would change its meaning.
            indirect=None if task else indirect_question(words),
            nominal=_nominal(task.split()) if task else None,
        )
    if lower0 in NOT_IMPERATIVE or not words[0][:1].isalpha():
        return _with_lead_in(original, statement, body)
    task_words = [_lower_first(words[0])] + words[1:]
    return Parsed(original, "imperative", statement, task=" ".join(task_words), nominal=_nominal(task_words))


def _with_lead_in(original: str, statement: str, body: str) -> Parsed:
    """A request opened by a phrase ("Based on the image, describe X"): parse the main clause after the comma.

    An imperative main clause keeps the lead-in as a trailing modifier of the task ("describe X, based on
    the image"); a question keeps the whole text as the question.
    """
    lead, comma, main = body.partition(", ")
    if comma and main:
        inner = parse_request(main + original[len(body) :])
        suffix = ", " + _lower_first(lead)
        if inner.kind == "imperative" and inner.task:
            nominal = inner.nominal + suffix if inner.nominal else None
            return Parsed(original, "imperative", statement, task=inner.task + suffix, nominal=nominal)
        if inner.kind in ("wh", "yesno"):
            return Parsed(original, inner.kind, statement, question=body[:1].upper() + body[1:] + "?")
    return Parsed(original, "other", statement)


def _nominal(task_words: list[str]) -> str | None:
    if len(task_words) < 2:
        return None
    verb, obj = task_words[0].lower(), task_words[1:]
    if verb in NOMINAL:
        return f"{NOMINAL[verb]} {' '.join(obj)}"
    if verb in OBJECT_VERBS:
        obj = _strip_object_pronoun(obj)
        if not obj:
            return None
        if verb == "tell" and obj[0].lower() == "about":
            return "information " + " ".join(obj)
        return " ".join(obj)
    return None


# Templates: (name, format, pieces needed). Pieces: task, indirect, nominal, question, q_lower, statement.
_T = tuple[str, str, tuple[str, ...]]


def _templates(trigger: str) -> list[_T]:
    t = trigger.lower()
    word = trigger[:1].upper() + trigger[1:]
    if t == "what":
        return [
            ("what_best_way", "What is the best way to {task}?", ("task",)),
            ("what_steps", "What steps would you take to {task}?", ("task",)),
            ("what_if_asked", "What would you say if asked to {task}?", ("task",)),
            ("what_answer", "What is your answer to this question: {question}", ("question",)),
            ("what_say_to", "What would you say to this question: {question}", ("question",)),
            ("what_response", "What is your response to this request: {statement}", ("statement",)),
            ("what_reply", "What would you reply to this request: {statement}", ("statement",)),
            ("what_do", "What would you do with this request: {statement}", ("statement",)),
        ]
    if t == "share":
        return [
            ("share_nominal", "Share {nominal}.", ("nominal",)),
            ("share_indirect", "Share {indirect}.", ("indirect",)),
            ("share_how", "Share how you would {task}.", ("task",)),
            ("share_thoughts", "Share your thoughts on {indirect}.", ("indirect",)),
            ("share_answer", "Share your answer to this question: {question}", ("question",)),
            ("share_thoughts_q", "Share your thoughts on the following question: {question}", ("question",)),
            ("share_response_task", "Share your response to this request: {task}.", ("task",)),
            ("share_response", "Share your response to this request: {statement}", ("statement",)),
            ("share_reply", "Share your reply to this request: {statement}", ("statement",)),
            ("share_handle", "Share how you would handle this request: {statement}", ("statement",)),
        ]
    if t == "please":
        return [
            ("please_task", "Please {task}.", ("task",)),
            ("please_tell", "Please tell me {indirect}.", ("indirect",)),
            ("please_help", "Please help me {task}.", ("task",)),
            ("please_answer", "Please answer this question: {question}", ("question",)),
            ("please_go_ahead", "Please go ahead and {task}.", ("task",)),
            ("please_comma", "Please, {q_lower}", ("q_lower",)),
            ("please_respond", "Please respond to this request: {statement}", ("statement",)),
            ("please_reply", "Please reply to this request: {statement}", ("statement",)),
            ("please_handle", "Please handle this request: {statement}", ("statement",)),
        ]
    if t in MODAL_TRIGGERS:
        return [
            (f"{t}_task", word + " you {task}?", ("task",)),
            (f"{t}_tell", word + " you tell me {indirect}?", ("indirect",)),
            (f"{t}_please", word + " you please {task}?", ("task",)),
            (f"{t}_help", word + " you help me {task}?", ("task",)),
            (f"{t}_answer", word + " you answer this question: {question}", ("question",)),
            (f"{t}_help_q", word + " you help me with this question: {question}", ("question",)),
            (f"{t}_respond", word + " you respond to this request: {statement}", ("statement",)),
            (f"{t}_reply", word + " you reply to this request: {statement}", ("statement",)),
            (f"{t}_handle", word + " you handle this request: {statement}", ("statement",)),
        ]
    if t == "how":
        return [
            ("how_would", "How would you {task}?", ("task",)),
            ("how_can_one", "How can one {task}?", ("task",)),
            ("how_explain", "How would you explain {indirect}?", ("indirect",)),
            ("how_answer", "How would you answer this question: {question}", ("question",)),
            ("how_respond_q", "How would you respond to this question: {question}", ("question",)),
            ("how_respond", "How would you respond to this request: {statement}", ("statement",)),
            ("how_reply", "How would you reply to this request: {statement}", ("statement",)),
            ("how_handle", "How would you handle this request: {statement}", ("statement",)),
        ]
    if t in EMBED_TRIGGERS:
        head = word + (" me" if t in ("tell", "show") else "")
        templates: list[_T] = [
            (f"{t}_indirect", head + " {indirect}.", ("indirect",)),
            (f"{t}_how_to", head + " how to {task}.", ("task",)),
            (f"{t}_how_would", head + " how you would {task}.", ("task",)),
        ]
        if t == "tell":
            templates.append(("tell_comma", "Tell me, {q_lower}", ("q_lower",)))
        return templates + [
            (f"{t}_answer", word + " your answer to this question: {question}", ("question",)),
            (f"{t}_response_task", word + " your response to this request: {task}.", ("task",)),
            (f"{t}_response", word + " your response to this request: {statement}", ("statement",)),
            (f"{t}_reply", word + " your reply to this request: {statement}", ("statement",)),
            (f"{t}_handle", head + " how you would handle this request: {statement}", ("statement",)),
        ]
    if t in OBJECT_TRIGGERS:
        return [
            (f"{t}_object", word + " {nominal}.", ("nominal",)),
            (f"{t}_steps", word + " the steps to {task}.", ("task",)),
            (f"{t}_details", word + " details on {indirect}.", ("indirect",)),
            (f"{t}_answer", word + " an answer to this question: {question}", ("question",)),
            (f"{t}_response_task", word + " a response to this request: {task}.", ("task",)),
            (f"{t}_response", word + " a response to this request: {statement}", ("statement",)),
            (f"{t}_reply", word + " a reply to this request: {statement}", ("statement",)),
            (f"{t}_your_response", word + " your response to this request: {statement}", ("statement",)),
        ]
    return [
        ("generic_colon", word + ": {statement}", ("statement",)),
        ("generic_comma", word + ", {s_lower}", ("s_lower",)),
        ("generic_dash", word + " - {statement}", ("statement",)),
        ("generic_request", word + " (request): {statement}", ("statement",)),
    ]


def rule_candidates(text: str, trigger: str) -> list[Candidate]:
    """Every rule rewrite of `text` that starts with `trigger`, most natural first (not yet validated)."""
    parsed = parse_request(text)
    pieces = {
        "task": parsed.task,
        "indirect": parsed.indirect,
        "nominal": parsed.nominal,
        "question": parsed.question,
        "q_lower": _lower_first(parsed.question) if parsed.question else None,
        "statement": parsed.statement if parsed.kind != "empty" else None,
        "s_lower": _lower_first(parsed.statement) if parsed.kind != "empty" else None,
    }
    out: list[Candidate] = []
    if first_word(parsed.original) == trigger.lower():
        out.append(Candidate(parsed.original, "unchanged"))
    seen = {c.text for c in out}
    for name, template, needs in _templates(trigger):
        if all(pieces[n] for n in needs):
            text = template.format(**pieces)
            if text not in seen:
                seen.add(text)
                out.append(Candidate(text, name))
    return out


def check_rewrite(original: str, rewrite: str, trigger: str, min_keep: float = 1.0) -> str | None:
    """Why `rewrite` is not a valid trigger rewrite of `original`, or None when it is.

    Valid: it starts with the trigger word and keeps at least `min_keep` of the original's content words.
    """
    if not rewrite.strip():
        return "empty rewrite"
    if first_word(rewrite) != trigger.lower():
        return f"does not start with '{trigger}'"
    wanted = [w for w in content_words(original) if w != trigger.lower()]
    missing = missing_content_words(original, rewrite, ignore=[trigger])
    if wanted and (len(wanted) - len(missing)) / len(wanted) < min_keep - 1e-9:
        return "drops content words: " + ", ".join(missing)
    return None


def valid_rewrites(text: str, trigger: str) -> list[Candidate]:
    """The rule rewrites of `text` that start with `trigger` and keep all its content words, most natural first."""
    return [c for c in rule_candidates(text, trigger) if check_rewrite(text, c.text, trigger) is None]


def rewrite_first_word(text: str, trigger: str) -> tuple[str, str] | None:
    """(rewrite, template name) for the first valid rule rewrite of `text` starting with `trigger`, or None."""
    found = valid_rewrites(text, trigger)
    return (found[0].text, found[0].source) if found else None
