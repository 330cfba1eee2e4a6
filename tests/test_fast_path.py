"""The inference fast path (inp_former/fast_path.py): same maps as score_batch, and its fallback.

On CPU the fast path runs eager; the CUDA graph tests run on a GPU only.
"""
import pytest
import torch

from inp_former.config import RunConfig
from inp_former.inference import InferenceConfig, resolve_precision, score_batch
from inp_former.fast_path import DISABLED, NO_CUDA, FastScorer, scoring_function
from tests.conftest import requires_cuda
from tests.helpers import tiny_model

# bf16 keeps 8 significant bits: one rounding is a relative error of at most 2^-9. Features pass
# ~20 bf16 matmuls (encoder blocks, decoder) with fp32 accumulation, and the maps are 1 - cos of
# them, averaged over tokens by the upsampling; the maps' error measured over 3 seeds x 2 map modes
# is 0.12-0.29 % of the map maximum. 2^-6 (1.6 %, four bf16 steps) leaves 5x headroom and would
# still catch a real error (a wrong layer or a dropped group moves the maps by tens of percent).
BF16_MAP_RTOL = 2.0 ** -6
BF16_SCORE_RTOL = 2.0 ** -6


def _setup(seed: int = 0, batch: int = 3):
    model = tiny_model(seed)
    cfg = RunConfig(model=model.cfg)
    images = torch.randn(batch, 3, 56, 56, generator=torch.Generator().manual_seed(seed))
    return model, cfg, images


@pytest.mark.parametrize("map_mode", ["decoder", "prototype"])
def test_fp32_fast_path_gives_score_batch_maps_exactly(map_mode):
    model, cfg, images = _setup()
    expected_maps, expected_scores, _ = score_batch(model, images, cfg, "fp32", map_mode)
    scorer = scoring_function(model, cfg, InferenceConfig(map_mode=map_mode, precision="fp32", fast=True), "cpu")
    maps, scores = scorer(images)
    assert maps.shape == (3, cfg.model.map_size, cfg.model.map_size) and maps.dtype == torch.float32
    assert torch.equal(maps, expected_maps) and torch.equal(scores, expected_scores)
    # the eager path (--no-fast) gives the same numbers
    slow_maps, slow_scores = scoring_function(model, cfg, InferenceConfig(map_mode=map_mode, precision="fp32"),
                                              "cpu")(images)
    assert torch.equal(slow_maps, expected_maps) and torch.equal(slow_scores, expected_scores)


@pytest.mark.parametrize("map_mode", ["decoder", "prototype"])
def test_bf16_fast_path_is_close_to_fp32(map_mode):
    model, cfg, images = _setup(seed=1)
    reference_maps, reference_scores, _ = score_batch(model, images, cfg, "fp32", map_mode)
    maps, scores = FastScorer(model, cfg, map_mode, "bf16", "cpu")(images)
    error = (maps - reference_maps).abs().max() / reference_maps.abs().max()
    assert 0 < error < BF16_MAP_RTOL  # > 0: autocast really ran in bf16
    torch.testing.assert_close(scores, reference_scores, rtol=BF16_SCORE_RTOL, atol=0)
    # ... and it is exactly what score_batch computes in bf16 (the cast cache does not change values)
    bf16_maps, bf16_scores, _ = score_batch(model, images, cfg, "bf16", map_mode)
    assert torch.equal(maps, bf16_maps) and torch.equal(scores, bf16_scores)


def test_cpu_runs_eager_and_says_why():
    model, cfg, images = _setup(batch=2)
    # torch's eager path (runtime auto may pick OpenVINO on this CPU: tests/test_openvino_runtime.py)
    fast = scoring_function(model, cfg, InferenceConfig(fast=True, runtime="torch"), "cpu")
    assert fast.mode == "eager" and fast.fallback_reason == NO_CUDA
    # CPU default: auto (bf16 where the CPU has AMX-BF16 / AVX-512-BF16, else fp32), dispatcher's kernels
    assert fast.precision == str(resolve_precision("auto", "cpu")) and fast.kernels is None
    assert fast.precision_reason.startswith("auto: CPU has") and fast.precision_reason in fast.describe()
    assert "no CUDA device" in fast.describe()
    slow = scoring_function(model, cfg, InferenceConfig(runtime="torch"), "cpu")
    assert slow.mode == "eager" and slow.fallback_reason == DISABLED and slow.kernels is None
    assert scoring_function(model, cfg, InferenceConfig(precision="bf16", runtime="torch"), "cpu").precision == "bf16"


