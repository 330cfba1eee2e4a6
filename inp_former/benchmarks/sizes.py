"""What ``inpctl bench model`` times when the caller does not say, per device: the one source of
these defaults (the command's help and its choice read them here; no torch import, so ``--help``
stays fast).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class ModelBenchSizes:
    """What ``run_model_bench`` times: the encoder, the image size, inference and training batches."""
    encoder: str
    batches: tuple[int, ...]
    train_batch: int
    crop: int

    def describe(self) -> str:
        return (f"encoder {self.encoder}, {self.crop} px, batch {' '.join(map(str, self.batches))}, "
                f"train batch {self.train_batch}")


# The paper's model and crop, at the batches a GPU serves.
GPU_SIZES = ModelBenchSizes("base", (1, 16, 64), 16, 392)
# On 2 CPU cores the GPU sizes printed nothing for over 300 s; these take about a minute and a half.
CPU_SIZES = ModelBenchSizes("small", (1, 8), 4, 224)


def default_sizes(device: Any) -> ModelBenchSizes:
    """The sizes timed when the caller gives none: :data:`GPU_SIZES` on CUDA, else :data:`CPU_SIZES`
    (``device``: a torch.device or its name)."""
    kind = getattr(device, "type", str(device).split(":")[0])
    return GPU_SIZES if kind == "cuda" else CPU_SIZES


def resolve_sizes(device: Any, encoder: str | None = None, batches: Sequence[int] | None = None,
                  train_batch: int | None = None, crop: int | None = None) -> tuple[ModelBenchSizes, bool]:
    """The sizes given, the device's defaults (:func:`default_sizes`) for the others (None or empty),
    and whether a CPU-sized default was used in place of a GPU one (worth saying: the numbers are
    not the paper-sized ones)."""
    base = default_sizes(device)
    sizes = ModelBenchSizes(encoder or base.encoder, tuple(batches or base.batches), train_batch or base.train_batch,
                            crop or base.crop)
    return sizes, base != GPU_SIZES and None in (encoder, batches or None, train_batch, crop)


__all__ = ["ModelBenchSizes", "GPU_SIZES", "CPU_SIZES", "default_sizes", "resolve_sizes"]
