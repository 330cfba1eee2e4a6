"""The border study of docs/quality.md:
``python3 -m bench.studies.quality.diagnose RUN_DIR RECIPE DATASET --border``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from inp_former.config import RunConfig
from inp_former.data import AnomalyDataset, image_transform
from inp_former.model import INPFormer
from inp_former.settings import category_samples


@torch.no_grad()
def border_report(model: INPFormer, encoder: torch.nn.Module, cfg: RunConfig, categories: list[str]) -> None:
    """Print, per category, where INP-Former's and the nearest neighbour's token errors lie (see diagnose.py)."""
    transform = image_transform(cfg.model.resize, cfg.model.crop)

    def fused(images: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.stack(encoder(images)).mean(0), dim=-1)

    for category in categories:
        bank = torch.cat([fused(b["image"]).flatten(0, 1) for b in DataLoader(
            AnomalyDataset(category_samples(cfg.data, category, "train"), transform), batch_size=16)])
        errors: dict[str, list[torch.Tensor]] = {"recon": [], "nn": []}
        labels = []
        for batch in DataLoader(AnomalyDataset(category_samples(cfg.data, category, "test"), transform),
                                batch_size=16):
            out = model(batch["image"])
            errors["recon"].append(torch.stack([1 - F.cosine_similarity(e, d, dim=-1)
                                                for e, d in zip(out.encoder_groups, out.decoder_groups)]).mean(0))
            tokens = fused(batch["image"])
            errors["nn"].append(1 - (tokens.flatten(0, 1) @ bank.T).amax(1).reshape(tokens.shape[:2]))
            labels.append(torch.as_tensor(batch["label"]))
        grid = out.grid
        label = torch.cat(labels)
        ring = torch.ones(*grid, dtype=torch.bool)
        ring[1:-1, 1:-1] = False
        ring = ring.flatten()
        for name, parts in errors.items():
            error = torch.cat(parts)                       # (images, tokens)
            normal = error[label == 0]
            mean = normal.mean(0)
            on_ring = ring[normal.argmax(1)].float().mean()
            print(f"{category} {name}: normal-image error, ring {mean[ring].mean():.3f}, inside "
                  f"{mean[~ring].mean():.3f}; largest error on the ring in {100 * on_ring:.0f}% of {len(normal)} "
                  f"normal images")
            rows = mean.reshape(*grid)
            print("  row means:", " ".join(f"{v:.2f}" for v in rows.mean(1).tolist()))
            print("  column means:", " ".join(f"{v:.2f}" for v in rows.mean(0).tolist()))
            for what, chosen in (("all tokens", error), ("inside only", error[:, ~ring])):
                top1 = roc_auc_score(label, chosen.amax(1))
                top3 = roc_auc_score(label, chosen.topk(3, dim=1).values.mean(1))
                print(f"  I-AUROC from the largest token error, {what}: {100 * top1:.1f} "
                      f"(top-3 mean {100 * top3:.1f})")
