"""The scoring runtime (inp_former/inference.py ``choose_runtime``, inp_former/openvino_runtime.py):
``auto`` scores through OpenVINO on a CPU with native bf16 where OpenVINO is installed and the model
exports, torch otherwise and always for fp32; every output names the runtime and why.

The rules and the errors are tested with OpenVINO's presence monkeypatched (no OpenVINO needed);
the scorer itself, and predict/eval/serve through it, where OpenVINO is installed (the dev extra).
Models: untrained INP-Former on a random ViT-S at 56 px (tests/helpers.py): numbers only compare
runtimes, they say nothing about INP-Former.
"""
from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch
from typer.testing import CliRunner

import inp_former.runtime as runtime
from inp_former.config import DataConfig, RunConfig
from inp_former.errors import ConfigError
from inp_former.inference import InferenceConfig, Runtime, choose_runtime, score_batch
from inp_former.runtime import cpu_capabilities
from inpctl.cli import app
from tests.helpers import tiny_config, tiny_model

AMX = "flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni\n"
PLAIN = "flags\t\t: fpu sse avx2\n"
INSTALL = "pip install 'inpctl[openvino]'"
NATIVE_BF16 = cpu_capabilities().native_bf16 is not None   # this machine's CPU, for the real OpenVINO tests

# OpenVINO in bf16 against the torch fp32 reference: bf16 keeps 8 significant bits; OpenVINO runs the
# network in bf16 and the map head runs in torch fp32, as torch's autocast path does. Seen here (tiny
# random ViT-S, 3 seeds, both map modes): maps 0.07-0.27 % of the map maximum off (torch's bf16:
# 0.09-0.22 %), scores 0.03-0.10 %, embeddings 0.27 %; 0.42 % at 392 px (docs/performance.md).
# 2^-7 (0.78 %) leaves about 3x headroom and still catches a wrong graph (a dropped layer moves maps
# by tens of percent) or a head run in bf16 again (about 1 % at 392 px).
BF16_MAP_RTOL = 2.0 ** -7
BF16_RTOL = 2.0 ** -7
# OpenVINO in f32: the same graph as the reference, so only the summation order differs (3e-7 seen)
FP32_RTOL = 1e-5

runner = CliRunner()


@pytest.fixture(autouse=True)
def _auto_means_auto(monkeypatch):
    """tests/conftest.py makes the suite score with torch (INPCTL_RUNTIME=torch); here auto is tested."""
    monkeypatch.delenv("INPCTL_RUNTIME", raising=False)


@pytest.mark.parametrize("value, expected, reason", [
    ("torch", "torch", "environment (INPCTL_RUNTIME=torch)"),
    ("openvino", "openvino", "environment (INPCTL_RUNTIME=openvino)"),
    ("auto", "openvino", "auto: CPU has AMX-BF16 and OpenVINO 2026.4.1 is installed"),
])
def test_the_environment_sets_what_auto_means(monkeypatch, value, expected, reason):
    _cpu(monkeypatch, AMX)
    _fake_openvino(monkeypatch, True)
    monkeypatch.setenv("INPCTL_RUNTIME", value)
    assert choose_runtime("auto", "auto", "cpu") == (expected, reason)
    assert choose_runtime("torch", "auto", "cpu") == ("torch", "given")          # a runtime asked for wins
    monkeypatch.setenv("INPCTL_RUNTIME", "onnx")
    with pytest.raises(ConfigError, match="INPCTL_RUNTIME 'onnx': expected one of auto, torch, openvino"):
        choose_runtime("auto", "auto", "cpu")


def _fake_openvino(monkeypatch, present: bool) -> None:
    """OpenVINO (and onnx, which exports the graph it runs) importable or not, whatever is installed."""
    if present:
        fake = types.ModuleType("openvino")
        fake.__version__ = "2026.4.1-22982-e213a147257-releases/2026/4"
        monkeypatch.setitem(sys.modules, "openvino", fake)
        monkeypatch.setitem(sys.modules, "onnx", sys.modules.get("onnx") or types.ModuleType("onnx"))
    else:
        monkeypatch.setitem(sys.modules, "openvino", None)   # None in sys.modules: import raises ImportError


