"""Spurious words of a safety data set: which tokens separate the two labels (unsafe/safe, refusal/compliant).

For every token the texts of each label that contain it are counted (with `position="first"`, the token is the
leading word or n-gram of the text). Two statistics rank the tokens:

Weighted log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008, "Fightin' Words"),
label A (positive: unsafe / refusal) against label B (negative: safe / compliant):

    delta_w = log((y_wA + a_w) / (n_A + a_0 - y_wA - a_w)) - log((y_wB + a_w) / (n_B + a_0 - y_wB - a_w))
    var_w   = 1 / (y_wA + a_w) + 1 / (y_wB + a_w)
    z_w     = delta_w / sqrt(var_w)

where y_wX is the count of token w under label X, n_X the total token count under X, and the prior
a_w = a_0 * (y_wA + y_wB) / (n_A + n_B) spreads a total mass a_0 (`prior_mass`, default n_A + n_B: the
pooled counts themselves) in proportion to the pooled frequency of w. z > 0: the token goes with label A.

Fisher's exact test (two-sided) on the 2x2 table [[y_wA, N_A - y_wA], [y_wB, N_B - y_wB]], N_X being the
number of texts under label X.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from unmirage.analysis.sources import SourceTurn, read_turns
from unmirage.config import StrictModel, setting
from unmirage.errors import UnmirageError
from unmirage.text.tokens import ngrams

LABEL_SOURCES = ("auto", "subset", "judge", "field")
POSITIVE_VALUES = frozenset(
    {"1", "true", "unsafe", "harmful", "refusal", "refused", "refuse", "toxic", "yes", "positive"}
)
NEGATIVE_VALUES = frozenset(
    {"0", "false", "safe", "unharmful", "harmless", "benign", "compliance", "compliant", "comply", "no"}
    | {"negative", "non-toxic"}
)

RefusalJudge = Callable[[Sequence[str]], list[bool]]
"""A judge for labelling: responses in, one flag per response out (True: a refusal)."""


@dataclass(frozen=True)
class LabelledText:
    """One text with its binary label (True: label A, e.g. unsafe or refusal)."""

    text: str
    positive: bool
    record_id: str = ""


@dataclass
class SpuriousResult:
    """The ranked token table and what it was computed from."""

    labels: tuple[str, str]
    n_texts: dict[str, int]
    n_tokens: dict[str, int]
    prior_mass: float
    tokens: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int, direction: str) -> list[dict[str, Any]]:
        """The `k` tokens with the largest z towards label A (`direction="positive"`) or label B."""
        if direction == "positive":
            return [t for t in self.tokens if t["z"] > 0][:k]
        return [t for t in reversed(self.tokens) if t["z"] < 0][:k]

    def to_json(self, top_k: int = 20) -> dict[str, Any]:
        """The content of `spurious.json`."""
        a, b = self.labels
        return {
            **self.settings,
            "labels": {"positive": a, "negative": b},
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "prior_mass": self.prior_mass,
            "formula": "Monroe et al. 2008 weighted log-odds (A vs B), informative Dirichlet prior "
            "a_w = prior_mass * pooled frequency; z = log_odds / sd; p = two-sided Fisher exact",
            f"top_{a}": [t["token"] for t in self.top(top_k, "positive")],
            f"top_{b}": [t["token"] for t in self.top(top_k, "negative")],
            "tokens": self.tokens,
        }


def weighted_log_odds(
    y_a: float, y_b: float, n_a: float, n_b: float, alpha_w: float, alpha0: float
) -> tuple[float, float]:
    """(log-odds ratio delta, z-score) of one token, label A against label B (formula in the module doc)."""
    if alpha_w <= 0 or alpha0 <= alpha_w:
        raise ValueError("need 0 < alpha_w < alpha0")
    odds_a = (y_a + alpha_w) / (n_a + alpha0 - y_a - alpha_w)
    odds_b = (y_b + alpha_w) / (n_b + alpha0 - y_b - alpha_w)
    delta = math.log(odds_a) - math.log(odds_b)
    variance = 1.0 / (y_a + alpha_w) + 1.0 / (y_b + alpha_w)
    return delta, delta / math.sqrt(variance)


def fisher_p(y_a: int, y_b: int, texts_a: int, texts_b: int) -> float:
    """Two-sided Fisher exact p-value of [[y_a, texts_a - y_a], [y_b, texts_b - y_b]]."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[y_a, texts_a - y_a], [y_b, texts_b - y_b]]).pvalue)


