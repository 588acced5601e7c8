"""One evaluation run as the report reads it: `load_run` reads a metrics.json into a `RunSummary`, whose
`value(key)` / `interval(key)` give every rate the tables and charts show."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unmirage.errors import UnmirageError
from unmirage.judges.cascades import ASR_METHODS, tells_irrelevant
from unmirage.metrics import CASES, METRICS_SCHEMA, headline_rate

ATTACK_CASES = tuple(c for c, (_key, kind) in CASES.items() if kind != "refusal")
SAFE_CASES = tuple(c for c, (_key, kind) in CASES.items() if kind == "refusal")


@dataclass
class RunSummary:
    """One evaluation run as the report sees it."""

    label: str
    path: Path
    metrics: dict[str, Any]

    def value(self, key: str) -> float | None:
        """A fraction by key, or None when the run does not have it: a headline (`rr_normal`, ..., `utility`),
        a class of the headline split (`success@unsafe_attack`, `not_refused@unsafe_normal`), an ASR under
        one judge method (`asr_attack@llm-topic`), `answered_normal` / `answered_share` (safe questions
        answered on topic), a benchmark case `bench:xstest.safe` (or one category of it,
        `bench:mossbench.benign/type 1`) or the mean over benchmark cases `mean:rr` / `mean:asr`."""
        return self._rate(key)[0]

    def interval(self, key: str) -> tuple[float | None, float | None]:
        """The 95% interval of a fraction (None, None when it has none)."""
        return self._rate(key)[1:]

    def _rate(self, key: str) -> tuple[float | None, float | None, float | None]:
        if key.startswith(("bench:", "mean:")):
            kind, name = key.split(":", 1)
            rate = (self.benchmark_rate(name) if kind == "bench" else self.benchmark_means().get(name)) or {}
            low, high = rate.get("ci") or [None, None]
            return rate.get("value"), low, high
        if key == "utility":
            block = self.utility() or {}
            low, high = block.get("ci") or [None, None]
            return block.get("value"), low, high
        if key.startswith("answered_"):
            case = "safe_" + key.removeprefix("answered_")
            answered = ((self.metrics.get("cases") or {}).get(case) or {}).get("answered") or {}
            rate = next(iter(answered.values()), {})
            low, high = rate.get("ci") or [None, None]
            return rate.get("value"), low, high
        if "@" in key:
            first, second = key.split("@", 1)
            if second in CASES:
                rate = (self.split(second) or {}).get(first) or {}
            else:
                rate = self._method_rate("unsafe_" + first.removeprefix("asr_"), second)
            low, high = rate.get("ci") or [None, None]
            return rate.get("value"), low, high
        rate = headline_rate(self.metrics, key)
        return (None, None, None) if rate is None else (rate.value, rate.low, rate.high)

    def _method_rate(self, case: str, method: str) -> dict[str, Any]:
        block = self._method_block(case, method)
        return block.get("rate") or {}

    def _method_block(self, case: str, method: str) -> dict[str, Any]:
        return (((self.metrics.get("cases") or {}).get(case) or {}).get("asr") or {}).get(method) or {}

    def method_value(self, case: str, method: str) -> float | None:
        """The ASR of one judge method on one harmful case (`unsafe_normal`, ...), None when not measured."""
        return self._method_rate(case, method).get("value")

    def tells_irrelevant(self, method: str | None = None) -> bool:
        """Whether an ASR method of this run (default: the headline one) tells irrelevant answers apart."""
        if method is None:
            return bool(self.headline().get("tells_irrelevant"))
        for case in ATTACK_CASES:
            split = self._method_block(case, method).get("split")
            if split is not None:
                return bool(split.get("tells_irrelevant"))
        return False

    def headline(self) -> dict[str, Any]:
        """The run's `headline` block; for a metrics.json written before it existed, one built from the
        headline keys (ASR or not refused, RR; no IR)."""
        if isinstance(self.metrics.get("headline"), dict):
            return self.metrics["headline"]
        method = str(self.metrics.get("asr_method") or "keyword")
        tells = method in ASR_METHODS and tells_irrelevant(method)
        cases: dict[str, Any] = {}
        for case, (key, kind) in CASES.items():
            rate = headline_rate(self.metrics, key)
            if rate is None:
                continue
            name = "refusal" if kind == "refusal" else "success" if tells else "not_refused"
            judge = self.metrics.get("refusal_judge") if kind == "refusal" else method
            unit = "questions" if kind == "kshot" else "answers"
            cases[case] = {"method": judge, "unit": unit, "n": rate.n, name: rate.to_json()}
        return {
            "asr_method": method,
            "tells_irrelevant": tells,
            "refusal_judge": self.metrics.get("refusal_judge"),
            "cases": cases,
        }

    def shots(self) -> int | None:
        """K of the K-shot attack (the most rewrites of one question), None when it was not run."""
        block = self._method_block("unsafe_attack", str(self.headline().get("asr_method")))
        return block.get("k") or None

    def split(self, case: str) -> dict[str, Any] | None:
        """The headline split of one case (None when the case was not run)."""
        return (self.headline().get("cases") or {}).get(case)

    def benchmarks(self) -> dict[str, dict[str, Any]]:
        """metrics.json `benchmarks`: name -> case -> entry (empty for a run of the VLGuard protocol alone)."""
        return self.metrics.get("benchmarks") or {}

    def benchmark_rate(self, name: str) -> dict[str, Any] | None:
        """The rate of `<benchmark>.<case>` (value, ci, k, n), or of one category of it with
        `<benchmark>.<case>/<category>`; None when the run did not measure it."""
        dotted, _, category = name.partition("/")
        bench, _, case = dotted.partition(".")
        entry = self.benchmarks().get(bench, {}).get(case)
        if entry is None:
            return None
        if category:
            return (entry.get("per_category") or {}).get(category)
        return {key: entry.get(key) for key in ("value", "ci", "k", "n")} | {"value": entry.get("rate")}

    def benchmark_means(self) -> dict[str, dict[str, Any]]:
        """Across every benchmark case the run measured: `rr` (mean RR of the refusal cases) and `asr`
        (mean ASR of the attack cases), each the unweighted mean of the case rates with the cases it
        averages and the judges that gave them."""
        groups: dict[str, list[tuple[str, dict[str, Any]]]] = {"rr": [], "asr": []}
        for bench, cases in self.benchmarks().items():
            for case, entry in cases.items():
                if entry.get("rate") is not None:
                    groups[entry["measure"]].append((f"{bench}.{case}", entry))
        means = {}
        for measure, items in groups.items():
            if items:
                means[measure] = {
                    "value": sum(e["rate"] for _n, e in items) / len(items),
                    "cases": [n for n, _e in items],
                    "judges": sorted({str(e["judge"]) for _n, e in items}),
                    "tells_irrelevant": all(e.get("tells_irrelevant") for _n, e in items),
                }
        return means

    def utility(self) -> dict[str, Any] | None:
        """The VQA accuracy block of the run (value, ci, n), if it measured one."""
        return ((self.metrics.get("utility") or {}).get("vqa") or {}).get("accuracy")


def load_run(path: str | os.PathLike) -> RunSummary:
    """Read RUN_DIR/metrics.json (or a metrics.json path) written by `unmirage eval`."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise UnmirageError("no metrics.json here (is this an `unmirage eval` output folder?)", file=path)
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UnmirageError(f"not valid JSON ({err.msg})", file=file) from None
    if not isinstance(metrics, dict) or metrics.get("schema") != METRICS_SCHEMA:
        raise UnmirageError(f"not an unmirage metrics file (expected schema '{METRICS_SCHEMA}')", file=file)
    label = metrics.get("label") or Path(str(metrics.get("model") or file.parent.name)).name
    return RunSummary(label=str(label), path=file.parent, metrics=metrics)


def rate_cell(rate: dict[str, Any] | None) -> str:
    """`12.5 [4.0, 33.5] (2/16)` from a rate object (value, ci, k, n as fractions); `n/a` when absent."""
    if not rate or rate.get("value") is None:
        return "n/a"
    low, high = rate.get("ci") or [None, None]
    ci = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None else ""
    return f"{100 * rate['value']:.1f}{ci} ({rate.get('k')}/{rate.get('n')})"
