"""Evaluation: anomaly maps and image scores on each category's test split, then the metrics."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from inp_former.config import RunConfig
from inp_former.data import AnomalyDataset, build_samples, image_transform, mask_transform, masks_for_metrics
from inp_former.io import atomic_write_text
from inp_former.metrics import category_metrics, mean_metrics
from inp_former.model import INPFormer, INPFormerOutput
from inp_former.train import autocast
from kernels.scoring import anomaly_maps_and_scores, upsample_token_map

METRIC_KEYS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro")
MAP_MODES = ("decoder", "prototype")  # reconstruction error (the method) | distance to nearest INP (zero-shot)


@dataclass
class EvalResult:
    categories: dict[str, dict[str, float]]
    mean: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)   # path, category, label, score
    meta: dict[str, Any] = field(default_factory=dict)

    def metrics_json(self) -> dict[str, Any]:
        return {"categories": self.categories, "mean": self.mean, "meta": self.meta}

    def write(self, out_dir: Path) -> None:
        """``metrics.json`` and ``scores.csv``, each written atomically."""
        out_dir = Path(out_dir)
        atomic_write_text(out_dir / "metrics.json", json.dumps(self.metrics_json(), indent=2) + "\n")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["path", "category", "label", "score"], lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({**row, "score": repr(float(row["score"]))})
        atomic_write_text(out_dir / "scores.csv", buffer.getvalue())


def score_batch(model: INPFormer, images: torch.Tensor, cfg: RunConfig, precision: str = "fp32",
                map_mode: str = "decoder") -> tuple[torch.Tensor, torch.Tensor, INPFormerOutput]:
    """Anomaly maps (B, map_size, map_size) and image scores (B,) of preprocessed images."""
    mc = cfg.model
    with torch.no_grad(), autocast(images.device, precision):
        out = model(images)
    if map_mode == "decoder":
        maps, scores = anomaly_maps_and_scores(
            out.encoder_groups, out.decoder_groups, image_size=images.shape[-1], out_size=mc.map_size,
            kernel_size=mc.blur_kernel, sigma=mc.blur_sigma, top_fraction=mc.top_fraction)
    elif map_mode == "prototype":
        maps = upsample_token_map(out.prototype_distance.float(), image_size=images.shape[-1], out_size=mc.map_size,
                                  kernel_size=mc.blur_kernel, sigma=mc.blur_sigma)
        k = max(1, int(maps[0].numel() * mc.top_fraction))
        scores = maps.flatten(1).topk(k, dim=1).values.mean(1)
    else:
        raise ValueError(f"--map {map_mode!r}: expected one of {', '.join(MAP_MODES)}")
    return maps, scores, out


def evaluate(model: INPFormer, cfg: RunConfig, categories: list[str], device: torch.device | str,
             batch_size: int = 16, precision: str = "fp32", map_mode: str = "decoder",
             on_batch: Callable[[str, int, int], None] | None = None, num_workers: int = 0,
             on_category: Callable[[str, dict[str, Any]], None] | None = None) -> EvalResult:
    """Evaluate on the test split of each category of ``cfg.data``; metrics per category and mean.

    ``on_category(category, outputs)``, if given, sees each category's outputs once they are complete:
    ``labels`` (n,), ``scores`` (n,), ``masks`` (n, S, S) bool, ``maps`` (n, S, S) float32 (CPU tensors)
    and ``paths`` (e.g. :class:`inp_former.thresholds.Calibrator` computes thresholds from them)."""
    device = torch.device(device)
    mc = cfg.model
    model.eval().to(device)
    per_category: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for category in categories:
        samples = build_samples(cfg.data.dataset, cfg.data.root, category, "test")
        dataset = AnomalyDataset(samples, image_transform(mc.resize, mc.crop), mask_transform(mc.resize, mc.crop))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        labels, scores, maps, masks = [], [], [], []
        for batch in loader:
            image_maps, image_scores, _ = score_batch(model, batch["image"].to(device), cfg, precision, map_mode)
            maps.append(image_maps.float().cpu())
            scores.append(image_scores.float().cpu())
            masks.append(masks_for_metrics(batch["mask"], mc.map_size))
            labels.append(torch.as_tensor(batch["label"]))
            for path, label, score in zip(batch["path"], batch["label"], image_scores.tolist()):
                rows.append({"path": path, "category": category, "label": int(label), "score": score})
            if on_batch is not None:
                on_batch(category, len(batch["label"]), len(dataset))
        per_category[category] = category_metrics(torch.cat(labels), torch.cat(scores),
                                                  torch.cat(masks), torch.cat(maps))
        if on_category is not None:
            on_category(category, {"labels": torch.cat(labels), "scores": torch.cat(scores), "masks": torch.cat(masks),
                                   "maps": torch.cat(maps), "paths": [s.path for s in samples]})
    return EvalResult(per_category, mean_metrics(per_category), rows,
                      {"map_mode": map_mode, "precision": precision, "device": str(device),
                       "dataset": cfg.data.dataset, "data_root": str(cfg.data.root)})
