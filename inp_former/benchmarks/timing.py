"""Median wall time and peak memory of a callable, on CUDA (events) or CPU (perf_counter)."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    repeats: int
    peak_mem_mb: float | None  # CUDA only: peak allocated during one call, above what was live before

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device | str, warmup: int = 3,
            repeats: int = 20, max_seconds: float = 10.0) -> Timing:
    """Time ``fn()`` after ``warmup`` calls; stops early once ``max_seconds`` have been spent."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > budget_end and len(times) >= 3:
            break
    return Timing(statistics.median(times), min(times), len(times), peak)
