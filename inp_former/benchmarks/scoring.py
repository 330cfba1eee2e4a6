"""Scoring speed: anomaly maps + image scores, reference vs matrix form vs the fused Triton path.

reference: the authors' operations (F.cosine_similarity, two F.interpolate, F.conv2d, topk).
matrix:    cosine per token in PyTorch, then map = Gm @ A @ Gm^T (plain PyTorch).
fused:     one Triton pass over the features for A, a Triton kernel for Gm A Gm^T, exact topk mean.
           On CPU it runs only under TRITON_INTERPRET=1 (far slower than anything real: marked).

Each path is also placed on the roofline: the minimum bytes of the job (features read once, maps
written once), the bandwidth that achieves, and on CUDA its share of the measured copy bandwidth.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from inp_former.benchmarks.roofline import bandwidth_columns, copy_bandwidth, scoring_counts
from inp_former.benchmarks.timing import measure
from kernels.dispatch import interpreting, kernel_mode, triton_available
from kernels.scoring import (anomaly_map_matrix, anomaly_map_reference, anomaly_maps_and_scores,
                             image_score_reference)


def _features(batch: int, grid: int, channels: int, dtype: torch.dtype, device: torch.device, groups: int = 2):
    gen = torch.Generator(device="cpu").manual_seed(0)
    enc, dec = [], []
    for _ in range(groups):
        e = torch.randn(batch, grid * grid, channels, generator=gen)
        enc.append(e.to(device, dtype))
        dec.append((e + 0.5 * torch.randn(e.shape, generator=gen)).to(device, dtype))
    return enc, dec


def _fused_skip_reason(device: torch.device) -> str | None:
    if not triton_available():
        return "skipped: Triton is not installed"
    if device.type != "cuda" and not interpreting():
        return "skipped: CPU without TRITON_INTERPRET=1"
    return None


def _triton_version() -> str | None:
    if not triton_available():
        return None
    import triton
    return triton.__version__


def _short(value: float | None, digits: int) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


INTERPRETER_NOTE = "fused ran in Triton's CPU interpreter: its time is not a GPU time"


def run_scoring_bench(batch: int, grid: int, channels: int, image_size: int, out_size: int,
                      dtype: torch.dtype, device: torch.device | str, repeats: int = 20, groups: int = 2,
                      max_seconds: float = 10.0,
                      progress: Optional[Callable[[int, int, str], None]] = None) -> dict[str, Any]:
    """Time the three paths on random features. Errors: max |path - reference| over maps and scores, and
    the same against the reference run in float64 (on CUDA the reference's conv2d is TF32 by default).

    ``rows`` holds short keys for an 80-column table (``path``, ``ms``, ``x ref``, ``min MB``,
    ``GB/s``, ``%bw`` and ``peak MB`` on CUDA, ``map err``, ``sc err``); ``detail`` the full rows;
    ``columns`` says what the short keys shown mean. ``progress(paths done, paths in all, the path
    about to be timed)`` is called before each path and once at the end."""
    device = torch.device(device)
    enc, dec = _features(batch, grid, channels, dtype, device, groups)

    def reference() -> tuple[torch.Tensor, torch.Tensor]:
        maps = anomaly_map_reference(enc, dec, image_size, out_size)
        return maps, image_score_reference(maps)

    def matrix() -> tuple[torch.Tensor, torch.Tensor]:
        maps = anomaly_map_matrix(enc, dec, image_size, out_size)
        return maps, image_score_reference(maps)

    def fused() -> tuple[torch.Tensor, torch.Tensor]:
        with kernel_mode("triton"):
            return anomaly_maps_and_scores(enc, dec, image_size, out_size)

    counts = scoring_counts(batch, groups, grid * grid, channels, out_size, enc[0].element_size())
    peak_gbps = copy_bandwidth(device)
    ref_maps, ref_scores = reference()
    ref64_maps = anomaly_map_reference([e.double() for e in enc], [d.double() for d in dec], image_size, out_size)
    ref64_scores = image_score_reference(ref64_maps)
    paths: list[tuple[str, Callable[[], tuple[torch.Tensor, torch.Tensor]], str | None]] = [
        ("reference", reference, None), ("matrix", matrix, None), ("fused", fused, _fused_skip_reason(device))]
    detail: list[dict[str, Any]] = []
    tick = progress or (lambda done, total, name: None)
    for name, fn, skip in paths:
        tick(len(detail), len(paths), name)
        row: dict[str, Any] = {"name": name, "median_ms": None, "peak_mem_mb": None, "speedup": None,
                               "max_abs_err_map": None, "max_abs_err_score": None, "max_abs_err_map_fp64": None,
                               "max_abs_err_score_fp64": None, "min_bytes": counts.bytes, "flops": counts.flops,
                               "gb_per_s": None, "pct_of_copy_bw": None, "note": skip}
        if skip is None:
            slow = name == "fused" and device.type != "cuda"   # the interpreter: a few calls are enough
            maps, scores = fn()
            timing = measure(fn, device, warmup=1 if slow else 3, repeats=3 if slow else repeats,
                             max_seconds=max_seconds)
            row.update(median_ms=timing.median_ms, peak_mem_mb=timing.peak_mem_mb,
                       max_abs_err_map=(maps.float() - ref_maps.float()).abs().max().item(),
                       max_abs_err_score=(scores.float() - ref_scores.float()).abs().max().item(),
                       max_abs_err_map_fp64=(maps.double() - ref64_maps).abs().max().item(),
                       max_abs_err_score_fp64=(scores.double() - ref64_scores).abs().max().item(),
                       note=INTERPRETER_NOTE if slow else None)
            if not slow:  # every path at the same minimum bytes: its effective bandwidth
                bw = bandwidth_columns(counts.bytes, timing.median_ms, peak_gbps)
                row.update(gb_per_s=bw["GB/s"], pct_of_copy_bw=bw.get("%bw"))
        detail.append(row)
    tick(len(paths), len(paths), "")
    base = detail[0]["median_ms"]
    for row in detail:
        if row["median_ms"] is not None and row["note"] is None:
            row["speedup"] = base / row["median_ms"]
    on_cuda = peak_gbps is not None
    rows = [_table_row(row, on_cuda) for row in detail]
    columns = {"x ref": "reference median / row median",
               "min MB": "features read once + maps written once (1e6 bytes), the same for every path",
               "GB/s": "min MB / median time", "%bw": "GB/s as % of the measured copy bandwidth",
               "map err / sc err": "max |path - reference in float64| over maps / scores"}
    return {
        "rows": rows,
        "detail": detail,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "shape": f"G={groups} x (B={batch}, N={grid * grid}, C={channels}) {str(dtype).removeprefix('torch.')}",
        "image_size": image_size,
        "out_size": out_size,
        **({"copy_gb_per_s": peak_gbps} if on_cuda else {}),
        "roofline": counts.as_dict(),
        "columns": {key: text for key, text in columns.items() if key.split(" / ")[0] in rows[0]},
    }


_PATHS = {"reference": "ref", "matrix": "matrix", "fused": "fused"}


def _table_row(row: dict[str, Any], on_cuda: bool) -> dict[str, Any]:
    """The short-key row the CLI prints (every key becomes a column: keep it under 80 columns)."""
    out = {"path": _PATHS[row["name"]], "ms": _short(row["median_ms"], 3), "x ref": _short(row["speedup"], 3),
           "min MB": _short(row["min_bytes"] / 1e6, 3), "GB/s": _short(row["gb_per_s"], 3)}
    if on_cuda:   # the copy bandwidth and peak memory are measured on CUDA only: no empty columns elsewhere
        out["%bw"] = _short(row["pct_of_copy_bw"], 2)
    out.update({"map err": _short(row["max_abs_err_map_fp64"], 2), "sc err": _short(row["max_abs_err_score_fp64"], 2)})
    if on_cuda:
        out["peak MB"] = _short(row["peak_mem_mb"], 3)
    if row["note"]:
        out["note"] = row["note"]
    return out


__all__ = ["run_scoring_bench"]
