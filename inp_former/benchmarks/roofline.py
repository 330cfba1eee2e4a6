"""Roofline counts of each kernel: the minimum bytes it must move and its FLOPs, from shapes and dtype.

"Minimum bytes" is what any implementation must read and write once (inputs read once, outputs
written once, nothing in between); a measured time turns it into an achieved bandwidth, and the
device's measured copy bandwidth (:func:`copy_bandwidth`, read + write of a large ``copy_``) into a
fraction of what the memory system can do. At the paper's sizes every kernel here has an
arithmetic intensity far below the ridge point of any GPU (H100: ~300 flop/byte on bf16 tensor
cores, ~20 on fp32 FMA), so the bandwidth fraction is the figure of merit.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Optional

import torch

GB = 1e9
MB = 1e6


@dataclass(frozen=True)
class Counts:
    bytes: int     # minimum bytes moved
    flops: int     # floating-point operations (multiply and add counted separately)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else float("inf")

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.bytes + other.bytes, self.flops + other.flops)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "flops_per_byte": self.intensity}


def inp_attention_counts(batch: int, n: int, m: int, c: int, heads: int, elem: int,
                         backward: bool = False) -> Counts:
    """INP-guided ReLU attention, forward (or forward + backward when ``backward``).

    Forward: q read, out written (B*N*C each), k and v read (B*M*C each), H scales; FLOPs of
    Q K^T and P V (2 * 2*B*N*M*C) plus normalising q (~3*B*N*C). Backward: q and dout read, dq
    written, k and v read, dk and dv written; FLOPs of the five products (5 * 2*B*N*M*C) and the
    normalisation Jacobian (~6*B*N*C)."""
    tokens, protos = batch * n * c, batch * m * c
    fwd = Counts((2 * tokens + 2 * protos) * elem + heads * 4, 4 * batch * n * m * c + 3 * tokens)
    if not backward:
        return fwd
    return fwd + Counts((3 * tokens + 4 * protos) * elem + heads * 4, 10 * batch * n * m * c + 6 * tokens)


def vanilla_attention_counts(batch: int, n: int, c: int, elem: int, backward: bool = False) -> Counts:
    """Multi-head self-attention over N tokens (what a flash kernel must move): q, k, v read, out
    written; backward also reads dout and q, k, v again and writes dq, dk, dv. FLOPs of Q K^T and
    A V (2 * 2*B*N*N*C), 2.5x that for forward + backward."""
    fwd = Counts(4 * batch * n * c * elem, 4 * batch * n * n * c)
    if not backward:
        return fwd
    return fwd + Counts(7 * batch * n * c * elem, 6 * batch * n * n * c)


def scoring_counts(batch: int, groups: int, n_tokens: int, channels: int, out_size: int, elem: int) -> Counts:
    """Features to maps and scores: each (enc, dec) feature tensor read once, the fp32 maps written
    once (and the scores); FLOPs of 1 - cos (3 products per channel: 6*G*B*N*C) and of
    G A G^T (2*B*(out*grid^2 + out^2*grid))."""
    grid = round(n_tokens ** 0.5)
    feature_bytes = 2 * groups * batch * n_tokens * channels * elem
    map_bytes = batch * out_size * out_size * 4 + batch * 4
    flops = 6 * groups * batch * n_tokens * channels + 2 * batch * (out_size * grid * grid + out_size ** 2 * grid)
    return Counts(feature_bytes + map_bytes, flops)


@functools.lru_cache(maxsize=8)
def _copy_bandwidth(device: str, nbytes: int, repeats: int) -> float:
    dev = torch.device(device)
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize(dev)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del src, dst
    times.sort()
    return 2 * nbytes / (times[len(times) // 2] * 1e-3) / GB   # read + write


def copy_bandwidth(device: torch.device | str, nbytes: int = 2**30, repeats: int = 20) -> Optional[float]:
    """Measured device-memory bandwidth in GB/s (read + write of an ``nbytes`` ``copy_``, median of
    ``repeats``), once per device and process; None off CUDA (no meaningful figure)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, _ = torch.cuda.mem_get_info(index)
    nbytes = max(2**20, min(nbytes, free // 4))   # two buffers, room to spare
    return _copy_bandwidth(f"cuda:{index}", nbytes, repeats)


def bandwidth_columns(min_bytes: int, ms: Optional[float], peak_gbps: Optional[float]) -> dict[str, Optional[float]]:
    """{'GB/s': achieved at the minimum bytes, '%bw': of the copy bandwidth (only when known)}."""
    gbps = min_bytes / (ms * 1e-3) / GB if ms else None
    columns: dict[str, Optional[float]] = {"GB/s": gbps}
    if peak_gbps:
        columns["%bw"] = 100 * gbps / peak_gbps if gbps is not None else None
    return columns


__all__ = ["Counts", "inp_attention_counts", "vanilla_attention_counts", "scoring_counts", "copy_bandwidth",
           "bandwidth_columns"]
