"""Interval estimates shared by the metrics and the judge validation (a leaf module: no unmirage imports)."""

from __future__ import annotations

import math
from statistics import NormalDist

DEFAULT_CONFIDENCE = 0.95


def wilson_interval(value: float, n: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion `value` observed over `n` trials.

    With z the normal quantile of (1 + confidence) / 2: centre (p + z^2/2n) / (1 + z^2/n), half width
    z sqrt(p(1 - p)/n + z^2/4n^2) / (1 + z^2/n). At 0/n it is [0, z^2/(n + z^2)], never zero width.
    """
    if n <= 0:
        raise ValueError("a Wilson interval needs n > 0")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (value + z2 / (2 * n)) / denominator
    half = z * math.sqrt(value * (1 - value) / n + z2 / (4 * n * n)) / denominator
    # (rounding can put centre - half a hair above 0 at 0/n: the interval always contains the value)
    return max(0.0, min(value, centre - half)), min(1.0, max(value, centre + half))
