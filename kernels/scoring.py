"""Anomaly maps and image scores: the authors' reference path, a matrix form, and a fused Triton path.

Reference (what the authors' ``cal_anomaly_maps`` + evaluation compute), per image::

    a_g   = 1 - cos(enc_g, dec_g)                  per token, (grid_h, grid_w), one map per group g
    m     = mean_g bilinear(a_g, image_size, align_corners=True)
    m     = bilinear(m, out_size, align_corners=False)
    m     = conv2d(m, gaussian 5x5 sigma 4, zero padding 2)
    score = mean of the top int(out_h * out_w * 0.01) values of m

Everything after the cosine is linear and separable, so ``m = Gh @ A @ Gw^T`` with ``A`` the mean of
the ``a_g`` and ``Gh``, ``Gw`` fixed (out_h, grid_h) and (out_w, grid_w) matrices (:func:`scoring_matrix`,
one per axis; the same matrix on a square grid). The fused path reads each feature tensor exactly
once in one Triton kernel (the memory-bound part), forms ``Gh A Gw^T`` in a second small Triton
kernel (fp32 FMA, no TF32), and takes the exact top-k mean with ``torch.topk``.

Sizes: ``image_size`` and ``out_size`` are an int (a square) or (height, width); ``grid`` is the
(grid_h, grid_w) token grid, None meaning the square grid of N tokens (the paper's).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from kernels import Launch
from kernels.dispatch import interpreting, use_kernel

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference and matrix paths need no Triton
    triton = None

COS_EPS = 1e-8              # F.cosine_similarity's default eps, as the authors use it
MAX_GROUPS_PER_LAUNCH = 4   # the cosine kernel takes up to 4 (enc, dec) pairs; more are chunked

Size = Union[int, Sequence[int]]   # a square side, or (height, width)

__all__ = [
    "anomaly_map_reference", "image_score_reference", "scoring_matrix", "anomaly_map_matrix",
    "anomaly_maps_and_scores", "upsample_token_map", "upsample_token_map_reference",
    "mean_cosine_distance", "top_k_count", "top_k_mean", "cosine_distance", "apply_scoring_matrix",
    "cosine_distance_launches", "token_map_launch", "prune_cos_configs", "scoring_matrices",
]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of a size given as an int (a square) or a pair."""
    if isinstance(size, (tuple, list)):   # torch.Size is a tuple
        height, width = size
        return int(height), int(width)
    return int(size), int(size)


def _check_sizes(image_size: Size, out_size: Size, kernel_size: int, sigma: float) -> None:
    if min(_hw(image_size)) < 1 or min(_hw(out_size)) < 1:
        raise ValueError(f"image_size and out_size must be >= 1, got {image_size} and {out_size}")
    if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number (zero padding k // 2 keeps the size), "
                         f"got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")


def _grid_of(n_tokens: int, grid: Sequence[int] | None = None) -> tuple[int, int]:
    """(grid_h, grid_w) of N tokens: ``grid`` checked against N, or the square grid when None."""
    if grid is not None:
        grid_h, grid_w = (int(v) for v in grid)
        if grid_h < 1 or grid_w < 1 or grid_h * grid_w != n_tokens:
            raise ValueError(f"N = {n_tokens} tokens do not form the grid {grid_h}x{grid_w}")
        return grid_h, grid_w
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"N = {n_tokens} tokens is not a square grid (expected N = grid * grid, or give the "
                         "grid as (grid_h, grid_w))")
    return side, side


