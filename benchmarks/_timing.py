"""Timing helper shared by the benchmarks: median wall time of repeated calls."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ms(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` (after one untimed warm-up call)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
