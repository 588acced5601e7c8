"""The grouped bar chart: one group per metric, one bar per run, 95% intervals as error bars."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from unmirage.report.build import RunSummary

# (metric key, axis label)
CHART_METRICS = (
    ("asr_normal", "ASR normal"),
    ("asr_attack", "ASR attack"),
    ("asr_prefill", "ASR prefill"),
    ("rr_normal", "RR normal"),
    ("rr_share", "RR Share"),
    ("utility", "Utility"),
)


def run_colours(n: int) -> list:
    """One distinct colour per run: matplotlib's default cycle up to 10 runs, tab20 up to 20, then turbo."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    from matplotlib import colormaps

    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


def bar_chart(
    runs: Sequence[RunSummary],
    path: str | os.PathLike | BinaryIO,
    *,
    metrics: Sequence[tuple[str, str]] = CHART_METRICS,
    title: str | None = None,
) -> None:
    """Write a PNG (to a path or a binary file object): `metrics` ((key for `RunSummary.value`, label)) on
    the x axis, one coloured bar per run, values in percent with error bars; metrics no run has are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [(key, label) for key, label in metrics if any(run.value(key) is not None for run in runs)]
    figure = Figure(figsize=(max(6.0, 1.6 * len(metrics) + 0.5 * len(runs)), 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(runs))
    colours = run_colours(len(runs))
    for r, run in enumerate(runs):
        xs, heights, low_err, high_err = [], [], [], []
        for m, (key, _label) in enumerate(metrics):
            value = run.value(key)
            if value is None:
                continue
            low, high = run.interval(key)
            xs.append(m - 0.4 + width * (r + 0.5))
            heights.append(100 * value)
            low_err.append(100 * (value - low) if low is not None else 0.0)
            high_err.append(100 * (high - value) if high is not None else 0.0)
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
    axes.set_xticks(range(len(metrics)), [label for _key, label in metrics])
    axes.set_ylabel("percent")
    axes.set_ylim(0, 105)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    label_lines = max(label.count("\n") + 1 for _key, label in metrics) if metrics else 1
    axes.legend(
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.04 - 0.06 * label_lines),
        ncol=min(4, len(runs)),
    )
    axes.set_title(title or "Attack success (ASR), rejection rate (RR) and utility, with 95% intervals")
    figure.tight_layout()
    figure.savefig(
        path if hasattr(path, "write") else os.fspath(path), format="png", metadata={"Software": None}
    )