def _check_features(enc: Sequence[torch.Tensor], dec: Sequence[torch.Tensor],
                    grid: Sequence[int] | None = None) -> tuple[int, int, int, tuple[int, int]]:
    """Validate the groups; returns (B, N, C, (grid_h, grid_w))."""
    if isinstance(enc, torch.Tensor) or isinstance(dec, torch.Tensor):
        raise ValueError("enc and dec must be sequences (list/tuple) of (B, N, C) tensors, one per group; "
                         "wrap a single group in a list")
    if len(enc) != len(dec):
        raise ValueError(f"enc has {len(enc)} groups but dec has {len(dec)}")
    if len(enc) < 1:
        raise ValueError("need at least one (enc, dec) group")
    shape = tuple(enc[0].shape)
    if len(shape) != 3:
        raise ValueError(f"features must be (B, N, C) in token layout, got shape {shape}")
    for name, group in (("enc", enc), ("dec", dec)):
        for g, t in enumerate(group):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}[{g}] has shape {tuple(t.shape)}, expected {shape} like enc[0]")
            if not t.is_floating_point():
                raise ValueError(f"{name}[{g}] has dtype {t.dtype}; features must be floating point")
            if t.device != enc[0].device:
                raise ValueError(f"{name}[{g}] is on {t.device} but enc[0] is on {enc[0].device}")
    batch, n_tokens, channels = shape
    if batch < 1 or channels < 1:
        raise ValueError(f"features must have B >= 1 and C >= 1, got shape {shape}")
    return batch, n_tokens, channels, _grid_of(n_tokens, grid)


def _check_token_map(token_map: torch.Tensor, grid: Sequence[int] | None = None) -> tuple[int, int]:
    if token_map.dim() != 2 or not token_map.is_floating_point():
        raise ValueError(f"token_map must be a floating (B, N) tensor, got {tuple(token_map.shape)} "
                         f"{token_map.dtype}")
    return _grid_of(token_map.shape[1], grid)


def top_k_count(num_values: int, top_fraction: float) -> int:
    """How many of a map's values the image score averages: int(num_values * top_fraction), at least 1
    (655 of a 256x256 map at 1%, as the authors' ``int(H * W * max_ratio)``; num_values = H * W)."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    return max(1, int(num_values * top_fraction))


def _map_dtype(dtype: torch.dtype) -> torch.dtype:
    """Maps are float32 (float64 stays float64, for exact references)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Reference path: the authors' operations, literally
# --------------------------------------------------------------------------------------------