def test_explicit_kernel_choice_is_kept_with_no_fast(monkeypatch):
    model, cfg, _ = _setup()
    monkeypatch.setenv("INPCTL_KERNELS", "auto")
    assert scoring_function(model, cfg, InferenceConfig(runtime="torch"), "cpu").kernels is None


def test_a_failed_capture_falls_back_to_eager_once_and_says_why():
    """Force the graph path on CPU: the capture fails (no CUDA stream), the scorer warns once,
    reports the reason, and still returns the eager maps."""
    model, cfg, images = _setup(batch=2)
    messages = []
    scorer = FastScorer(model, cfg, "decoder", "fp32", "cpu", on_fallback=messages.append)
    scorer.mode, scorer.fallback_reason = "cuda-graph", None
    with pytest.warns(RuntimeWarning, match="running eager"):
        maps, scores = scorer(images)
    assert scorer.mode == "eager" and scorer.fallback_reason.startswith("capture failed for shape (2, 3, 56, 56)")
    assert len(messages) == 1 and scorer.fallback_reason in messages[0]
    expected_maps, expected_scores, _ = score_batch(model, images, cfg, "fp32")
    assert torch.equal(maps, expected_maps) and torch.equal(scores, expected_scores)
    scorer(images)  # eager from now on: no second warning, no second callback
    assert len(messages) == 1


def test_bad_arguments_are_refused():
    model, cfg, images = _setup()
    with pytest.raises(ValueError, match="map_mode .nearest.: expected one of decoder, prototype"):
        FastScorer(model, cfg, "nearest", "fp32", "cpu")
    with pytest.raises(ValueError, match="precision .fp16.: expected one of auto, fp32, bf16"):
        FastScorer(model, cfg, "decoder", "fp16", "cpu")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FastScorer(model, cfg, "decoder", "fp32", "cpu")(images[0])


# ---------------------------------------------------------------------------------------------
# CUDA: graph replay against eager, one graph per shape, padded ragged batches
# ---------------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_equals_eager(precision):
    model, cfg, images = _setup(batch=2)
    model = model.cuda()
    scorer = FastScorer(model, cfg, "decoder", precision, "cuda")
    maps, scores = scorer(images.cuda())
    assert scorer.mode == "cuda-graph" and scorer.fallback_reason is None, scorer.fallback_reason
    eager_maps, eager_scores, _ = score_batch(model, images.cuda(), cfg, precision)
    scale = eager_maps.abs().max()
    tol = 1e-3 if precision == "bf16" else 1e-5   # same kernels: only nondeterministic reductions differ
    assert (maps - eager_maps).abs().max() <= tol * scale
    torch.testing.assert_close(scores, eager_scores, rtol=tol, atol=0)
    # a second call replays (no new capture) and its outputs are not overwritten by a third
    other = torch.randn_like(images).cuda()
    first_again, _ = scorer(images.cuda())
    scorer(other)
    assert len(scorer.graphs) == 1 and torch.equal(first_again, maps)


@requires_cuda
def test_cuda_second_batch_shape_captures_second_graph_and_ragged_batches_pad():
    model, cfg, _ = _setup()
    model = model.cuda()
    scorer = FastScorer(model, cfg, "decoder", "fp32", "cuda")
    generator = torch.Generator().manual_seed(3)
    two, four, three = (torch.randn(b, 3, 56, 56, generator=generator) for b in (2, 4, 3))
    scorer(two)                      # CPU input: copied into the static buffer
    assert len(scorer.graphs) == 1
    maps4, _ = scorer(four.cuda())
    assert len(scorer.graphs) == 2 and set(scorer.graphs) == {(2, 3, 56, 56), (4, 3, 56, 56)}
    maps3, scores3 = scorer(three.cuda())  # padded into the batch-4 graph
    assert len(scorer.graphs) == 2 and maps3.shape[0] == 3 and scores3.shape == (3,)
    for batch, maps in ((four, maps4), (three, maps3)):
        eager, _, _ = score_batch(model, batch.cuda(), cfg, "fp32")
        assert (maps - eager).abs().max() <= 1e-5 * eager.abs().max()
    assert scorer.mode == "cuda-graph"