def _cpu(monkeypatch, cpuinfo: str) -> None:
    """This CPU's flags are ``cpuinfo`` (AMX, PLAIN, or their names "amx", "plain")."""
    cpuinfo = {"amx": AMX, "plain": PLAIN}.get(cpuinfo, cpuinfo)
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: cpu_capabilities(cpuinfo))


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


# --- the rule, without OpenVINO ------------------------------------------------------------------------

TILED = tiny_config(tile=56, tile_overlap=14, map_size=56)


@pytest.mark.parametrize("cpuinfo, installed, asked, precision, device, model, kernels, expected, reason", [
    ("amx", True, "auto", "auto", "cpu", None, None, "openvino",
     "auto: CPU has AMX-BF16 and OpenVINO 2026.4.1 is installed"),
    ("amx", True, None, "bf16", "cpu", None, None, "openvino",          # None: auto, as the default
     "auto: CPU has AMX-BF16 and OpenVINO 2026.4.1 is installed"),
    ("amx", True, "auto", "fp32", "cpu", None, None, "torch", "auto: fp32 asked for (the reference path)"),
    ("plain", True, "auto", "auto", "cpu", None, None, "torch",
     "auto: CPU has no native bf16 unit (AMX-BF16 or AVX-512-BF16)"),
    ("plain", True, "auto", "bf16", "cpu", None, None, "torch",
     "auto: CPU has no native bf16 unit (AMX-BF16 or AVX-512-BF16)"),
    ("amx", False, "auto", "auto", "cpu", None, None, "torch", f"auto: openvino not installed ({INSTALL})"),
    ("amx", True, "auto", "auto", "cuda", None, None, "torch", "auto: device cuda (OpenVINO runs on CPUs)"),
    ("amx", True, "auto", "auto", "cpu", TILED, None, "torch",
     "auto: a tiled model (tile 56 px) is not exported to ONNX"),
    ("amx", True, "auto", "auto", "cpu", None, "reference", "torch",
     "auto: kernels reference forced (they run in torch)"),
    ("amx", True, "torch", "auto", "cpu", None, None, "torch", "given"),
    ("amx", True, "openvino", "auto", "cpu", None, None, "openvino", "given"),
    ("plain", True, "openvino", "fp32", "cpu", None, None, "openvino", "given"),   # asked for: f32 in OpenVINO
])
def test_choose_runtime(monkeypatch, cpuinfo, installed, asked, precision, device, model, kernels, expected, reason):
    _cpu(monkeypatch, cpuinfo)
    _fake_openvino(monkeypatch, installed)
    assert choose_runtime(asked, precision, device, model, "decoder", kernels) == (expected, reason)


@pytest.mark.parametrize("installed, device, model, kernels, message", [
    (False, "cpu", None, None, f"runtime openvino: openvino not installed ({INSTALL})"),
    (True, "cuda", None, None, "runtime openvino: runs on a CPU, not on device cuda"),
    (True, "cpu", TILED, None, "runtime openvino: a tiled model (tile 56 px) is not exported to ONNX"),
    (True, "cpu", None, "fused", "runtime openvino: kernels fused run in torch only"),
])
def test_openvino_asked_for_where_it_cannot_run_is_one_line_naming_runtime(monkeypatch, installed, device, model,
                                                                           kernels, message):
    _cpu(monkeypatch, AMX)
    _fake_openvino(monkeypatch, installed)
    with pytest.raises(ConfigError) as caught:
        choose_runtime("openvino", "auto", device, model, "decoder", kernels)
    assert str(caught.value).startswith(message) and caught.value.arg == "runtime"
    assert "\n" not in str(caught.value)


def test_inference_config_validates_runtime(monkeypatch):
    assert InferenceConfig().runtime == "auto" and InferenceConfig(runtime="torch").runtime == Runtime.TORCH
    with pytest.raises(ConfigError, match="runtime 'onnx': expected one of auto, torch, openvino"):
        InferenceConfig(runtime="onnx")
    _fake_openvino(monkeypatch, False)
    with pytest.raises(ConfigError) as caught:
        InferenceConfig(runtime="openvino")   # at once, before any model is loaded
    assert str(caught.value) == f"runtime openvino: openvino not installed ({INSTALL})"
    assert InferenceConfig().runtime == "auto"   # auto without OpenVINO is torch, not an error