def _gaussian_1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian in float64; the authors' 2-D kernel is its outer product."""
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def _resize_and_blur(a_map: torch.Tensor, out_size: Size, kernel_size: int, sigma: float) -> torch.Tensor:
    """Steps 3-4 on (B, 1, H, W): bilinear resize (align_corners=False), then the Gaussian conv2d."""
    a_map = F.interpolate(a_map, size=_hw(out_size), mode="bilinear", align_corners=False)
    g = _gaussian_1d(kernel_size, sigma)
    weight = torch.outer(g, g).to(a_map.dtype).to(a_map.device).view(1, 1, kernel_size, kernel_size)
    return F.conv2d(a_map, weight, padding=kernel_size // 2)


def anomaly_map_reference(enc: Sequence[torch.Tensor], dec: Sequence[torch.Tensor], image_size: Size,
                          out_size: Size = 256, kernel_size: int = 5, sigma: float = 4.0,
                          grid: Sequence[int] | None = None) -> torch.Tensor:
    """Anomaly maps (B, out_h, out_w) exactly as the authors compute them (float32; float64 in,
    float64 out). The cosine runs in the features' dtype, like the authors' code."""
    _check_sizes(image_size, out_size, kernel_size, sigma)
    batch, _, _, grid = _check_features(enc, dec, grid)
    upsampled = []
    for e, d in zip(enc, dec):
        a_map = 1 - F.cosine_similarity(e, d, dim=-1, eps=COS_EPS)          # (B, N)
        a_map = a_map.to(_map_dtype(a_map.dtype)).reshape(batch, 1, *grid)
        upsampled.append(F.interpolate(a_map, size=_hw(image_size), mode="bilinear", align_corners=True))
    a_map = torch.cat(upsampled, dim=1).mean(dim=1, keepdim=True)
    return _resize_and_blur(a_map, out_size, kernel_size, sigma)[:, 0]


def upsample_token_map_reference(token_map: torch.Tensor, image_size: Size, out_size: Size = 256,
                                 kernel_size: int = 5, sigma: float = 4.0,
                                 grid: Sequence[int] | None = None) -> torch.Tensor:
    """Steps 2-4 of the reference with one group on a per-token map (B, N) -> (B, out_h, out_w)."""
    _check_sizes(image_size, out_size, kernel_size, sigma)
    grid = _check_token_map(token_map, grid)
    a_map = token_map.to(_map_dtype(token_map.dtype)).reshape(-1, 1, *grid)
    a_map = F.interpolate(a_map, size=_hw(image_size), mode="bilinear", align_corners=True)
    return _resize_and_blur(a_map, out_size, kernel_size, sigma)[:, 0]


def image_score_reference(maps: torch.Tensor, top_fraction: float = 0.01) -> torch.Tensor:
    """Mean of the top int(H*W*top_fraction) values of each (H, W) map -> (B,)."""
    flat = maps.flatten(1)
    return flat.topk(top_k_count(flat.shape[1], top_fraction), dim=1).values.mean(dim=1)


# --------------------------------------------------------------------------------------------
# Matrix form: map = Gh @ A @ Gw^T
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _scoring_matrix_cached(grid: int, image_size: int, out_size: int, kernel_size: int, sigma: float,
                           device: str, dtype: str) -> torch.Tensor:
    # Push the identity basis through the reference's own 1-D operations, in float64: bilinear
    # interpolation and the Gaussian kernel are separable, so each axis has its own such matrix.
    basis = torch.eye(grid, dtype=torch.float64).reshape(grid, 1, grid)
    rows = F.interpolate(basis, size=image_size, mode="linear", align_corners=True)
    rows = F.interpolate(rows, size=out_size, mode="linear", align_corners=False)
    rows = F.conv1d(rows, _gaussian_1d(kernel_size, sigma).view(1, 1, kernel_size), padding=kernel_size // 2)
    matrix = rows[:, 0, :].T.contiguous()                                  # (out_size, grid)
    return matrix.to(device=torch.device(device), dtype=getattr(torch, dtype))


def scoring_matrix(grid: int, image_size: int, out_size: int = 256, kernel_size: int = 5, sigma: float = 4.0,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (out_size, grid) matrix of one axis: map = Gm @ A @ Gm^T for a (grid, grid) token map A
    (:func:`scoring_matrices` for a non-square grid, one matrix per axis).

    Cached per arguments: the returned tensor is shared, do not modify it in place."""
    _check_sizes(image_size, out_size, kernel_size, sigma)
    if int(grid) < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    dtype_name = str(dtype).removeprefix("torch.")
    return _scoring_matrix_cached(int(grid), int(image_size), int(out_size), int(kernel_size), float(sigma),
                                  str(torch.device(device)), dtype_name)


def scoring_matrices(grid: Sequence[int], image_size: Size, out_size: Size = 256, kernel_size: int = 5,
                     sigma: float = 4.0, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gh, Gw), (out_h, grid_h) and (out_w, grid_w): map = Gh @ A @ Gw^T for a (grid_h, grid_w)
    token map A (the same cached tensor twice on a square)."""
    return tuple(scoring_matrix(g, i, o, kernel_size, sigma, device, dtype)  # type: ignore[return-value]
                 for g, i, o in zip(_hw(grid), _hw(image_size), _hw(out_size)))


def cosine_distance(e: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """1 - cos per token (B, N, C) -> (B, N) in float32 (float64 kept), with F.cosine_similarity's
    per-norm eps clamp. einsum + vector_norm never materialise the normalised features (F.cosine_similarity
    does). Also the ONNX export's cosine (:mod:`inp_former.export`)."""
    dtype = _map_dtype(e.dtype)
    e, d = e.to(dtype), d.to(dtype)
    dot = torch.einsum("bnc,bnc->bn", e, d)
    ne = torch.linalg.vector_norm(e, dim=-1).clamp_min(COS_EPS)
    nd = torch.linalg.vector_norm(d, dim=-1).clamp_min(COS_EPS)
    return 1 - dot / (ne * nd)


def apply_scoring_matrix(a: torch.Tensor, matrix: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """(B, grid_h, grid_w) -> (B, out_h, out_w): Gh @ A @ Gw^T with ``matrix`` = Gh and ``cols`` = Gw
    (:func:`scoring_matrices`; ``cols`` None: Gm @ A @ Gm^T on a square)."""
    return torch.matmul(torch.matmul(matrix, a), (matrix if cols is None else cols).T)


def anomaly_map_matrix(enc: Sequence[torch.Tensor], dec: Sequence[torch.Tensor], image_size: Size,
                       out_size: Size = 256, kernel_size: int = 5, sigma: float = 4.0,
                       grid: Sequence[int] | None = None) -> torch.Tensor:
    """Same maps as :func:`anomaly_map_reference` in plain PyTorch: cosine per token, then Gh A Gw^T.
    The fast CPU path (on CUDA, TF32 matmuls would round it if they are switched on)."""
    _check_sizes(image_size, out_size, kernel_size, sigma)
    batch, _, _, grid = _check_features(enc, dec, grid)
    a = sum(cosine_distance(e, d) for e, d in zip(enc, dec)) / len(enc)
    rows, cols = scoring_matrices(grid, image_size, out_size, kernel_size, sigma, a.device, a.dtype)
    return apply_scoring_matrix(a.reshape(batch, *grid), rows, cols)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

# The map kernel's fixed tile (BLOCK_I, BLOCK_J) and warps: the fastest of 32..128 x 64..128 on an
# H100 (~8 us at B=16, 256x256). No autotuner on the call path: its Python overhead would exceed
# this kernel's run time. The interpreter takes a smaller tile.
MAP_TILE = (64, 128)
MAP_WARPS = 4

# The channel loop is unrolled (C is a constexpr), so every chunk's loads are in flight at once:
# 2 tensors x C x BLOCK_N / threads values per thread, in 32-bit registers. At C=768 in fp32 the
# 16x64/4-warp and 32x64/8-warp tiles needed 237-254 of the 255 registers (ptxas, sm_80/sm_90,
# Triton 3.6 and 3.8: one register from spilling, 12% occupancy; inp_former.benchmarks.compile);
# the tiles within this budget use at most 128 registers in fp32 and 167 in bf16/fp16.
MAX_IN_FLIGHT_REGS = 128


def prune_cos_configs(configs: list, channels: int, element_size: int) -> list:
    """The configs autotune may try for C = ``channels`` features of ``element_size`` bytes: no
    channel block wider than the channels (rounded up to a power of two), and no tile whose
    unrolled loads need more than MAX_IN_FLIGHT_REGS registers per thread."""
    widest = max(16, 1 << (channels - 1).bit_length())   # next power of two

    def in_flight_regs(c) -> float:
        return 2 * channels * c.kwargs["BLOCK_N"] * element_size / 4 / (32 * c.num_warps)

    kept = [c for c in configs if c.kwargs["BLOCK_C"] <= widest and in_flight_regs(c) <= MAX_IN_FLIGHT_REGS]
    return kept or configs[:1]


if triton is not None:
    # Every config autotune may pick on a GPU (inp_former.benchmarks.compile compiles each of them).
    COS_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_C": c}, num_warps=w)
                   for n, c, w in ((1, 256, 2), (1, 512, 4), (2, 256, 2), (2, 256, 4), (4, 128, 4), (4, 256, 4),
                                   (8, 128, 4), (8, 256, 8), (16, 64, 4), (16, 128, 8), (32, 64, 8))]

    def _cos_configs() -> list:
        if interpreting():  # one config: the interpreter would otherwise "autotune" for minutes
            return [triton.Config({"BLOCK_N": 64, "BLOCK_C": 128}, num_warps=4)]
        return COS_CONFIGS

    @triton.jit
    def _one_minus_cos(enc_ptr, dec_ptr, row_off, row_mask, stride_c, eps, C: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """1 - cos over the channels of BLOCK_N tokens, fp32 accumulation, one read of each tensor.
        C is a compile-time constant so the channel loop unrolls and every load can be in flight."""
        cols = tl.arange(0, BLOCK_C)
        dot = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        sxx = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        syy = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for c0 in tl.static_range(0, C, BLOCK_C):
            c = c0 + cols
            if C % BLOCK_C == 0:
                mask = row_mask[:, None] & (cols < BLOCK_C)[None, :]
            else:
                mask = row_mask[:, None] & (c < C)[None, :]
            offs = row_off[:, None] + c[None, :].to(tl.int64) * stride_c
            x = tl.load(enc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(dec_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dot += x * y
            sxx += x * x
            syy += y * y
        # F.cosine_similarity clamps each norm to eps before dividing
        nx = tl.maximum(tl.sqrt(tl.sum(sxx, axis=1)), eps)
        ny = tl.maximum(tl.sqrt(tl.sum(syy, axis=1)), eps)
        return 1.0 - tl.sum(dot, axis=1) / (nx * ny)

    def _prune_cos_hook(configs, named_args, **kwargs):
        """Autotune's early_config_prune: the launch's C and first feature's element size."""
        args = {**named_args, **kwargs}
        feature = args.get("e0")
        return prune_cos_configs(configs, args["C"], feature.element_size() if hasattr(feature, "element_size") else 4)

    # ROWS_LOG2 (unused in the body) retunes per power-of-two band of B*N: B=16 and B=64 prefer
    # different tiles, but every batch size of its own would retune at each ragged last batch.
    @triton.autotune(configs=_cos_configs(), key=["C", "NUM_GROUPS", "ROWS_LOG2"],
                     prune_configs_by={"early_config_prune": _prune_cos_hook})
    @triton.jit
    def _cosine_distance_kernel(e0, d0, e1, d1, e2, d2, e3, d3, out_ptr, R, N, ROWS_LOG2,
                                stride_b, stride_n, stride_c, scale, eps, C: tl.constexpr,
                                NUM_GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """out[r] = scale * sum_g (1 - cos(e_g[r], d_g[r])) for BLOCK_N of the R = B*N tokens."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < R
        row_off = (rows // N).to(tl.int64) * stride_b + (rows % N).to(tl.int64) * stride_n
        total = _one_minus_cos(e0, d0, row_off, row_mask, stride_c, eps, C, BLOCK_N, BLOCK_C)
        if NUM_GROUPS > 1:
            total += _one_minus_cos(e1, d1, row_off, row_mask, stride_c, eps, C, BLOCK_N, BLOCK_C)
        if NUM_GROUPS > 2:
            total += _one_minus_cos(e2, d2, row_off, row_mask, stride_c, eps, C, BLOCK_N, BLOCK_C)
        if NUM_GROUPS > 3:
            total += _one_minus_cos(e3, d3, row_off, row_mask, stride_c, eps, C, BLOCK_N, BLOCK_C)
        tl.store(out_ptr + rows, total * scale, mask=row_mask)

    @triton.jit
    def _token_map_to_image_kernel(a_ptr, gh_ptr, gw_ptr, out_ptr, GRID_H, GRID_W, OUT_H, OUT_W,
                                   GRID_P: tl.constexpr, GRID_Q: tl.constexpr,
                                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
        """out[b, i-tile, j-tile] = Gh[i-tile] @ A[b] @ Gw[j-tile]^T, fp32 FMA (ieee: no TF32).
        A is (GRID_H, GRID_W), token rows p and columns q, each padded to a power of two >= 16
        (GRID_P, GRID_Q) with zeros beyond."""
        pid_i, pid_j, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        p = tl.arange(0, GRID_P)
        q = tl.arange(0, GRID_Q)
        p_ok, q_ok = p < GRID_H, q < GRID_W
        a = tl.load(a_ptr + b.to(tl.int64) * GRID_H * GRID_W + p[:, None] * GRID_W + q[None, :],
                    mask=p_ok[:, None] & q_ok[None, :], other=0.0)
        i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
        gi = tl.load(gh_ptr + i[:, None] * GRID_H + p[None, :], mask=(i < OUT_H)[:, None] & p_ok[None, :], other=0.0)
        gj = tl.load(gw_ptr + j[:, None] * GRID_W + q[None, :], mask=(j < OUT_W)[:, None] & q_ok[None, :], other=0.0)
        rows = tl.dot(gi, a, input_precision="ieee")                   # (BLOCK_I, GRID_Q)
        tile = tl.dot(rows, tl.trans(gj), input_precision="ieee")      # (BLOCK_I, BLOCK_J)
        out = out_ptr + b.to(tl.int64) * OUT_H * OUT_W + i[:, None] * OUT_W + j[None, :]
        tl.store(out, tile, mask=(i < OUT_H)[:, None] & (j < OUT_W)[None, :])


def _same_strides(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The cosine kernel takes one set of strides for all features; copy only if they differ."""
    if all(t.stride() == tensors[0].stride() for t in tensors):
        return tensors
    return [t.contiguous() for t in tensors]


# --------------------------------------------------------------------------------------------
# Launch specs: what the host functions pass to each kernel (see kernels.Launch);
# inp_former.benchmarks.compile calls the same functions on meta tensors.
# --------------------------------------------------------------------------------------------

def cosine_distance_launches(enc: Sequence[torch.Tensor], dec: Sequence[torch.Tensor]) -> list[Launch]:
    """The cosine kernel's launches for validated (B, N, C) groups: one per MAX_GROUPS_PER_LAUNCH
    groups, each allocating its (B*N,) fp32 output ``out_ptr``, scaled by 1 / groups so that the
    outputs sum to the mean."""
    n_groups = len(enc)
    tensors = _same_strides(list(enc) + list(dec))
    enc, dec = tensors[:n_groups], tensors[n_groups:]
    batch, n_tokens, channels = enc[0].shape
    rows = batch * n_tokens
    stride_b, stride_n, stride_c = enc[0].stride()
    launches = []
    for start in range(0, n_groups, MAX_GROUPS_PER_LAUNCH):
        count = min(MAX_GROUPS_PER_LAUNCH, n_groups - start)
        pairs = [t for g in range(start, start + count) for t in (enc[g], dec[g])]
        pairs += [pairs[0], pairs[1]] * (MAX_GROUPS_PER_LAUNCH - count)     # unused slots: any valid pointer
        out = torch.empty(rows, device=enc[0].device, dtype=torch.float32)
        args = dict(zip(("e0", "d0", "e1", "d1", "e2", "d2", "e3", "d3"), pairs), out_ptr=out, R=rows, N=n_tokens,
                    ROWS_LOG2=rows.bit_length(), stride_b=stride_b, stride_n=stride_n, stride_c=stride_c,
                    scale=1.0 / n_groups, eps=COS_EPS)
        launches.append(Launch(lambda meta: (triton.cdiv(rows, meta["BLOCK_N"]),), args,
                               dict(C=channels, NUM_GROUPS=count)))
    return launches


def token_map_launch(a: torch.Tensor, matrix: torch.Tensor, cols: torch.Tensor | None = None) -> Launch:
    """The map kernel's launch for token maps ``a`` (B, grid_h, grid_w) (made fp32 contiguous) and
    the contiguous fp32 matrices Gh = ``matrix`` (out_h, grid_h) and Gw = ``cols`` (out_w, grid_w;
    None: ``matrix`` again, a square); allocates the (B, out_h, out_w) fp32 maps ``out_ptr``.
    Launched with ``num_warps=MAP_WARPS``."""
    a = a.float().contiguous()
    cols = matrix if cols is None else cols
    batch, grid_h, grid_w = a.shape
    out_h, out_w = matrix.shape[0], cols.shape[0]
    maps = torch.empty(batch, out_h, out_w, device=a.device, dtype=torch.float32)
    block_i, block_j = (64, 64) if interpreting() else MAP_TILE
    args = dict(a_ptr=a, gh_ptr=matrix, gw_ptr=cols, out_ptr=maps, GRID_H=grid_h, GRID_W=grid_w, OUT_H=out_h,
                OUT_W=out_w)
    constexprs = dict(GRID_P=max(16, triton.next_power_of_2(grid_h)),   # tl.dot needs every dimension >= 16
                      GRID_Q=max(16, triton.next_power_of_2(grid_w)), BLOCK_I=block_i, BLOCK_J=block_j)
    return Launch((triton.cdiv(out_h, block_i), triton.cdiv(out_w, block_j), batch), args, constexprs)


# --------------------------------------------------------------------------------------------
# Host functions
# --------------------------------------------------------------------------------------------

def _mean_cosine_distance_triton(enc: Sequence[torch.Tensor], dec: Sequence[torch.Tensor],
                                 grid: Sequence[int] | None = None) -> torch.Tensor:
    """(B, grid_h, grid_w) float32 mean over groups of 1 - cos, each feature tensor read once."""
    batch, _, _, grid = _check_features(enc, dec, grid)
    partials = []
    for launch in cosine_distance_launches(enc, dec):
        _cosine_distance_kernel[launch.grid](**launch.args, **launch.constexprs)
        partials.append(launch.args["out_ptr"])
    total = partials[0] if len(partials) == 1 else torch.stack(partials).sum(0)
    return total.view(batch, *grid)


def _token_map_to_image_triton(a: torch.Tensor, matrix: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """(B, grid_h, grid_w) -> (B, out_h, out_w) fp32 with the Triton map kernel (Gh, Gw: ``matrix``, ``cols``)."""
    launch = token_map_launch(a, matrix, cols)
    _token_map_to_image_kernel[launch.grid](**launch.args, **launch.constexprs, num_warps=MAP_WARPS)
    return launch.args["out_ptr"]


def mean_cosine_distance(enc: Sequence[torch.Tensor], dec: Sequence[torch.Tensor],
                         grid: Sequence[int] | None = None) -> torch.Tensor:
    """A = mean over groups of 1 - cos(enc_g, dec_g) per token -> (B, grid_h, grid_w) float32.
    The Triton kernel when :func:`kernels.dispatch.use_kernel` says so, else PyTorch."""
    batch, _, _, grid = _check_features(enc, dec, grid)
    if use_kernel("scoring", *enc, *dec):
        return _mean_cosine_distance_triton(enc, dec, grid)
    a = sum(cosine_distance(e, d) for e, d in zip(enc, dec)) / len(enc)
    return a.reshape(batch, *grid)


def top_k_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Exact mean of the k largest values of each map (ties included: the top-k multiset is unique).

    torch.topk on purpose: on an H100 (B=16, 256x256, k=655) it takes ~65 us of GPU time, where a
    one-program-per-map Triton radix select took 136-300 us and chunked two-stage topk 98-220 us."""
    return maps.flatten(1).topk(k, dim=1, sorted=False).values.mean(dim=1)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def anomaly_maps_and_scores(enc: Sequence[torch.Tensor], dec: Sequence[torch.Tensor], image_size: Size,
                            out_size: Size = 256, kernel_size: int = 5, sigma: float = 4.0,
                            top_fraction: float = 0.01,
                            grid: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (B, out_h, out_w) float32 and image scores (B,).

    The fused Triton path when ``use_kernel`` selects it (in ``auto``: CUDA, and a recorded measurement
    shows it faster for this device class and dtype, see :mod:`kernels.evidence`), else the reference."""
    _check_sizes(image_size, out_size, kernel_size, sigma)
    out_h, out_w = _hw(out_size)
    k = top_k_count(out_h * out_w, top_fraction)
    if use_kernel("scoring", *enc, *dec):
        a = _mean_cosine_distance_triton(enc, dec, grid)            # validates enc/dec
        rows, cols = scoring_matrices(a.shape[-2:], image_size, out_size, kernel_size, sigma, a.device)
        maps = _token_map_to_image_triton(a, rows, cols)
    else:
        maps = anomaly_map_reference(enc, dec, image_size, out_size, kernel_size, sigma, grid)
    return maps, top_k_mean(maps, k)


def upsample_token_map(token_map: torch.Tensor, image_size: Size, out_size: Size = 256, kernel_size: int = 5,
                       sigma: float = 4.0, grid: Sequence[int] | None = None) -> torch.Tensor:
    """Steps 2-4 (upsample, resize, blur) of a per-token map (B, N) -> (B, out_h, out_w) float32.

    Used for zero-shot maps (distance to the nearest prototype). The Triton map kernel when
    ``use_kernel`` selects it, else the reference."""
    _check_sizes(image_size, out_size, kernel_size, sigma)
    grid = _check_token_map(token_map, grid)
    if use_kernel("token_map", token_map):  # never measured alone: auto keeps the reference
        rows, cols = scoring_matrices(grid, image_size, out_size, kernel_size, sigma, token_map.device)
        return _token_map_to_image_triton(token_map.reshape(-1, *grid), rows, cols)
    return upsample_token_map_reference(token_map, image_size, out_size, kernel_size, sigma, grid)
