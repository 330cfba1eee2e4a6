"""Which trained category an image belongs to, when the user did not say.

One model serves every category, but each category has its own calibrated threshold, and the
pooled threshold of all categories mislabels whole categories (a normal brick can score above it).
So every scoring surface resolves the category of each image by one rule (:class:`CategoryResolver`):

1. ``given``: the category the user named (``--category``, ``?category=``, ``Predictor(category=)``);
2. ``path``: a folder on the image's path is a trained category name (``.../brick/test/good/000.png``;
   a super-multi-class ``mvtec/bottle`` matches the two folders ``mvtec/bottle``);
3. ``image``: the trained category whose normal training images the image looks most like: the
   cosine similarity of its mean encoder token to a few stored references per category
   (:class:`CategoryReferences`, written into the checkpoint at training time by
   :func:`inp_former.settings.compute_references`, ~16 vectors per category). The encoder is frozen, so this costs nothing extra: the features come from the
   forward pass that scores the image;
4. ``pooled``: none of these (a checkpoint older than the references): the pooled threshold.

A checkpoint that knows one category only resolves every image to it (``only``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

REFERENCES_KEY = "category_references"
REFERENCES_VERSION = 1
REFERENCES_PER_CATEGORY = 16
FEATURE = "mean encoder token over the encoder's layer groups, L2-normalised"


def image_embeddings(encoder_groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, C) float32, unit length: the mean token of the mean of the encoder's layer groups.

    What :class:`CategoryReferences` compares; computed from the forward pass that scores."""
    tokens = torch.stack([g.float() for g in encoder_groups]).mean(0)   # (B, N, C)
    return F.normalize(tokens.mean(1), dim=-1)


def category_from_path(path: str | PurePath | None, categories: Iterable[str]) -> str | None:
    """The trained category named by folders on ``path`` (the deepest match; the longer name on a tie)."""
    if path is None:
        return None
    folders = [part.lower() for part in PurePath(str(path).replace("\\", "/")).parts[:-1]]
    best: tuple[int, int, str] | None = None
    for category in categories:
        parts = [p.lower() for p in category.split("/") if p]
        for end in range(len(folders), len(parts) - 1, -1):
            if folders[end - len(parts):end] == parts:
                key = (end, len(parts), category)
                best = key if best is None or key[:2] > best[:2] else best
                break
    return None if best is None else best[2]


@dataclass
class CategoryReferences:
    """A few unit-length embeddings of normal training images per category (float16 on disk)."""

    vectors: dict[str, torch.Tensor]        # category -> (K, C)

    @property
    def categories(self) -> list[str]:
        return sorted(self.vectors)

    def nearest(self, embeddings: torch.Tensor) -> list[tuple[str, float]]:
        """For each row of ``embeddings`` (B, C): (nearest category, its cosine similarity)."""
        names = self.categories
        emb = F.normalize(embeddings.detach().float().cpu().reshape(len(embeddings), -1), dim=-1)
        best = torch.stack([(emb @ self.vectors[name].float().T).max(1).values for name in names], 1)  # (B, cats)
        values, index = best.max(1)
        return [(names[int(i)], float(v)) for i, v in zip(index, values)]

    def to_meta(self) -> dict[str, Any]:
        return {"version": REFERENCES_VERSION, "feature": FEATURE,
                "vectors": {name: v.detach().to(torch.float16).cpu() for name, v in sorted(self.vectors.items())}}

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> "CategoryReferences | None":
        raw = (meta or {}).get(REFERENCES_KEY)
        if not isinstance(raw, dict) or raw.get("version") != REFERENCES_VERSION or not raw.get("vectors"):
            return None
        return cls({name: torch.as_tensor(v).float() for name, v in raw["vectors"].items()})

    def to_json(self) -> dict[str, Any]:
        """For the ONNX sidecar: plain lists, rounded to float16's precision."""
        return {"feature": FEATURE, "similarity": "cosine; the category of the most similar reference",
                "vectors": {name: [[round(float(x), 4) for x in row] for row in v.tolist()]
                            for name, v in sorted(self.vectors.items())}}


class CategoryResolver:
    """The category rule of every scoring surface (module docstring): ``resolve`` one image."""

    def __init__(self, categories: Iterable[str], references: CategoryReferences | None = None) -> None:
        self.categories = sorted(categories)
        known = set(self.categories)
        # references of categories without a stored threshold cannot pick a threshold: dropped
        kept = {k: v for k, v in (references.vectors.items() if references else ()) if k in known}
        self.references = CategoryReferences(kept) if kept else None

    @property
    def needs_references(self) -> bool:
        """True when images that their path does not place fall back to the pooled threshold."""
        return len(self.categories) > 1 and self.references is None

    def resolve(self, path: str | PurePath | None = None,
                embedding: torch.Tensor | None = None) -> tuple[str | None, str]:
        """(category, how it was chosen) for one image that the user gave no category for."""
        if not self.categories:
            return None, "pooled"
        if len(self.categories) == 1:
            return self.categories[0], "only"
        by_path = category_from_path(path, self.categories)
        if by_path is not None:
            return by_path, "path"
        if self.references is not None and embedding is not None:
            return self.references.nearest(embedding.reshape(1, -1))[0][0], "image"
        return None, "pooled"


def store_references(checkpoint: str | PurePath, references: CategoryReferences) -> list[str]:
    """Merge ``references`` into an inpctl checkpoint's meta (atomically; other categories' kept);
    returns the categories written."""
    from pathlib import Path

    from inp_former.checkpoint import update_meta

    def merge(meta: dict[str, Any]) -> list[str]:
        stored = CategoryReferences.from_meta(meta)
        vectors = {**(stored.vectors if stored else {}), **references.vectors}
        meta[REFERENCES_KEY] = CategoryReferences(vectors).to_meta()
        return sorted(references.vectors)

    return update_meta(Path(checkpoint), merge)


__all__ = ["CategoryReferences", "CategoryResolver", "REFERENCES_KEY", "category_from_path",
           "image_embeddings", "store_references"]
