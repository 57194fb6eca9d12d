"""Timing helper shared by the benchmarks: median wall time of repeated calls."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], repeats: int, warmup: bool = True, device: str = "cpu") -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` (after one untimed warm-up call), each
    timed until the device has finished its work."""
    dev = torch.device(device)
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def device_label(device: str) -> str:
    """``CPU`` or the GPU's name, for the benchmarks' header line."""
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
