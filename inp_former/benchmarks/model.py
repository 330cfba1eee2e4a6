"""End-to-end speed: inference images/s and training step time, reference vs fast path.

reference: fp32 eager with the PyTorch reference ops (what the authors' code computes, the same way).
fused:     the fused kernels (on CUDA) in fp32 and bf16 autocast, optionally torch.compile.
fast path: what ``--fast`` runs in eval/predict/serve (inp_former/fast_path.py): bf16, the
           dispatcher's kernels and the whole forward + scoring as a CUDA graph per batch shape.
The encoder has random weights here: speed does not depend on the weights' values.

What is timed when the caller does not say depends on the device
(:func:`inp_former.benchmarks.sizes.default_sizes`): the paper's ViT-B at 392 px on a GPU, a ViT-S
at 224 px on a CPU, where the GPU sizes take many minutes.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from inp_former.benchmarks.timing import measure
from inp_former.config import ModelConfig, RunConfig
from inp_former.fast_path import scoring_function
from inp_former.inference import InferenceConfig, autocast, score_batch
from inp_former.losses import coherence_loss, soft_mining_loss
from inp_former.model import INPFormer
from inp_former.optim import StableAdamW
from kernels.dispatch import kernel_mode

PATHS = {  # name: (kernel mode, precision)
    "ref fp32": ("reference", "fp32"),
    "fused fp32": ("auto", "fp32"),
    "fused bf16": ("auto", "bf16"),
}


def _train_step(model: INPFormer, optimizer: torch.optim.Optimizer, images: torch.Tensor, precision: str) -> None:
    with autocast(images.device, precision):
        out = model(images)
        loss = soft_mining_loss(out.encoder_groups, out.decoder_groups) + 0.2 * coherence_loss(out.prototype_distance)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 0.1)
    optimizer.step()


def run_model_bench(encoder: str, batches: Sequence[int], train_batch: int, crop: int, device: torch.device,
                    repeats: int = 10, compile_model: bool = False, max_seconds: float = 20.0,
                    progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Inference (per batch size) and training-step rows, each path against the reference fp32 row.

    ``progress(rows done, rows in all, the row about to be timed)`` is called before each row and
    once at the end; :func:`inp_former.benchmarks.sizes.resolve_sizes` gives the sizes to time when
    the caller has none."""
    rows: list[dict[str, Any]] = []
    paths = dict(PATHS)
    if device.type != "cuda":
        paths.pop("fused fp32")  # on CPU the dispatcher picks the reference: same as the first row
    if compile_model:
        paths["compiled bf16"] = ("auto", "bf16")
    total = len(batches) * (len(paths) + 1) + sum("compile" not in name for name in paths)
    tick = progress or (lambda done, total, name: None)
    tick(0, total, f"building the {encoder} model")   # seconds on a CPU: say so before
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder=encoder, encoder_weights="random", resize=crop, crop=crop))
    model = INPFormer(cfg.model).to(device).eval()
    compiled = torch.compile(model) if compile_model else None

    generator = torch.Generator(device="cpu").manual_seed(0)
    for batch in batches:
        images = torch.randn(batch, 3, crop, crop, generator=generator).to(device)
        reference_maps = None
        for name, (mode, precision) in paths.items():
            net = compiled if "compile" in name else model
            tick(len(rows), total, f"infer {name}, batch {batch}")
            with kernel_mode(mode):
                maps, _, _ = score_batch(net, images, cfg, precision)
                timing = measure(lambda: score_batch(net, images, cfg, precision), device,
                                 repeats=repeats, max_seconds=max_seconds)
            if reference_maps is None:
                reference_maps = maps.float()
            rows.append(_row("infer", name, batch, timing, _relative_error(maps, reference_maps)))
        # the end-to-end fast path of eval/predict/serve: CUDA graphs + bf16 (eager elsewhere, and it says why)
        tick(len(rows), total, f"infer fast path, batch {batch}")
        scorer = scoring_function(model, cfg, InferenceConfig(fast=True), device)
        maps, _ = scorer(images)
        timing = measure(lambda: scorer(images), device, repeats=repeats, max_seconds=max_seconds)
        rows.append(_row("infer", f"fast {scorer.mode} {scorer.precision}", batch, timing,
                         _relative_error(maps, reference_maps)))

    train_images = torch.randn(train_batch, 3, crop, crop, generator=generator).to(device)
    model.train()
    for name, (mode, precision) in paths.items():
        if "compile" in name:
            continue
        tick(len(rows), total, f"train {name}, batch {train_batch}")
        optimizer = StableAdamW(model.trainable_parameters(), lr=1e-4, eps=1e-10, weight_decay=1e-4, amsgrad=True)
        with kernel_mode(mode):
            timing = measure(lambda: _train_step(model, optimizer, train_images, precision), device,
                             warmup=2, repeats=repeats, max_seconds=max_seconds)
        rows.append(_row("train", name, train_batch, timing, None))
    _add_speedups(rows)
    tick(len(rows), total, "")
    return {"rows": rows, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "encoder": f"{encoder} (random weights)", "crop": crop}


def _relative_error(maps: torch.Tensor, reference: torch.Tensor) -> float:
    return ((maps.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()


def _row(pass_: str, path: str, batch: int, timing: Any, error: float | None) -> dict[str, Any]:
    """One table row; short keys so that the printed table fits 80 columns."""
    return {"pass": pass_, "path": path, "batch": batch, "ms": timing.median_ms,
            "img/s": batch / timing.median_ms * 1e3, "max err": error,
            **({"peak MB": timing.peak_mem_mb} if timing.peak_mem_mb is not None else {})}   # CUDA only


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-up of each row over the reference row of the same pass and batch."""
    for row in rows:
        base = next(r for r in rows if r["pass"] == row["pass"] and r["batch"] == row["batch"]
                    and r["path"] == "ref fp32")
        row["x ref"] = base["ms"] / row["ms"]


__all__ = ["run_model_bench"]
