"""A PNG of the loss and its named terms over steps, from `metrics.jsonl`."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from unmirage.runs import atomic_open

SKIP = {"step", "epoch", "learning_rate", "grad_norm"}


def plot_metrics(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Loss terms (left) and unweighted diagnostics such as the forget NLL (right) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k, v in r.items() if k not in SKIP and isinstance(v, int | float)})
    terms = [k for k in keys if k == "loss" or k.endswith("_loss") or k.startswith("ce_")]
    stats = [k for k in keys if k not in terms]
    fig, axes = plt.subplots(1, 2 if stats else 1, figsize=(11 if stats else 6, 4), squeeze=False)
    for ax, names, label in ((axes[0][0], terms, "loss terms (weighted)"),) + (
        ((axes[0][1], stats, "diagnostics"),) if stats else ()
    ):
        for name in names:
            points = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), int | float)]
            if points:
                ax.plot(*zip(*points), label=name, lw=1.5 if name == "loss" else 1.0)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())