def test_cli_choices_are_the_runtimes():
    from inpctl.helpers import RUNTIME_CHOICES

    assert RUNTIME_CHOICES == "[" + "|".join(r.value for r in Runtime) + "]"


@pytest.mark.parametrize("command", ["predict", "eval", "serve"])
def test_runtime_openvino_without_openvino_is_one_line_and_exit_2(monkeypatch, tmp_path, command):
    from tests.predict_setup import save_tiny_checkpoint, write_image

    if command == "serve":
        pytest.importorskip("starlette")
    _fake_openvino(monkeypatch, False)
    ckpt = save_tiny_checkpoint(tmp_path / "checkpoint.pt")
    args = {"predict": ["predict", "--ckpt", str(ckpt), str(write_image(tmp_path / "a.png", 64, 64)),
                        "--out", str(tmp_path / "out")],
            "eval": ["eval", "--ckpt", str(ckpt), "--out", str(tmp_path / "out")],
            "serve": ["serve", "--ckpt", str(ckpt), "--port", "0"]}[command]
    result = runner.invoke(app, [*args, "--runtime", "openvino", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: --runtime openvino: openvino not installed ({INSTALL})"]


def test_auto_falls_back_to_torch_when_openvino_fails_and_says_why(monkeypatch):
    """Under auto a model OpenVINO cannot export or compile is scored by torch, with a warning and
    the reason in the scorer; asked for explicitly, the failure is the user's error."""
    import inp_former.openvino_runtime as openvino_runtime
    from inp_former.fast_path import FastScorer, scoring_function

    _cpu(monkeypatch, AMX)
    _fake_openvino(monkeypatch, True)

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot compile\nsecond line")

    monkeypatch.setattr(openvino_runtime, "OpenVinoScorer", refuse)
    model = tiny_model()
    messages = []
    with pytest.warns(RuntimeWarning, match="runtime auto: scoring with torch"):
        scorer = scoring_function(model, RunConfig(model=model.cfg), InferenceConfig(), "cpu", messages.append)
    assert isinstance(scorer, FastScorer) and scorer.runtime == "torch" and scorer.precision == "bf16"
    assert scorer.runtime_reason == "auto: OpenVINO failed (RuntimeError: cannot compile)"
    assert messages == ["runtime auto: scoring with torch, auto: OpenVINO failed (RuntimeError: cannot compile)"]
    assert scorer.describe().startswith("torch (auto: OpenVINO failed")
    with pytest.raises(RuntimeError, match="cannot compile"):
        scoring_function(model, RunConfig(model=model.cfg), InferenceConfig(runtime="openvino"), "cpu")


def test_thresholds_of_another_runtime_are_said(monkeypatch):
    """A threshold follows the path it was calibrated on: the runtime too, where it was recorded."""
    from inp_former.predictor import Predictor
    from inp_former.thresholds import Calibration

    model = tiny_model()
    cfg = RunConfig(model=model.cfg)
    calibration = Calibration(image_threshold=0.5, source={"precision": "bf16", "runtime": "openvino"})
    torch_bf16 = Predictor(model, cfg, calibration, InferenceConfig(precision="bf16", runtime="torch"), "cpu")
    assert torch_bf16.runtime == "torch" and torch_bf16.runtime_reason == "given"
    assert "calibrated on scores of the openvino runtime; this run scores with torch (given)" in \
        torch_bf16.precision_warning
    assert "--runtime torch --save-thresholds" in torch_bf16.precision_warning
    legacy = Calibration(image_threshold=0.5, source={"precision": "bf16"})   # before runtimes were recorded
    assert Predictor(model, cfg, legacy, InferenceConfig(precision="bf16", runtime="torch"), "cpu") \
        .precision_warning is None


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path, monkeypatch):
    import os
    import time

    import inp_former.openvino_runtime as openvino_runtime

    now = time.time()
    for index in range(6):   # entry 0 used most recently
        (tmp_path / f"entry{index}").mkdir()
        os.utime(tmp_path / f"entry{index}", (now - 3600 * (index + 1),) * 2)
    (tmp_path / ".staging-killed").mkdir()
    os.utime(tmp_path / ".staging-killed", (now - 2 * 24 * 3600,) * 2)
    (tmp_path / ".staging-running").mkdir()   # another process exporting now
    openvino_runtime._evict(tmp_path, keep=tmp_path / "entry5")
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [".staging-running", "entry0", "entry1", "entry2", "entry3", "entry5"]
    assert openvino_runtime.CACHE_ENTRIES == 4


# --- with OpenVINO ---------------------------------------------------------------------------------------

@pytest.fixture
def openvino(monkeypatch, tmp_path_factory):
    """The installed OpenVINO (skip without it), its exported graphs cached in one folder for the module."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    monkeypatch.setenv("INPCTL_CACHE", str(tmp_path_factory.getbasetemp() / "openvino-cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny checkpoint with a one-category dataset to evaluate on."""
    from inp_former.checkpoint import save_checkpoint
    from tests.datagen import make_mvtec_tree

    folder = tmp_path_factory.mktemp("openvino-run")
    root = make_mvtec_tree(folder / "data", categories=("bottle",), n_train=1, n_test_good=2, n_test_bad=2)
    ckpt = folder / "checkpoint.pt"
    save_checkpoint(ckpt, tiny_model(), RunConfig(model=tiny_config(), data=DataConfig(root=str(root))))
    return ckpt, root


def test_openvino_scorer_matches_the_fp32_reference(openvino):
    """f32 in OpenVINO is the reference path's computation; bf16 is within bf16's tolerance
    (BF16_MAP_RTOL, BF16_RTOL above), on fresh random images, for maps, scores and embeddings."""
    from inp_former.categories import image_embeddings
    from inp_former.fast_path import scoring_function
    from inp_former.openvino_runtime import OpenVinoScorer

    model = tiny_model(seed=3)
    cfg = RunConfig(model=model.cfg)
    images = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(11))
    maps, scores, out = score_batch(model, images, cfg, "fp32")
    embeddings = image_embeddings(out.encoder_groups)

    f32 = scoring_function(model, cfg, InferenceConfig(runtime="openvino", precision="fp32"), "cpu")
    assert isinstance(f32, OpenVinoScorer) and (f32.runtime, f32.runtime_reason) == ("openvino", "given")
    assert f32.openvino_precision == "f32" and "INFERENCE_PRECISION_HINT f32" in f32.describe()
    got = f32.score(images)
    for actual, expected in zip(got, (maps, scores, embeddings)):
        assert actual.dtype == torch.float32 and actual.shape == expected.shape
        assert _relative(actual, expected) < FP32_RTOL
    assert torch.equal(f32(images[:1])[0], f32.score(images[:1])[0])   # any batch size: the batch axis is dynamic

    if not NATIVE_BF16:
        pytest.skip("this CPU has no native bf16 unit: OpenVINO computes in f32 (checked above)")
    bf16 = scoring_function(model, cfg, InferenceConfig(runtime="openvino", precision="bf16"), "cpu")
    assert bf16.openvino_precision == "bf16" and bf16.graph == "cached"   # the same fp32 graph, compiled for bf16
    got_maps, got_scores, got_embeddings = bf16.score(images)
    assert 1e-4 < _relative(got_maps, maps) < BF16_MAP_RTOL        # > 1e-4: it really computed in bf16
    torch.testing.assert_close(got_scores, scores, rtol=BF16_RTOL, atol=0)
    assert _relative(got_embeddings, embeddings) < BF16_RTOL