def token_table(
    texts: Sequence[LabelledText],
    *,
    ngram: int = 1,
    position: str = "first",
    prior_mass: float | None = None,
    min_count: int = 1,
    labels: tuple[str, str] = ("positive", "negative"),
) -> SpuriousResult:
    """Count tokens per label and rank them by z (most label-A first)."""
    count_a: Counter[str] = Counter()
    count_b: Counter[str] = Counter()
    texts_a = texts_b = 0
    for item in texts:
        tokens = ngrams(item.text, ngram, position)
        if item.positive:
            texts_a += 1
            count_a.update(tokens)
        else:
            texts_b += 1
            count_b.update(tokens)
    if texts_a == 0 or texts_b == 0:
        raise UnmirageError(
            f"need texts under both labels (got {texts_a} {labels[0]}, {texts_b} {labels[1]})"
        )
    n_a, n_b = sum(count_a.values()), sum(count_b.values())
    total = n_a + n_b
    if total == 0:
        raise UnmirageError("no tokens found in the texts")
    alpha0 = float(total if prior_mass is None else prior_mass)
    if alpha0 <= 0:
        raise UnmirageError("prior mass must be positive")
    a, b = labels
    rows = []
    for token in sorted(set(count_a) | set(count_b)):
        y_a, y_b = count_a[token], count_b[token]
        if y_a + y_b < min_count:
            continue
        alpha_w = alpha0 * (y_a + y_b) / total
        delta, z = weighted_log_odds(y_a, y_b, n_a, n_b, alpha_w, alpha0)
        rows.append(
            {
                "token": token,
                "counts": {a: y_a, b: y_b},
                "log_odds": delta,
                "z": z,
                "p": fisher_p(y_a, y_b, texts_a, texts_b),
            }
        )
    rows.sort(key=lambda r: (-r["z"], r["token"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return SpuriousResult(
        labels=labels,
        n_texts={a: texts_a, b: texts_b},
        n_tokens={a: n_a, b: n_b},
        prior_mass=alpha0,
        tokens=rows,
        settings={"ngram": ngram, "position": position, "min_count": min_count},
    )


def parse_label(value: Any, positive_values: Iterable[str] | None, where: dict[str, Any]) -> bool:
    """Map a label value to True (label A) / False; unknown values are errors unless positives are given."""
    text = str(value).strip().lower()
    if positive_values is not None:
        return text in {str(v).strip().lower() for v in positive_values}
    if text in POSITIVE_VALUES:
        return True
    if text in NEGATIVE_VALUES:
        return False
    raise UnmirageError(
        f"label value {value!r} is neither a known positive nor negative (add it to positive)", **where
    )


def label_turns(
    turns: Sequence[SourceTurn],
    *,
    text_field: str,
    label_by: str,
    judge: RefusalJudge | None = None,
    label_field: str = "label",
    positive_values: Iterable[str] | None = None,
    include_safe_unsafes: bool = False,
    path: str | os.PathLike = "<data>",
) -> tuple[list[LabelledText], tuple[str, str]]:
    """Turn data-set turns into labelled texts and the names of the two labels.

    label_by:
      `subset` (VLGuard): unsafe = instructions of unsafe images (plus the `unsafe_instruction` of safe images
      when `include_safe_unsafes`), safe = `safe_instruction` of safe images.
      `judge`: refusal / compliant, from `judge(response)`.
      `field`: the value of `label_field` of each row (generic data sets).
    """
    out: list[LabelledText] = []
    if label_by == "subset":
        names = ("unsafe", "safe")
    elif label_by == "judge":
        names = ("refusal", "compliant")
        if judge is None:
            raise UnmirageError("labelling by a judge needs a judge")
    elif label_by == "field":
        names = ("positive", "negative")
    else:
        raise UnmirageError(f"unknown label source '{label_by}' (choose from subset, judge, field)")
    verdicts: list[bool] = []
    if label_by == "judge":
        missing = next((n for n, t in enumerate(turns) if t.response is None), None)
        if missing is not None:
            where = {"file": path, "record": turns[missing].record_id or missing}
            raise UnmirageError("has no response to judge", field="response", **where)
        verdicts = [bool(v) for v in judge([str(t.response) for t in turns])]  # type: ignore[misc]
        if len(verdicts) != len(turns):
            raise UnmirageError(f"the judge returned {len(verdicts)} verdicts for {len(turns)} responses")
    for number, turn in enumerate(turns):
        where = {"file": path, "record": turn.record_id or number}
        text = turn.text(text_field)
        if text is None:
            raise UnmirageError("has no text in this field", field=text_field, **where)
        if label_by == "subset":
            if turn.kind not in ("safe_safe", "safe_unsafe", "unsafe"):
                raise UnmirageError("labelling by subset needs VLGuard data (use label_by judge or field)")
            if turn.kind == "safe_unsafe" and not include_safe_unsafes:
                continue
            positive = turn.kind != "safe_safe"
        elif label_by == "judge":
            positive = verdicts[number]
        else:
            if label_field not in turn.fields:
                raise UnmirageError("has no label", field=label_field, **where)
            positive = parse_label(turn.fields[label_field], positive_values, where)
        out.append(LabelledText(str(text), positive, turn.record_id))
    return out, names


INPUT_PANEL, LABELS_PANEL, TOKENS_PANEL = "Input", "Labels", "Tokens"
"""The help panels of `unmirage analyze spurious`'s options."""


class SpuriousSettings(StrictModel):
    """`unmirage analyze spurious`: which texts, how they are labelled, and which tokens are counted."""

    file: Path | None = setting(
        None,
        help="VLGuard JSON, LLaVA conversation JSON/JSONL, or JSONL rows (or use `benchmarks`).",
        panel=INPUT_PANEL,
        argument=True,
    )
    benchmarks: list[str] = setting(
        default_factory=list,
        help="Instead of FILE: a benchmark's prompts (repeatable; a name or a spec .yaml): attack cases are "
        "unsafe, refusal cases safe, every case as asked (no rewrite).",
        panel=INPUT_PANEL,
        flag="benchmark",
    )
    data_root: Path | None = setting(
        None,
        help="`benchmarks`: folder with one sub-folder per benchmark ($UNMIRAGE_DATA_DIR).",
        panel=INPUT_PANEL,
    )
    fmt: Literal["auto", "vlguard", "llava", "jsonl"] = setting(
        "auto", help="auto, vlguard, llava or jsonl.", panel=INPUT_PANEL, flag="format"
    )
    field: str = setting(
        "instruction", help="Text to tokenise: instruction, response, or a row field.", panel=INPUT_PANEL
    )
    label_by: str = setting(
        "auto",
        help="auto, subset (VLGuard safe/unsafe), field (a row's label), keyword, keyword-strict or refusal "
        "(a refusal judge).",
        panel=LABELS_PANEL,
    )
    label_field: str = setting(
        "label", help="The label field of generic rows (`label_by` field).", panel=LABELS_PANEL
    )
    positive: list[str] = setting(
        default_factory=list, help="Label values that mean unsafe/positive (repeatable).", panel=LABELS_PANEL
    )
    with_safe_unsafes: bool = setting(
        False, help="VLGuard: count the unsafe_instruction of safe images as unsafe too.", panel=LABELS_PANEL
    )
    position: Literal["first", "any"] = setting(
        "first", help="first: the leading n-gram only; any: every n-gram.", panel=TOKENS_PANEL
    )
    ngram: int = setting(1, ge=1, help="Tokens are n-grams of this many words.", panel=TOKENS_PANEL)
    top: int = setting(
        15, ge=1, help="Tokens per direction in the chart and the top lists.", panel=TOKENS_PANEL
    )
    prior_mass: float | None = setting(
        None, gt=0, help="Dirichlet prior mass a_0 (default: the total token count).", panel=TOKENS_PANEL
    )
    min_count: int = setting(1, ge=1, help="Leave out tokens seen fewer times in all.", panel=TOKENS_PANEL)

    @model_validator(mode="after")
    def _one_source(self) -> SpuriousSettings:
        if (self.file is None) == (not self.benchmarks):
            raise ValueError("give either a data file or benchmarks")
        return self


def analyze_file(settings: SpuriousSettings, *, judge: RefusalJudge | None = None) -> SpuriousResult:
    """Read `settings.file` and rank its tokens (see `label_turns` and `token_table`).

    `label_by="auto"`: `subset` for VLGuard files, `field` for generic rows, `judge` for LLaVA conversations;
    a local refusal judge's name (`keyword`, `refusal`, ...) labels by that judge, and so does `judge`.
    """
    from unmirage.judges import needs_backend, refusal_judges

    path = settings.file
    if path is None:
        raise UnmirageError("analyze_file needs settings.file (or use analyze_benchmarks)")
    label_by = settings.label_by
    if judge is None and label_by in [j for j in refusal_judges() if not needs_backend(j)]:
        from unmirage.analysis.triggers import refusal_judge

        judge, label_by = refusal_judge(label_by), "judge"
    fmt, turns = read_turns(path, settings.fmt)
    if label_by == "auto":
        label_by = {"vlguard": "subset", "llava": "judge"}.get(fmt, "field")
    texts, names = label_turns(
        turns,
        text_field=settings.field,
        label_by=label_by,
        judge=judge,
        label_field=settings.label_field,
        positive_values=settings.positive or None,
        include_safe_unsafes=settings.with_safe_unsafes,
        path=path,
    )
    result = token_table(texts, **_counting(settings), labels=names)
    result.settings = {
        "source": str(path),
        "format": fmt,
        "field": settings.field,
        "label_by": label_by,
        "include_safe_unsafes": settings.with_safe_unsafes if label_by == "subset" else None,
        **result.settings,
    }
    return result


def _counting(settings: SpuriousSettings) -> dict[str, Any]:
    """`token_table`'s keywords from the settings."""
    return {
        "ngram": settings.ngram,
        "position": settings.position,
        "prior_mass": settings.prior_mass,
        "min_count": settings.min_count,
    }


def run_spurious(
    settings: SpuriousSettings, out: str | os.PathLike, *, overwrite: bool = False
) -> tuple[SpuriousResult, Path, Path]:
    """Analyse `settings.file` or `settings.benchmarks`; write spurious.json, spurious.png and manifest.json
    into `out` (claimed first: a folder of other files, or of another analysis without `overwrite`, is
    refused). Returns the result and the table's and chart's paths."""
    from unmirage.outputs import claim_folder, file_identity
    from unmirage.runs import write_manifest

    if settings.benchmarks:
        result = analyze_benchmarks(settings.benchmarks, settings.data_root, **_counting(settings))
        inputs = [Path(p) for p in result.settings["inputs"]]
        read: dict[str, Any] = {"files": [file_identity(p) for p in inputs]}
    else:
        assert settings.file is not None  # the settings' validator
        result = analyze_file(settings)
        inputs = [settings.file]
        read = {"file": file_identity(settings.file)}
    identity = {**read, "settings": result.settings, "top": settings.top}
    claim_folder(out, command="analyze spurious", identity=identity, overwrite=overwrite, inputs=inputs)
    table, chart = write_report(result, out, settings.top)
    write_manifest(
        out,
        command="analyze spurious",
        identity=identity,
        config=result.settings,
        inputs=inputs,
        outputs=[table, chart],
    )
    return result, table, chart


def benchmark_texts(
    benchmarks: Sequence[str], data_root: str | os.PathLike | None
) -> tuple[list[LabelledText], list[dict[str, Any]]]:
    """The prompts of registered benchmarks (names or spec files) as labelled texts: every case without a
    transform, as the benchmark asks it; attack cases are unsafe (label A), refusal cases safe. A question
    in several cases of the same kind counts once. Also returns, per benchmark, the spec and data files
    read (for a run's identity)."""
    from unmirage.benchmarks import data_root as resolve_root
    from unmirage.benchmarks import load_case, resolve_benchmark

    root = resolve_root(data_root)
    if root is None:
        raise UnmirageError("give data_root DIR or set UNMIRAGE_DATA_DIR (one sub-folder per benchmark)")
    texts: list[LabelledText] = []
    seen: set[tuple[str, str, bool]] = set()
    sources = []
    for name in benchmarks:
        spec = resolve_benchmark(name, root)
        plain = [case for case, cs in spec.cases.items() if cs.transform is None]
        for case in plain:
            positive = spec.cases[case].kind == "attack"
            for prompt in load_case(spec, case, root, render=False).prompts:
                key = (f"{spec.name}/{prompt.id}#{prompt.shot}", prompt.question, positive)
                if key not in seen:
                    seen.add(key)
                    texts.append(LabelledText(prompt.question, positive, key[0]))
        sources.append({"spec": spec.source, "files": spec.paths(root), "cases": plain})
    return texts, sources


def analyze_benchmarks(
    benchmarks: Sequence[str],
    data_root: str | os.PathLike | None = None,
    *,
    ngram: int = 1,
    position: str = "first",
    prior_mass: float | None = None,
    min_count: int = 1,
) -> SpuriousResult:
    """Rank the tokens that separate the unsafe prompts (attack cases) from the safe ones (refusal cases)
    of one or more benchmarks (`benchmark_texts`); a benchmark of harmful questions alone (FigStep) needs
    one with safe prompts next to it."""
    texts, sources = benchmark_texts(benchmarks, data_root)
    for label, positive in (("unsafe (attack cases)", True), ("safe (refusal cases)", False)):
        if not any(t.positive == positive for t in texts):
            raise UnmirageError(
                f"{', '.join(benchmarks)}: no {label} prompts; add a benchmark that has them (e.g. xstest)"
            )
    result = token_table(
        texts,
        ngram=ngram,
        position=position,
        prior_mass=prior_mass,
        min_count=min_count,
        labels=("unsafe", "safe"),
    )
    result.settings = {
        "source": "benchmarks " + ", ".join(benchmarks),
        "format": "benchmark",
        "field": "question",
        "label_by": "case kind (attack: unsafe, refusal: safe)",
        "cases": {str(s["spec"]): s["cases"] for s in sources},
        "inputs": [str(p) for s in sources for p in (s["spec"], *s["files"].values())],
        **result.settings,
    }
    return result


def plot_top_tokens(result: SpuriousResult, path: str | os.PathLike, k: int = 15) -> None:
    """Diverging horizontal bar chart of the `k` strongest tokens each way (z-score; label A to the right)."""
    from unmirage.analysis.plotting import pyplot, save_png

    plt = pyplot()
    a, b = result.labels
    rows = list(reversed(result.top(k, "negative"))) + list(reversed(result.top(k, "positive")))
    rows.sort(key=lambda r: r["z"])
    height = max(3.0, 0.28 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    zs = [r["z"] for r in rows]
    colors = ["#c0392b" if z > 0 else "#2e86c1" for z in zs]
    ax.barh(range(len(rows)), zs, color=colors)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['token']} ({r['counts'][a]}/{r['counts'][b]})" for r in rows], fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"z of weighted log-odds   <- {b}   |   {a} ->")
    ax.set_title(f"Tokens that separate {a} from {b} (counts {a}/{b})", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def write_report(result: SpuriousResult, out_dir: str | os.PathLike, top_k: int = 15) -> tuple[Path, Path]:
    """Write `spurious.json` and `spurious.png` into `out_dir`; return their paths."""
    from unmirage.runs import atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "spurious.json"
    chart = out / "spurious.png"
    atomic_write_json(table, result.to_json(top_k))
    plot_top_tokens(result, chart, top_k)
    return table, chart
