"""Training precision (issue 21, item 7): ``auto`` by default, resolved when training starts with
the scoring rule on a CPU (bf16 autocast where the CPU has native bf16 units, else fp32), fp32 on
CUDA; the resolved value is what config.json, the checkpoint and the run's notice say; fp32 stays
an explicit choice. Tiny runs: random ViT-S/14 at 28 px, 2 iterations (only the recording is
checked, not a metric)."""
from __future__ import annotations

import json

import pytest
import torch

import inp_former.runtime as runtime
from inp_former.checkpoint import read_checkpoint
from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from inp_former.errors import ConfigError
from inp_former.runtime import cpu_capabilities
from inp_former.train import train, training_precision
from tests.datagen import make_mvtec_tree

AMX = "flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni\n"
PLAIN = "flags\t\t: fpu sse avx2\n"


def test_train_config_takes_auto_by_default_and_fp32_on_request():
    assert TrainConfig().precision == "auto"
    assert TrainConfig(precision="fp32").precision == "fp32" and TrainConfig(precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match="precision 'fp8': expected one of auto, fp32, bf16") as caught:
        TrainConfig(precision="fp8")
    assert caught.value.arg == "precision"


@pytest.mark.parametrize("cpuinfo, expected, reason", [
    (AMX, "bf16", "auto: CPU has AMX-BF16"),
    (PLAIN, "fp32", "auto: CPU has no native bf16 unit (AMX-BF16 or AVX-512-BF16)"),
])
def test_auto_follows_the_cpu_and_keeps_fp32_on_cuda(monkeypatch, cpuinfo, expected, reason):
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: cpu_capabilities(cpuinfo))
    assert training_precision("auto", "cpu") == (expected, reason)
    assert training_precision(None, "cpu") == (expected, reason)
    assert training_precision("fp32", "cpu") == ("fp32", "given")
    assert training_precision("bf16", "cpu") == ("bf16", "given")
    assert training_precision("auto", torch.device("cuda", 0)) == ("fp32", "auto: fp32 on CUDA (the authors' recipe)")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_mvtec_tree(tmp_path_factory.mktemp("train-precision"), categories=("bottle",), n_train=2,
                           n_test_good=1, n_test_bad=1, size=32)


def _tiny(root, **train) -> RunConfig:
    return RunConfig(model=ModelConfig(encoder="small", encoder_weights="random", resize=28, crop=28),
                     train=TrainConfig(iters=2, batch_size=2, warmup_iters=0, checkpoint_every=0, **train),
                     data=DataConfig(dataset="mvtec", root=str(root)))


@pytest.mark.parametrize("cpuinfo, given, expected", [
    (AMX, None, "bf16"),        # the default on a CPU with AMX
    (PLAIN, None, "fp32"),      # ... and on one without native bf16
    (AMX, "fp32", "fp32"),      # fp32 asked for: kept
])
def test_the_run_records_the_resolved_precision(monkeypatch, tmp_path, data_root, cpuinfo, given, expected):
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: cpu_capabilities(cpuinfo))
    autocasts = []
    real_autocast = torch.autocast

    def watched(device_type, *args, **kwargs):   # what the training step really ran with
        autocasts.append((kwargs.get("dtype"), kwargs.get("enabled", True)))
        return real_autocast(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", watched)
    notices = []
    cfg = _tiny(data_root, **({"precision": given} if given else {}))
    result = train(cfg, tmp_path / "run", "cpu", on_notice=notices.append)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["precision"] == expected and str(result.config.train.precision) == expected
    meta = read_checkpoint(tmp_path / "run" / "checkpoint.pt")["meta"]
    reason = "given" if given else training_precision("auto", "cpu")[1]
    assert (meta["train_precision"], meta["train_precision_reason"]) == (expected, reason)
    assert f"Training precision: {expected} ({reason})" in notices
    bf16_steps = [dtype == torch.bfloat16 and enabled for dtype, enabled in autocasts]
    assert any(bf16_steps) == (expected == "bf16")


def test_bench_quality_passes_the_training_precision(tmp_path, data_root):
    from typer.testing import CliRunner

    from inpctl.cli import app

    out = tmp_path / "q.json"
    result = CliRunner().invoke(app, ["bench", "quality", "--data", str(data_root), "--encoder", "small",
                                      "--encoder-weights", "random", "--resize", "28", "--crop", "28", "--iters", "2",
                                      "--batch-size", "2", "--precision", "fp32", "--device", "cpu",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["config"]["train"]["precision"] == "fp32"   # given: kept, on any CPU
