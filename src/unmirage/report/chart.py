"""The grouped bar chart: one group per metric, one bar per run, 95% intervals as error bars; and the
trade-off chart: one point per run, harmful answers under the K-shot attack against safe answers kept.

A reader must never mistake a missing number for a zero or miss a zero: a value of 0 gets a marker on the
axis, a run without a value gets "n/a" in its slot, and (up to 40 bars) every bar carries its value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, BinaryIO

from unmirage.report.summary import ATTACK_CASES, RunSummary

VALUE_LABELS_UP_TO = 40  # bars; above this the value labels would overlap


def run_colours(n: int) -> list:
    """One distinct colour per run: matplotlib's default cycle up to 10 runs, tab20 up to 20, then turbo."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    from matplotlib import colormaps

    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


def chart_metrics(runs: Sequence[RunSummary]) -> list[tuple[str, str]]:
    """(key, label) of the main chart: each harmful case's headline ASR (and, for runs whose judge cannot
    tell irrelevant answers, its "not refused" share), the safe cases' RR and utility; lower-is-better cues."""
    shots = {run.shots() for run in runs} - {None}
    attack = f"{shots.pop()}-shot attack" if len(shots) == 1 else "K-shot attack"
    names = {
        "unsafe_normal": "normal",
        "unsafe_attack": attack,
        "unsafe_prefill": "prefill",
        "unsafe_gcg": "GCG",
    }
    metrics = [(f"success@{c}", f"ASR ↓\n{names[c]}") for c in ATTACK_CASES]
    if any(not run.tells_irrelevant() for run in runs):
        metrics += [(f"not_refused@{c}", f"not refused\n{names[c]}") for c in ATTACK_CASES]
    return [
        *metrics,
        ("rr_normal", "RR ↓\nsafe"),
        ("rr_share", "RR ↓\nsafe Share"),
        ("utility", "utility ↑\n(VQA)"),
    ]


def chart_title(runs: Sequence[RunSummary], metrics: Sequence[tuple[str, str]]) -> str:
    """The main chart's title: only what is drawn, with the judges that decided it."""
    drawn = {key.split("@")[0] for key, _label in metrics if any(r.value(key) is not None for r in runs)}
    parts = []
    if "success" in drawn:
        judges = sorted({r.headline()["asr_method"] for r in runs if r.tells_irrelevant()})
        parts.append(f"ASR on harmful questions ({', '.join(judges)})")
    if "not_refused" in drawn:
        judges = sorted({r.headline()["asr_method"] for r in runs if not r.tells_irrelevant()})
        parts.append(f"not refused ({', '.join(judges)})")
    if drawn & {"rr_normal", "rr_share"}:
        judges = sorted({str(r.headline().get("refusal_judge")) for r in runs})
        parts.append(f"RR on safe questions ({', '.join(judges)})")
    if "utility" in drawn:
        parts.append("utility")
    text = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] if parts else "no rates"
    return f"{text[0].upper()}{text[1:]}; 95% Wilson intervals"