def test_batches_are_split_over_the_streams_and_serve_runs_each_call_on_all_threads(openvino):
    """Batch scoring compiles with OpenVINO's THROUGHPUT hint and cuts each batch into one piece per
    stream (uneven pieces for an odd batch, one piece for a lone image); ``latency`` (serve) keeps one
    stream. Both give the same maps, scores and embeddings."""
    from inp_former.fast_path import scoring_function

    model = tiny_model(seed=3)   # the model of the tests above: its graph is in the module's cache
    cfg = RunConfig(model=model.cfg)
    inference = InferenceConfig(runtime="openvino", precision="fp32")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)   # the streams follow the thread count: 2 threads, 2 streams of 1
    try:
        batch = scoring_function(model, cfg, inference, "cpu")
        latency = scoring_function(model, cfg, inference, "cpu", latency=True)
    finally:
        torch.set_num_threads(threads)
    if len(os.sched_getaffinity(0)) >= 2:   # OpenVINO makes no more streams than the cores it may use
        assert batch.streams == 2 and "2 streams" in batch.describe()
    assert latency.streams == 1 and "streams" not in latency.describe()
    images = torch.randn(5, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    for count in (5, 1):
        for split, whole in zip(batch.score(images[:count]), latency.score(images[:count])):
            assert split.shape == whole.shape and split.shape[0] == count
            assert _relative(split, whole) < FP32_RTOL


def test_the_graph_cache_is_keyed_by_the_models_content(openvino):
    """The export is written once per model content, staged and renamed into place; a second scorer
    of the same model compiles the cached file."""
    from inp_former.fast_path import scoring_function
    from inp_former.openvino_runtime import cache_root, model_key

    model = tiny_model(seed=3)
    cfg = RunConfig(model=model.cfg)
    inference = InferenceConfig(runtime="openvino", precision="fp32")
    scoring_function(model, cfg, inference, "cpu")
    assert scoring_function(model, cfg, inference, "cpu").graph == "cached"
    key = model_key(model, cfg, "decoder")
    assert (cache_root() / key / "model.onnx").is_file() and not list(cache_root().glob(".staging-*"))
    assert key == model_key(tiny_model(seed=3), cfg, "decoder")   # the content, not the object
    assert key not in (model_key(tiny_model(seed=4), cfg, "decoder"), model_key(model, cfg, "prototype"))


@pytest.mark.skipif(not NATIVE_BF16, reason="auto picks OpenVINO only on a CPU with native bf16")
def test_auto_picks_openvino_on_this_cpu_and_fp32_stays_torch(openvino, checkpoint, tmp_path):
    """predict with defaults scores through OpenVINO here; --precision fp32 is the torch reference."""
    from inp_former.inference import openvino_release as release
    from tests.predict_setup import write_image

    ckpt, _ = checkpoint
    image = write_image(tmp_path / "in" / "a.png", 64, 64)
    for flags, expected, reason in (([], "openvino", f"auto: CPU has {cpu_capabilities().native_bf16} and OpenVINO "
                                                      f"{release()} is installed"),
                                    (["--precision", "fp32"], "torch", "auto: fp32 asked for (the reference path)")):
        out = tmp_path / expected
        result = runner.invoke(app, ["predict", "--ckpt", str(ckpt), str(image), "--out", str(out), "--device", "cpu",
                                     "--no-overlays", *flags])
        assert result.exit_code == 0, result.output
        written = json.loads((out / "predictions.json").read_text())
        assert (written["runtime"], written["runtime_reason"]) == (expected, reason)
        assert written["precision"] == ("fp32" if flags else "bf16")


def test_predict_eval_and_serve_name_the_runtime(openvino, checkpoint, tmp_path):
    """--runtime openvino through the CLI: predictions.json, metrics.json (and the thresholds'
    source) and the server's model block name the runtime and why, next to the precision."""
    from inp_former.predictor import Predictor
    from tests.predict_setup import write_image

    ckpt, root = checkpoint
    image = write_image(tmp_path / "in" / "a.png", 64, 64)
    result = runner.invoke(app, ["predict", "--ckpt", str(ckpt), str(image), "--out", str(tmp_path / "pred"),
                                 "--device", "cpu", "--no-overlays", "--runtime", "openvino"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert (written["runtime"], written["runtime_reason"]) == ("openvino", "given")
    assert written["precision"] == ("bf16" if NATIVE_BF16 else "fp32")   # auto: what OpenVINO computes in here

    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--out", str(tmp_path / "eval"), "--device", "cpu",
                                 "--runtime", "openvino"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "eval" / "metrics.json").read_text())["meta"]
    assert (meta["runtime"], meta["runtime_reason"], meta["fast_path"]) == ("openvino", "given", "openvino")
    thresholds = json.loads((tmp_path / "eval" / "thresholds.json").read_text())
    assert thresholds["source"]["runtime"] == "openvino"

    pytest.importorskip("starlette")
    from inp_former.serve import ServeConfig
    from inp_former.serve.app import model_info

    predictor = Predictor.from_checkpoint(ckpt, "cpu", InferenceConfig(runtime="openvino"))
    info = model_info(predictor, ServeConfig(ckpt))
    assert (info["runtime"], info["runtime_reason"], info["precision"]) == ("openvino", "given",
                                                                             str(predictor.precision))
    assert predictor.scorer.describe().startswith("openvino ") and predictor.precision_warning is None

