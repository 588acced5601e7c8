"""The machine's measured speed: fp32 matrix-multiply FLOP/s, to state run times against (`unmirage info`,
the benchmarks). Times on CPUs vary 2-5x between machines; a time is only comparable with its FLOP/s."""

from __future__ import annotations

import time


def matmul_flops(size: int = 1024, seconds: float = 1.0, threads: int | None = None) -> float:
    """Sustained fp32 FLOP/s of `size x size` matrix products over about `seconds` (best of the timed
    rounds of 4 products, at least one, after one warm-up product), with torch's thread count (or `threads`)."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        torch.mm(a, b)
        flop = 2.0 * size**3
        best = 0.0
        deadline = time.perf_counter() + seconds
        while True:  # at least one timed round
            start = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            best = max(best, 4 * flop / (time.perf_counter() - start))
            if time.perf_counter() >= deadline:
                return best
    finally:
        torch.set_num_threads(previous)
