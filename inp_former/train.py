"""One training loop for every setting: the config says which data and how long."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from inp_former.checkpoint import save_checkpoint
from inp_former.config import RunConfig
from inp_former.data import AnomalyDataset, build_samples, image_transform, list_categories
from inp_former.losses import coherence_loss, soft_mining_loss
from inp_former.model import INPFormer
from inp_former.optim import StableAdamW, WarmCosineSchedule


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, no data, ...); the message says why."""


@dataclass
class StepInfo:
    iteration: int     # 1-based, after the step
    total: int
    loss: float
    mining: float
    coherence: float
    lr: float


@dataclass
class TrainResult:
    checkpoint: Path
    iterations: int
    seconds: float
    final_loss: float
    skipped_steps: int = 0
    losses: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_categories(cfg: RunConfig) -> list[str]:
    available = list_categories(cfg.data.dataset, cfg.data.root)
    if not cfg.data.categories:
        return available
    unknown = [c for c in cfg.data.categories if c not in available]
    if unknown:
        raise ValueError(f"--categories: {', '.join(unknown)} not under {cfg.data.root} "
                         f"(available: {', '.join(available)})")
    return list(cfg.data.categories)


def training_samples(cfg: RunConfig, categories: list[str]) -> list:
    return [s for c in categories for s in build_samples(cfg.data.dataset, cfg.data.root, c, "train")]


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"--precision {precision!r}: expected fp32 or bf16")
    return torch.autocast(device.type, enabled=False)


def train(cfg: RunConfig, run_dir: Path, device: torch.device | str | None = None,
          on_step: Callable[[StepInfo], None] | None = None,
          model: INPFormer | None = None) -> TrainResult:
    """Train one model on the configured data; writes ``run_dir/checkpoint.pt`` and ``config.json``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    seed_everything(tc.seed)
    categories = resolve_categories(cfg)
    cfg.data.categories = categories
    samples = training_samples(cfg, categories)
    dataset = AnomalyDataset(samples, image_transform(cfg.model.resize, cfg.model.crop))
    if len(dataset) < tc.batch_size:
        raise ValueError(f"--batch-size {tc.batch_size}: larger than the {len(dataset)} training images")
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=True, drop_last=True,
                        num_workers=tc.num_workers, generator=torch.Generator().manual_seed(tc.seed),
                        pin_memory=device.type == "cuda", persistent_workers=tc.num_workers > 0)
    total = tc.iters if tc.iters is not None else tc.epochs * len(loader)
    if total < 1:
        raise ValueError("--iters/--epochs: training needs at least one iteration")
    cfg.train.iters = total

    model = (model or INPFormer(cfg.model)).to(device)
    params = model.trainable_parameters()
    optimizer = StableAdamW(params, lr=tc.lr, betas=tc.betas, eps=tc.eps, weight_decay=tc.weight_decay, amsgrad=True)
    schedule = WarmCosineSchedule(optimizer, tc.lr, tc.final_lr, total, warmup=tc.warmup_iters)
    cfg.save_json(run_dir / "config.json")

    model.train()
    iteration, skipped, losses = 0, 0, []
    started = time.perf_counter()
    while iteration < total:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            with autocast(device, tc.precision):
                out = model(images)
                mining = soft_mining_loss(out.encoder_groups, out.decoder_groups, tc.mining_gamma)
                coherence = coherence_loss(out.prototype_distance)
                loss = mining + tc.coherence_weight * coherence
            optimizer.zero_grad(set_to_none=True)
            value = float(loss)
            if not math.isfinite(value):
                if tc.on_nonfinite == "skip":
                    skipped += 1
                    schedule.step()
                    iteration += 1
                    if iteration >= total:
                        break
                    continue
                raise TrainingError(
                    f"loss is {value} at iteration {iteration + 1}: training stopped; the last good "
                    f"checkpoint (if any) is kept. Try --eps 1e-6 (a known fix) or --on-nonfinite skip")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            schedule.step()
            iteration += 1
            losses.append(value)
            if on_step is not None:
                on_step(StepInfo(iteration, total, value, float(mining), float(coherence),
                                 optimizer.param_groups[0]["lr"]))
            if iteration >= total:
                break
    seconds = time.perf_counter() - started
    checkpoint = run_dir / "checkpoint.pt"
    save_checkpoint(checkpoint, model, cfg, meta={
        "iterations": iteration, "train_seconds": round(seconds, 2), "dataset": cfg.data.dataset,
        "data_root": str(cfg.data.root), "categories": categories, "train_images": len(dataset),
        "device": str(device), "skipped_steps": skipped,
    })
    return TrainResult(checkpoint, iteration, seconds, losses[-1] if losses else float("nan"), skipped, losses)
