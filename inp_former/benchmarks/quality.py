"""Detection quality on one dataset: INP-Former before and after training, and a nearest-neighbour baseline.

The three rows use the same frozen encoder, data, preprocessing and scoring (upsampling, blur,
top-1% image score), so they differ only in how a token's anomaly score is obtained:

- ``untrained``: INP-Former with its initial weights (decoder maps, as evaluated after training);
- ``trained``: the same model after training;
- ``nearest-neighbour``: no training; a memory bank of the training images' patch tokens (the
  encoder's fused map, i.e. the mean of its layers, as the model's input) and, per test token,
  the cosine distance to its nearest bank token (PatchCore without coreset: a random subsample
  of the bank when it is large). One bank for all categories, like the one multi-class model.

Used by ``bench/quality_demo.py`` and ``tests/test_cnn_encoder.py``.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from inp_former.config import RunConfig
from inp_former.data import AnomalyDataset, build_samples, image_transform, mask_transform, masks_for_metrics
from inp_former.evaluate import evaluate
from inp_former.metrics import category_metrics, mean_metrics
from inp_former.model import INPFormer
from inp_former.train import StepInfo, resolve_categories, seed_everything, train
from kernels.scoring import top_k_count, upsample_token_map

BANK_LIMIT = 32768      # tokens kept in the nearest-neighbour bank (random subsample beyond)
QUERY_CHUNK = 4096      # test tokens per distance matrix (bounds memory)
REPORTED = ("i_auroc", "p_auroc")


@torch.no_grad()
def _fused_tokens(model: INPFormer, images: torch.Tensor) -> torch.Tensor:
    """The encoder's fused map (B, N, C): the mean of its layers, the INP-Former's input."""
    return torch.stack(model.encoder(images)).mean(0)


def nearest_neighbour_eval(model: INPFormer, cfg: RunConfig, categories: list[str], device: torch.device,
                           batch_size: int = 16, bank_limit: int = BANK_LIMIT, seed: int = 0) -> dict[str, Any]:
    """Nearest-neighbour patch baseline on ``model.encoder``: metrics per category and their mean."""
    mc = cfg.model
    model.encoder.to(device).eval()
    transform = image_transform(mc.resize, mc.crop)
    bank_parts = []
    for category in categories:
        loader = DataLoader(AnomalyDataset(build_samples(cfg.data.dataset, cfg.data.root, category, "train"),
                                           transform), batch_size=batch_size)
        for batch in loader:
            tokens = _fused_tokens(model, batch["image"].to(device))
            bank_parts.append(F.normalize(tokens.flatten(0, 1).float(), dim=-1))
    bank = torch.cat(bank_parts)
    if len(bank) > bank_limit:  # a seeded random subsample keeps the cost bounded on CPUs
        keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:bank_limit]
        bank = bank[keep.to(bank.device)]
    per_category = {}
    for category in categories:
        samples = build_samples(cfg.data.dataset, cfg.data.root, category, "test")
        loader = DataLoader(AnomalyDataset(samples, transform, mask_transform(mc.resize, mc.crop)),
                            batch_size=batch_size)
        labels, scores, maps, masks = [], [], [], []
        for batch in loader:
            images = batch["image"].to(device)
            tokens = F.normalize(_fused_tokens(model, images).float(), dim=-1)
            b, n, _ = tokens.shape
            flat = tokens.flatten(0, 1)
            nearest = torch.cat([(chunk @ bank.T).amax(1) for chunk in flat.split(QUERY_CHUNK)])
            distance = (1.0 - nearest).reshape(b, n)                       # cosine distance per token
            image_maps = upsample_token_map(distance, image_size=images.shape[-1], out_size=mc.map_size,
                                            kernel_size=mc.blur_kernel, sigma=mc.blur_sigma)
            k = top_k_count(image_maps[0].numel(), mc.top_fraction)
            scores.append(image_maps.flatten(1).topk(k, dim=1).values.mean(1).cpu())
            maps.append(image_maps.cpu())
            masks.append(masks_for_metrics(batch["mask"], mc.map_size))
            labels.append(torch.as_tensor(batch["label"]))
        per_category[category] = category_metrics(torch.cat(labels), torch.cat(scores),
                                                  torch.cat(masks), torch.cat(maps))
    return {"categories": per_category, "mean": mean_metrics(per_category), "bank_tokens": len(bank)}


def run_quality(cfg: RunConfig, device: torch.device | str = "cpu", run_dir: Path | None = None,
                on_step: Callable[[StepInfo], None] | None = None, batch_size: int = 16) -> dict[str, Any]:
    """Train ``cfg`` once; returns {"rows": {method: metrics mean}, "categories": ..., "meta": ...}."""
    device = torch.device(device)
    cfg = copy.deepcopy(cfg)
    categories = resolve_categories(cfg)
    cfg.data.categories = categories
    seed_everything(cfg.train.seed)   # the model's initial weights are those train() would start from
    model = INPFormer(cfg.model).to(device)
    rows: dict[str, dict[str, float]] = {}
    per_category: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}

    def record(name: str, started: float, result_categories: dict, mean: dict) -> None:
        rows[name] = dict(mean)
        per_category[name] = result_categories
        seconds[name] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    before = evaluate(model, cfg, categories, device, batch_size=batch_size)
    record("untrained", started, before.categories, before.mean)

    started = time.perf_counter()
    nn_result = nearest_neighbour_eval(model, cfg, categories, device, batch_size=batch_size)
    record("nearest-neighbour", started, nn_result["categories"], nn_result["mean"])

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="inpctl-quality-") as scratch:
        target = Path(run_dir) if run_dir is not None else Path(scratch)
        # the very model of the "untrained" row (evaluation changed nothing in it)
        result = train(cfg, target, device, on_step=on_step, model=model)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    after = evaluate(model, cfg, categories, device, batch_size=batch_size)
    record("trained", started, after.categories, after.mean)
    return {
        "rows": {name: rows[name] for name in ("untrained", "trained", "nearest-neighbour")},
        "categories": per_category,
        "meta": {"encoder": cfg.model.encoder, "encoder_source": model.encoder.weights_source,
                 "encoder_design": getattr(model.encoder, "describe", lambda: cfg.model.encoder)(),
                 "data_root": str(cfg.data.root), "categories": categories, "iterations": result.iterations,
                 "batch_size": cfg.train.batch_size, "resize": cfg.model.resize, "crop": cfg.model.crop,
                 "train_seconds": round(train_seconds, 1), "eval_seconds": seconds,
                 "bank_tokens": nn_result["bank_tokens"], "device": str(device),
                 "final_loss": result.final_loss},
    }


def format_table(result: dict[str, Any], keys: tuple[str, ...] = REPORTED) -> str:
    """The rows as a Markdown table, metrics in %."""
    header = "| method | " + " | ".join(k.replace("_", "-").upper() for k in keys) + " |"
    lines = [header, "|" + "---|" * (len(keys) + 1)]
    for name, metrics in result["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * metrics[k]:.1f}" for k in keys) + " |")
    return "\n".join(lines)
