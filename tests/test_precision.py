"""The precision policy (inp_former/inference.py ``choose_precision``): ``auto`` by default, bf16
where the hardware runs it natively (read at run time), fp32 elsewhere; every output says which
precision scored it and why, and thresholds say when they were calibrated on another one."""
from __future__ import annotations

import json

import pytest
import torch

import inp_former.runtime as runtime
from inp_former.config import TrainConfig
from inp_former.inference import InferenceConfig, choose_precision
from inp_former.runtime import cpu_capabilities

AMX = "flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni\n"
AVX512_BF16 = "flags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n"
PLAIN = "flags\t\t: fpu sse avx2\n"


@pytest.mark.parametrize("cpuinfo, unit", [(AMX, "AMX-BF16"), (AVX512_BF16, "AVX-512-BF16"), (PLAIN, None)])
def test_cpu_capabilities_are_read_from_the_flags(cpuinfo, unit):
    caps = cpu_capabilities(cpuinfo)
    assert caps.native_bf16 == unit and caps.source == "/proc/cpuinfo"
    assert caps.as_dict()["native_bf16"] == unit


@pytest.mark.parametrize("cpuinfo, expected, reason", [
    (AMX, "bf16", "auto: CPU has AMX-BF16"),
    (AVX512_BF16, "bf16", "auto: CPU has AVX-512-BF16"),
    (PLAIN, "fp32", "auto: CPU has no native bf16 unit (AMX-BF16 or AVX-512-BF16)"),
])
def test_auto_follows_the_cpu(monkeypatch, cpuinfo, expected, reason):
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: cpu_capabilities(cpuinfo))
    assert InferenceConfig().precision == "auto"                       # the default
    assert choose_precision("auto", "cpu") == (expected, reason)
    assert choose_precision(None, "cpu") == (expected, reason)          # not given: auto
    assert choose_precision("fp32", "cpu") == ("fp32", "given")         # the fp32 reference path on request
    assert InferenceConfig(precision="bf16").describe("cpu")["precision_reason"] == "given"
    if torch.cuda.is_available():
        assert choose_precision("auto", "cuda") == ("bf16", "auto: CUDA")


def test_training_takes_auto_fp32_or_bf16():
    # auto is the training default too (resolved at train start: tests/test_train_precision.py)
    assert TrainConfig().precision == "auto" and TrainConfig(precision="fp32").precision == "fp32"
    with pytest.raises(ValueError, match="precision 'fp8': expected one of auto, fp32, bf16"):
        TrainConfig(precision="fp8")
    assert TrainConfig(precision="bf16").precision == "bf16"


def test_outputs_name_the_precision_and_why_and_thresholds_follow_the_path(tmp_path, monkeypatch):
    """predict's JSON, the predictor and the server's model block say which precision scored and
    why; a predictor scoring with another precision than its thresholds were calibrated on says so."""
    from inp_former.batch_predict import predict_files
    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import DataConfig, RunConfig
    from inp_former.predictor import Predictor
    from inp_former.thresholds import Calibration, store_calibration
    from tests.datagen import make_mvtec_tree
    from tests.helpers import tiny_config, tiny_model

    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: cpu_capabilities(AMX))
    root = make_mvtec_tree(tmp_path / "data", categories=("bottle",), n_train=1, n_test_good=1, n_test_bad=0)
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, tiny_model(), RunConfig(model=tiny_config(), data=DataConfig(root=str(root))))
    store_calibration(ckpt, Calibration(image_threshold=0.5, source={"precision": "fp32"}))

    auto = Predictor.from_checkpoint(ckpt, "cpu")
    assert (auto.precision, auto.precision_reason) == ("bf16", "auto: CPU has AMX-BF16")
    assert "calibrated on fp32 scores; this run scores in bf16" in auto.precision_warning
    assert "--precision bf16 --save-thresholds" in auto.precision_warning
    assert Predictor.from_checkpoint(ckpt, "cpu", InferenceConfig(precision="fp32")).precision_warning is None
    assert "bf16 (auto: CPU has AMX-BF16)" in auto.scorer.describe()

    summary = predict_files(auto, [root / "bottle" / "test"], tmp_path / "out", overlays=False)
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert written["precision"] == summary["precision"] == "bf16"
    assert written["precision_reason"] == "auto: CPU has AMX-BF16"

    pytest.importorskip("starlette")
    from inp_former.serve import ServeConfig
    from inp_former.serve.app import model_info

    info = model_info(auto, ServeConfig(ckpt))
    assert (info["precision"], info["precision_reason"]) == ("bf16", "auto: CPU has AMX-BF16")
