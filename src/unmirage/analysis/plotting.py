"""Matplotlib without a display, and figures saved atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """`matplotlib.pyplot` on the non-interactive Agg backend (imported lazily: matplotlib is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write `fig` to `path` as PNG (all or nothing) and close it."""
    from unmirage.runs import atomic_open

    with atomic_open(Path(path), "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    pyplot().close(fig)
