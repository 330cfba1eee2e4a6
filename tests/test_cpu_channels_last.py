"""The CPU default path feeds a CNN encoder channels-last in bf16 (issue 21, item 3: measured about
2x, same maps), and leaves the fp32 reference path and ViT encoders as they were. Random weights,
tiny images: only the layout and the maps' agreement are checked."""
from __future__ import annotations

import pytest
import torch

from inp_former.config import ModelConfig, RunConfig
from inp_former.fast_path import cpu_channels_last, scoring_function
from inp_former.inference import InferenceConfig, score_batch
from inp_former.model import INPFormer


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder="efficientnet_lite0", encoder_weights="random", resize=64, crop=64,
                                      token_stride=16))
    return INPFormer(cfg.model).eval(), cfg


def _layouts(model, monkeypatch):
    seen = []
    real_forward = model.forward

    def forward(images, *args, **kwargs):
        seen.append(images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous())
        return real_forward(images, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return seen


@pytest.mark.parametrize("precision, expected", [("bf16", True), ("fp32", False)])
def test_cnn_in_bf16_runs_channels_last_with_the_same_maps(cnn, monkeypatch, precision, expected):
    model, cfg = cnn
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = score_batch(model, images, cfg, precision)[0]   # contiguous input: the path as it was
    scorer = scoring_function(model, cfg, InferenceConfig(precision=precision, runtime="torch"), "cpu")
    assert scorer.channels_last is expected
    seen = _layouts(model, monkeypatch)
    maps, _ = scorer(images)
    assert seen == [expected]
    # bit-identical on the AMX CPU it was measured on; within bf16 rounding anywhere
    assert float((maps - reference).abs().max()) <= (1e-3 if expected else 0.0) * float(reference.abs().max())


def test_vit_keeps_its_layout():
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder="small", encoder_weights="random", resize=28, crop=28))
    model = INPFormer(cfg.model).eval()
    assert not cpu_channels_last(model, "bf16", torch.device("cpu"))
    assert not cpu_channels_last(model, "fp32", torch.device("cpu"))
