"""`unmirage.machine`: the measured matmul FLOP/s behind the time statements."""

from __future__ import annotations


def test_matmul_flops_counts_two_flop_per_multiply_add(monkeypatch):
    import time

    from unmirage import machine

    clock = iter(float(t) for t in range(100))  # every perf_counter call advances 1 s
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    # deadline 0.5 s after t=0; one timed round of 4 products of 2 * 8^3 FLOP from t=1 to t=2, then stop
    assert machine.matmul_flops(size=8, seconds=0.5) == 4 * 2 * 8**3
