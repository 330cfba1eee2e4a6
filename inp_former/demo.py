"""The built-in demo: a small run on generated texture data that finishes in minutes on a CPU."""
from __future__ import annotations

from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from inp_former.data.demo import ensure_demo_dataset
from inp_former.encoders import pretrained_available


def demo_config(seed: int = 1) -> tuple[RunConfig, str]:
    """The demo's run config and a sentence saying which encoder it uses and why."""
    root = ensure_demo_dataset()
    if pretrained_available("small"):
        weights, notice = "pretrained", "Demo: pretrained DINOv2 ViT-S/14 (found in the local cache)."
    else:
        weights = "random"
        notice = ("[yellow]Demo: no pretrained weights are available offline, so the encoder is a RANDOM-initialised "
                  "ViT-S/14. The run exercises the whole pipeline, but its metrics say nothing about INP-Former.")
    cfg = RunConfig(
        model=ModelConfig(encoder="small", encoder_weights=weights, resize=128, crop=112),
        train=TrainConfig(iters=150, batch_size=8, warmup_iters=15, seed=seed),
        data=DataConfig(dataset="mvtec", root=str(root)),
    )
    return cfg, f"{notice}\nDemo data: {root}"
