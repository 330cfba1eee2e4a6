"""How often the image rule of :mod:`inp_former.categories` picks an image's true category.

The rule compares an image's mean encoder token with a few references per category taken from
normal training images; the encoder is frozen, so the measurement needs the encoder only (no
trained decoder): a config's categories, its encoder, the references from each category's training
images, then every test image (normal and anomalous) resolved with its path withheld.
"""
from __future__ import annotations

from typing import Any

import torch

from inp_former.categories import CategoryResolver
from inp_former.config import RunConfig
from inp_former.data import image_transform, load_rgb
from inp_former.model import INPFormer
from inp_former.settings import category_samples, compute_references, resolve_categories


def category_accuracy(cfg: RunConfig, device: torch.device | str = "cpu", batch_size: int = 16,
                      model: INPFormer | None = None) -> dict[str, Any]:
    """Accuracy of the image rule on the test split of ``cfg``'s categories, per category and
    overall, with the confusion counts ``{true: {chosen: n}}``."""
    from inp_former.categories import image_embeddings

    device = torch.device(device)
    model = (model or INPFormer(cfg.model)).eval().to(device)
    categories = resolve_categories(cfg.data)
    resolver = CategoryResolver(categories, compute_references(model, cfg, categories, device))
    transform = image_transform(cfg.model.resize_hw, cfg.model.input_hw)
    confusion: dict[str, dict[str, int]] = {}
    for category in categories:
        samples = category_samples(cfg.data, category, "test")
        counts = confusion.setdefault(category, {})
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            images = torch.stack([transform(load_rgb(s.path)) for s in chunk]).to(device)
            with torch.no_grad():
                embeddings = image_embeddings(model(images).encoder_groups)
            for embedding in embeddings:
                chosen, _ = resolver.resolve(None, embedding)   # the path withheld: the image alone decides
                counts[chosen] = counts.get(chosen, 0) + 1
    per_category = {c: counts.get(c, 0) / max(1, sum(counts.values())) for c, counts in confusion.items()}
    total = sum(sum(counts.values()) for counts in confusion.values())
    correct = sum(counts.get(c, 0) for c, counts in confusion.items())
    return {"accuracy": correct / max(1, total), "images": total, "per_category": per_category,
            "confusion": confusion, "encoder": model.cfg.encoder, "encoder_source": model.encoder.weights_source,
            "references_per_category": {c: int(v.shape[0]) for c, v in resolver.references.vectors.items()}}


__all__ = ["category_accuracy"]
