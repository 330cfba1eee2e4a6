"""Scoring: the fused Triton path and the matrix form equal the authors' reference path.

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest), fp32 only;
with a GPU the same tests run on CUDA tensors, and the low-precision checks run too.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from kernels import scoring
from kernels.dispatch import kernel_mode
from kernels.scoring import (anomaly_map_matrix, anomaly_map_reference, anomaly_maps_and_scores,
                             image_score_reference, scoring_matrix, top_k_count, top_k_mean,
                             upsample_token_map, upsample_token_map_reference)
from tests.conftest import requires_cuda

MAP_TOL = dict(rtol=1e-5, atol=2e-6)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # where the forced-kernel tests run


def _features(seed: int, batch: int, groups: int, grid: int, channels: int, noise: float = 0.6,
              dtype: torch.dtype = torch.float32, device: str = DEVICE):
    """Random encoder/decoder groups; decoder = encoder + noise so 1 - cos spreads over (0, 2)."""
    gen = torch.Generator().manual_seed(seed)
    enc, dec = [], []
    for _ in range(groups):
        e = torch.randn(batch, grid * grid, channels, generator=gen)
        scale = noise * torch.rand(batch, grid * grid, 1, generator=gen) * 2
        d = e + scale * torch.randn(batch, grid * grid, channels, generator=gen)
        enc.append(e.to(device, dtype))
        dec.append(d.to(device, dtype))
    return enc, dec


@contextlib.contextmanager
def _exact_cudnn():
    """cuDNN convolutions default to TF32 on CUDA (so does the authors' code); the references these
    tests compare with must be plain fp32."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _fp32_references():
    with _exact_cudnn():
        yield


def _fused(enc, dec, image_size, out_size):
    with kernel_mode("triton"):
        return anomaly_maps_and_scores(enc, dec, image_size, out_size)


# batch, groups, grid, image_size, out_size, channels
SHAPES = [
    (1, 2, 28, 392, 256, 768),   # the paper's setting
    (3, 2, 28, 392, 256, 768),
    (3, 2, 28, 400, 256, 7),     # image size not a multiple of 14
    (3, 3, 8, 112, 64, 48),
    (1, 1, 8, 100, 37, 768),
    (3, 1, 5, 70, 37, 7),
    (3, 3, 5, 67, 64, 48),
    (1, 5, 5, 70, 37, 7),        # more groups than one kernel launch takes: chunked
]


@pytest.mark.parametrize("batch,groups,grid,image_size,out_size,channels", SHAPES)
def test_fused_and_matrix_equal_reference(batch, groups, grid, image_size, out_size, channels):
    enc, dec = _features(hash((batch, groups, grid, image_size, out_size, channels)) % 2**31,
                         batch, groups, grid, channels)
    ref = anomaly_map_reference(enc, dec, image_size, out_size)
    ref_scores = image_score_reference(ref)
    assert ref.shape == (batch, out_size, out_size) and ref.dtype == torch.float32

    maps, scores = _fused(enc, dec, image_size, out_size)
    assert maps.shape == ref.shape and maps.dtype == torch.float32 and scores.shape == (batch,)
    torch.testing.assert_close(maps, ref, **MAP_TOL)
    torch.testing.assert_close(scores, ref_scores, **MAP_TOL)

    matrix_maps = anomaly_map_matrix(enc, dec, image_size, out_size)
    torch.testing.assert_close(matrix_maps, ref, **MAP_TOL)
    torch.testing.assert_close(image_score_reference(matrix_maps), ref_scores, **MAP_TOL)


# Non-square token grids (keep-aspect models): odd sizes, taller and wider, against the reference.
# batch, groups, (grid_h, grid_w), (image_h, image_w), (out_h, out_w), channels
NON_SQUARE = [
    (2, 2, (5, 9), (70, 126), (20, 36), 7),     # wide; the map kernel's padded token rows and columns differ
    (1, 1, (9, 4), (126, 56), (45, 20), 48),    # tall; one group
]


@pytest.mark.parametrize("batch,groups,grid,image_size,out_size,channels", NON_SQUARE)
def test_non_square_grids_fused_and_matrix_equal_reference(batch, groups, grid, image_size, out_size, channels):
    gen = torch.Generator().manual_seed(grid[0] * 100 + grid[1])
    n = grid[0] * grid[1]
    enc = [torch.randn(batch, n, channels, generator=gen).to(DEVICE) for _ in range(groups)]
    dec = [e + 0.6 * torch.randn(e.shape, generator=gen).to(DEVICE) for e in enc]
    ref = anomaly_map_reference(enc, dec, image_size, out_size, grid=grid)
    assert ref.shape == (batch, *out_size)
    # tokens are row-major (grid_h, grid_w): the bottom-left token lights up the bottom-left corner
    hot = torch.zeros(1, n, dtype=torch.float64)
    hot[0, (grid[0] - 1) * grid[1]] = 1.0
    peak = upsample_token_map_reference(hot, image_size, out_size, grid=grid)[0]
    row, col = divmod(int(peak.argmax()), out_size[1])
    assert row >= out_size[0] * 3 // 4 and col < out_size[1] // 4
    with kernel_mode("triton"):
        maps, scores = anomaly_maps_and_scores(enc, dec, image_size, out_size, grid=grid)
    torch.testing.assert_close(maps, ref, **MAP_TOL)
    torch.testing.assert_close(scores, image_score_reference(ref), **MAP_TOL)
    assert top_k_count(out_size[0] * out_size[1], 0.01) == max(1, out_size[0] * out_size[1] // 100)
    torch.testing.assert_close(anomaly_map_matrix(enc, dec, image_size, out_size, grid=grid), ref, **MAP_TOL)
    # the per-token map path (zero-shot maps), kernel and reference
    token_map = torch.rand(batch, n, generator=gen).to(DEVICE)
    expected = upsample_token_map_reference(token_map, image_size, out_size, grid=grid)
    with kernel_mode("triton"):
        torch.testing.assert_close(upsample_token_map(token_map, image_size, out_size, grid=grid), expected,
                                   **MAP_TOL)
    rows, cols = scoring.scoring_matrices(grid, image_size, out_size, device=DEVICE)
    torch.testing.assert_close(rows @ token_map.view(batch, *grid) @ cols.T, expected, **MAP_TOL)


def test_non_square_launch_and_grid_validation():
    launch = scoring.token_map_launch(torch.empty(2, 5, 40, device="meta"), torch.empty(20, 5, device="meta"),
                                      torch.empty(160, 40, device="meta"))
    assert launch.args["out_ptr"].shape == (2, 20, 160)
    assert (launch.constexprs["GRID_P"], launch.constexprs["GRID_Q"]) == (16, 64)
    enc, dec = _features(1, 1, 1, 6, 7)                                     # 36 tokens
    with pytest.raises(ValueError, match="do not form the grid 5x8"):
        anomaly_map_reference(enc, dec, 70, grid=(5, 8))
    assert anomaly_map_reference(enc, dec, (56, 126), (8, 18), grid=(4, 9)).shape == (1, 8, 18)


def test_fused_handles_strided_and_degenerate_tokens():
    """Features in (B, C, N) memory seen as (B, N, C), mixed layouts, and zero / tiny tokens (eps clamp)."""
    gen = torch.Generator().manual_seed(7)
    batch, grid, channels = 2, 8, 48
    enc = [torch.randn(batch, channels, grid * grid, generator=gen).to(DEVICE).transpose(1, 2) for _ in range(2)]
    dec = [e + 0.5 * torch.randn(e.shape, generator=gen).to(DEVICE) for e in enc]  # contiguous: mixed strides
    enc[0][0, :5] = 0.0
    enc[1][1, 3:9] *= 1e-6
    dec[0][1, 10:12] = 0.0
    ref = anomaly_map_reference(enc, dec, 112, 64)
    maps, scores = _fused(enc, dec, 112, 64)
    torch.testing.assert_close(maps, ref, **MAP_TOL)
    torch.testing.assert_close(scores, image_score_reference(ref), **MAP_TOL)
    # all-transposed: one shared stride set with channel stride N (no copy)
    dec_t = [torch.randn(batch, channels, grid * grid, generator=gen).to(DEVICE).transpose(1, 2) for _ in range(2)]
    torch.testing.assert_close(_fused(enc, dec_t, 112, 64)[0], anomaly_map_reference(enc, dec_t, 112, 64),
                               **MAP_TOL)


@pytest.mark.parametrize("grid,image_size,out_size", [(5, 67, 37), (8, 112, 64), (28, 392, 256)])
def test_scoring_matrix_is_the_reference_on_basis_maps(grid, image_size, out_size):
    """Gm[:, p] Gm[:, q]^T is the reference (float64) applied to the basis map e_p e_q^T."""
    gm = scoring_matrix(grid, image_size, out_size, 5, 4.0, "cpu", torch.float64)
    assert gm.shape == (out_size, grid)
    pairs = torch.arange(grid * grid) if grid <= 8 else torch.randperm(grid * grid,
                                                                        generator=torch.Generator().manual_seed(3))[:20]
    basis = torch.zeros(len(pairs), grid * grid, dtype=torch.float64)
    basis[torch.arange(len(pairs)), pairs] = 1.0
    ref = upsample_token_map_reference(basis, image_size, out_size)
    expected = gm[:, pairs // grid].T[:, :, None] * gm[:, pairs % grid].T[:, None, :]
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-13)
    # rows of Gm sum to the blur's mass at that row (1 away from the zero-padded border)
    assert torch.allclose(gm[out_size // 2].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_scoring_matrix_is_cached_and_typed():
    a = scoring_matrix(28, 392, 256, 5, 4.0, "cpu", torch.float32)
    assert a is scoring_matrix(28, 392, 256, 5, 4.0, torch.device("cpu"), torch.float32)
    assert a.dtype == torch.float32 and a.is_contiguous()
    torch.testing.assert_close(a, scoring_matrix(28, 392, 256, 5, 4.0, "cpu", torch.float64).float(),
                               rtol=0, atol=0)


@pytest.mark.parametrize("batch,grid,image_size,out_size", [(3, 28, 392, 256), (2, 5, 67, 37), (1, 8, 100, 64)])
def test_upsample_token_map(batch, grid, image_size, out_size):
    gen = torch.Generator().manual_seed(grid * out_size)
    token_map = torch.rand(batch, grid * grid, generator=gen) * 3
    ref = upsample_token_map_reference(token_map, image_size, out_size)
    assert ref.shape == (batch, out_size, out_size)
    torch.testing.assert_close(upsample_token_map(token_map, image_size, out_size), ref, rtol=0, atol=0)  # CPU: ref
    with kernel_mode("triton"):
        fused = upsample_token_map(token_map.to(DEVICE), image_size, out_size).cpu()
    torch.testing.assert_close(fused, ref, **MAP_TOL)
    gm = scoring_matrix(grid, image_size, out_size)
    torch.testing.assert_close(gm @ token_map.view(batch, grid, grid) @ gm.T, ref, **MAP_TOL)


def _sorted_top_mean64(maps: torch.Tensor, k: int) -> torch.Tensor:
    values = maps.double().flatten(1).sort(dim=1, descending=True).values
    return values[:, :k].mean(dim=1)


@pytest.mark.parametrize("levels", [2, 7, 40])
def test_top_k_mean_exact_with_ties(levels):
    """Quantised maps: thousands of exact ties straddle the k-th value; sums of multiples of 1/8 are
    exact in fp32, so every path must give the float64 sorted answer to the last bit."""
    gen = torch.Generator().manual_seed(levels)
    maps = torch.randint(0, levels, (4, 256, 256), generator=gen).float() / 8
    maps[1] = 0.625                                          # a constant map
    maps[2, :3, :3] = 100.0                                  # a few outliers above a huge tie
    k = top_k_count(256 * 256, 0.01)
    assert k == 655
    expected = _sorted_top_mean64(maps, k).float()
    assert torch.equal(top_k_mean(maps, k), expected)
    assert torch.equal(image_score_reference(maps), expected)


def test_scores_with_ties_through_the_fused_path():
    """Identical tokens make every map constant (all 65536 values tie); the score is that value."""
    enc = [torch.ones(2, 64, 16, device=DEVICE), torch.ones(2, 64, 16, device=DEVICE)]
    dec = [torch.ones(2, 64, 16, device=DEVICE), -torch.ones(2, 64, 16, device=DEVICE)]  # 1 - cos: 0 and 2
    maps, scores = _fused(enc, dec, 112, 37)
    ref = anomaly_map_reference(enc, dec, 112, 37)
    torch.testing.assert_close(maps, ref, **MAP_TOL)
    torch.testing.assert_close(scores, _sorted_top_mean64(ref, top_k_count(37 * 37, 0.01)).float(), **MAP_TOL)


def test_dispatch(monkeypatch):
    enc, dec = _features(11, 2, 2, 5, 7, device="cpu")
    calls = []
    real = scoring._mean_cosine_distance_triton
    monkeypatch.setattr(scoring, "_mean_cosine_distance_triton", lambda *a: calls.append(1) or real(*a))
    ref = anomaly_map_reference(enc, dec, 70, 37)
    maps, scores = anomaly_maps_and_scores(enc, dec, 70, 37)            # CPU, auto: the reference
    assert not calls and torch.equal(maps, ref) and torch.equal(scores, image_score_reference(ref))
    enc, dec = [e.to(DEVICE) for e in enc], [d.to(DEVICE) for d in dec]
    with kernel_mode("reference"):
        maps, _ = anomaly_maps_and_scores(enc, dec, 70, 37)
    assert not calls
    torch.testing.assert_close(maps.cpu(), ref, **MAP_TOL)
    with kernel_mode("triton"):
        maps, _ = anomaly_maps_and_scores(enc, dec, 70, 37)
    assert calls
    torch.testing.assert_close(maps.cpu(), ref, **MAP_TOL)


def test_launch_specs_chunk_groups_and_prune_configs():
    """What the host functions launch: groups in chunks of up to 4 whose outputs sum to the mean, and
    the autotune prune hook (every argument passed by name) keeps what prune_cos_configs keeps."""
    enc = [torch.empty(2, 16, 768, device="meta") for _ in range(6)]
    dec = [torch.empty(2, 16, 768, device="meta") for _ in range(6)]
    launches = scoring.cosine_distance_launches(enc, dec)
    assert [launch.constexprs["NUM_GROUPS"] for launch in launches] == [4, 2]
    assert all(launch.args["scale"] == 1 / 6 and launch.args["out_ptr"].shape == (32,) for launch in launches)
    assert launches[1].args["e0"] is enc[4] and launches[1].args["e2"] is enc[4]   # unused slots: a valid pointer
    assert launches[0].grid({"BLOCK_N": 8}) == (4,)
    fp32 = scoring.prune_cos_configs(scoring.COS_CONFIGS, 768, 4)
    assert len(fp32) == len(scoring.COS_CONFIGS) - 2                               # the two register-bound tiles
    assert scoring.prune_cos_configs(scoring.COS_CONFIGS, 768, 2) == scoring.COS_CONFIGS
    assert all(c.kwargs["BLOCK_C"] <= 64 for c in scoring.prune_cos_configs(scoring.COS_CONFIGS, 40, 4))
    for dtype, kept in ((torch.float32, fp32), (torch.bfloat16, scoring.COS_CONFIGS)):
        args = {**launches[0].args, "e0": torch.empty(0, dtype=dtype)}
        assert scoring._prune_cos_hook(scoring.COS_CONFIGS, {}, **args, **launches[0].constexprs) == kept
    maps = scoring.token_map_launch(torch.empty(3, 28, 28, device="meta"), torch.empty(256, 28, device="meta"))
    assert maps.args["out_ptr"].shape == (3, 256, 256) and maps.constexprs["GRID_P"] == 32


def test_validation():
    enc, dec = _features(0, 2, 2, 5, 7)
    with pytest.raises(ValueError, match="groups"):
        anomaly_maps_and_scores(enc, dec[:1], 70)
    with pytest.raises(ValueError, match="at least one"):
        anomaly_maps_and_scores([], [], 70)
    with pytest.raises(ValueError, match="sequences"):
        anomaly_map_reference(enc[0], dec[0], 70)
    with pytest.raises(ValueError, match="shape"):
        anomaly_map_matrix(enc, [dec[0], dec[1][:, :, :5]], 70)
    with pytest.raises(ValueError, match="square"):
        anomaly_map_reference([e[:, :24] for e in enc], [d[:, :24] for d in dec], 70)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        anomaly_map_reference([e[0] for e in enc], [d[0] for d in dec], 70)
    with pytest.raises(ValueError, match="odd"):
        anomaly_maps_and_scores(enc, dec, 70, kernel_size=4)
    with pytest.raises(ValueError, match="top_fraction"):
        anomaly_maps_and_scores(enc, dec, 70, top_fraction=0.0)
    with pytest.raises(ValueError, match="image_size"):
        anomaly_maps_and_scores(enc, dec, 0)
    with pytest.raises(ValueError, match="square"):
        upsample_token_map(torch.rand(2, 24), 70)


# ---------------------------------------------------------------------------------------- CUDA

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_low_precision_on_cuda(dtype):
    """|kernel - ref64| <= 2 |torch in dtype - ref64| + atol, at the paper's size."""
    enc, dec = _features(5, 16, 2, 28, 768, dtype=dtype, device="cuda")
    ref64 = anomaly_map_reference([e.double() for e in enc], [d.double() for d in dec], 392, 256)
    low = anomaly_map_reference(enc, dec, 392, 256)
    maps, scores = _fused(enc, dec, 392, 256)
    atol = 2e-6
    assert ((maps.double() - ref64).abs() <= 2 * (low.double() - ref64).abs() + atol).all()
    s64, s_low = image_score_reference(ref64), image_score_reference(low).double()
    assert ((scores.double() - s64).abs() <= 2 * (s_low - s64).abs() + atol).all()


@requires_cuda
def test_fused_on_cuda_matches_cpu_reference_shapes():
    for batch, groups, grid, image_size, out_size, channels in SHAPES:
        enc, dec = _features(1, batch, groups, grid, channels, device="cuda")
        ref = anomaly_map_reference(enc, dec, image_size, out_size)
        with kernel_mode("triton"):  # auto follows kernels.evidence, which may pick the reference
            maps, scores = anomaly_maps_and_scores(enc, dec, image_size, out_size)
            token_map = ref[:, :grid, :grid].reshape(batch, -1).contiguous()
            upsampled = upsample_token_map(token_map, image_size, out_size)
        torch.testing.assert_close(maps, ref, **MAP_TOL)
        torch.testing.assert_close(scores, image_score_reference(ref), **MAP_TOL)
        torch.testing.assert_close(upsampled, upsample_token_map_reference(token_map, image_size, out_size), **MAP_TOL)
