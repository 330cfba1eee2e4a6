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


class PeakRss:
    """The process's peak resident memory (MB) over a ``with`` block: Linux's VmHWM, reset on entry
    through ``/proc/self/clear_refs``. ``mb`` stays None where either file is missing (not Linux)."""
    _STATUS, _CLEAR = "/proc/self/status", "/proc/self/clear_refs"

    def __init__(self) -> None:
        self.mb: float | None = None
        self._reset = False

    def __enter__(self) -> "PeakRss":
        try:
            with open(self._CLEAR, "w", encoding="ascii") as handle:
                handle.write("5")   # 5: reset the peak RSS to the current RSS (proc(5))
            self._reset = True
        except OSError:
            self._reset = False
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._reset:
            return
        try:
            with open(self._STATUS, encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        self.mb = int(line.split()[1]) / 1024   # kB
        except OSError:
            self.mb = None