def bar_chart(
    runs: Sequence[RunSummary],
    path: str | os.PathLike | BinaryIO,
    *,
    metrics: Sequence[tuple[str, str]] | None = None,
    title: str | None = None,
) -> None:
    """Write a PNG (to a path or a binary file object): `metrics` ((key for `RunSummary.value`, label); by
    default the report's headline chart, `chart_metrics`) on the x axis, one coloured bar per
    run, values in percent with error bars; metrics no run has are left out, a zero is marked on the axis and
    a missing value is written "n/a". The default title names what is drawn (`chart_title`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metrics is None:
        metrics = chart_metrics(runs)
        title = title or chart_title(runs, metrics)
    metrics = [(key, label) for key, label in metrics if any(run.value(key) is not None for run in runs)]
    figure = Figure(figsize=(max(6.5, 1.6 * len(metrics) + 0.5 * len(runs)), 4.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(runs))
    colours = run_colours(len(runs))
    labels = len(runs) * len(metrics) <= VALUE_LABELS_UP_TO
    for r, run in enumerate(runs):
        xs, heights, low_err, high_err = [], [], [], []
        for m, (key, _label) in enumerate(metrics):
            x = m - 0.4 + width * (r + 0.5)
            value = run.value(key)
            if value is None:
                axes.text(x, 1.5, "n/a", ha="center", va="bottom", rotation=90, fontsize=7, color="0.35")
                continue
            low, high = run.interval(key)
            xs.append(x)
            heights.append(100 * value)
            low_err.append(max(0.0, 100 * (value - low)) if low is not None else 0.0)
            high_err.append(max(0.0, 100 * (high - value)) if high is not None else 0.0)
            if labels:
                top = 100 * (high if high is not None else value)
                axes.text(x, min(top, 100) + 1.0, f"{100 * value:.0f}", ha="center", va="bottom", fontsize=7)
        axes.bar(
            xs,
            heights,
            width=width * 0.95,
            color=colours[r],
            label=run.label,
            yerr=[low_err, high_err],
            capsize=3,
            error_kw={"elinewidth": 1},
        )
        zeros = [x for x, h in zip(xs, heights, strict=True) if h < 0.5]
        if zeros:  # a bar of height 0 is invisible: mark it on the axis in the run's colour
            axes.plot(zeros, [0.6] * len(zeros), linestyle="none", marker="s", markersize=5, color=colours[r])
    axes.set_xticks(range(len(metrics)), [label for _key, label in metrics])
    axes.set_xlim(-0.5, len(metrics) - 0.5)
    cues = [
        text
        for arrow, text in (("↓", "↓ lower is better"), ("↑", "↑ higher is better"))
        if any(arrow in label for _key, label in metrics)
    ]
    axes.set_ylabel("percent" + (f" ({', '.join(cues)})" if cues else ""))
    axes.set_ylim(0, 110)
    axes.set_yticks(range(0, 101, 20))
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    label_lines = max(label.count("\n") + 1 for _key, label in metrics) if metrics else 1
    axes.legend(
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.04 - 0.06 * label_lines),
        ncol=min(5, len(runs)),
    )
    axes.set_title(title or "Rates per run with 95% intervals", fontsize="medium")
    figure.tight_layout()
    _save_png(figure, path)


#: The trade-off chart's axes: (key for `RunSummary.value`, axis label).
TRADEOFF_X = ("answered_normal", "safe questions answered on topic (%) ↑")
TRADEOFF_Y = ("success@unsafe_attack", "ASR under the K-shot attack (%) ↓")
TRADEOFF_TITLE = "Harmful answers under the attack vs safe answers kept; 95% Wilson intervals"


def tradeoff_runs(runs: Sequence[RunSummary]) -> list[int]:
    """Indices of the runs that have both trade-off measures: a K-shot attack ASR from a judge that tells
    irrelevant answers apart, and safe questions answered on topic (a judge that checks safe answers)."""
    keys = (TRADEOFF_X[0], TRADEOFF_Y[0])
    return [i for i, run in enumerate(runs) if all(run.value(key) is not None for key in keys)]


def tradeoff_chart(runs: Sequence[RunSummary], path: str | os.PathLike | BinaryIO) -> None:
    """Write a PNG: each run of `tradeoff_runs` as a point (safe questions answered on topic across, ASR under
    the K-shot attack up), with both 95% intervals, in the run's colour of the bar chart. A model that unlearned
    the harm and kept its answers sits in the lower right corner; one that lowered the attack ASR by breaking
    its answers sits in the lower left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 5.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    colours = run_colours(len(runs))
    for i in tradeoff_runs(runs):
        run = runs[i]
        point = []
        for key, _label in (TRADEOFF_X, TRADEOFF_Y):
            value, (low, high) = run.value(key), run.interval(key)
            low, high = value if low is None else low, value if high is None else high
            point.append((100 * value, [[100 * (value - low)], [100 * (high - value)]]))
        (x, xerr), (y, yerr) = point
        axes.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=colours[i], capsize=3, label=run.label)
    axes.set_xlabel(TRADEOFF_X[1])
    axes.set_ylabel(TRADEOFF_Y[1])
    axes.set_xlim(-3, 103)
    axes.set_ylim(-3, 103)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    axes.set_title(TRADEOFF_TITLE, fontsize="medium")
    figure.tight_layout()
    _save_png(figure, path)


def _save_png(figure: Any, path: str | os.PathLike | BinaryIO) -> None:
    """A matplotlib figure as PNG to a path or a binary file object, without a software stamp (same bytes
    for the same chart)."""
    figure.savefig(
        path if hasattr(path, "write") else os.fspath(path), format="png", metadata={"Software": None}
    )
