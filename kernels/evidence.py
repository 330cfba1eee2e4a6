"""Recorded GPU measurements that decide where ``auto`` dispatch uses a fused kernel.

A fused kernel is chosen in ``auto`` mode only for a (kernel, device class, dtype) whose recorded
measurement shows it faster than the PyTorch reference; anything unmeasured uses the reference
(``INPCTL_KERNELS=triton`` / ``kernel_mode("triton")`` still forces the kernel). The entries are
copied from the raw benchmark files named in each ``source``; re-measure with
``bench/gpu/session.sh`` and update them here (and in docs/kernels.md) when the kernels change.

Speed-ups are reference time / fused time of the same pass at the paper's sizes (attention:
B=16, N=784, M=6, C=768, H=12; scoring: 2 groups of (16, 784, 768) to 16 maps of 256x256).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

H100_DIR = "bench/results/h100-2026-11-22"
# The attention numbers were taken on the FIRST fused attention kernel (commit 96a02d6); the kernel
# was rewritten afterwards (8c1f25f) and the rewrite has not been measured on a GPU yet.
ATTENTION_V1 = "first attention kernel (commit 96a02d6); the rewrite (8c1f25f) is unmeasured"
SCORING_V1 = "scoring kernels as in commit 96a02d6"


@dataclass(frozen=True)
class Measurement:
    """Reference time / fused time for inference (forward) and, where measured, training
    (forward + backward)."""
    forward: float
    train: Optional[float]
    source: str
    code: str

    def speedup(self, training: bool) -> Optional[float]:
        return self.train if training else self.forward


# (kernel, device class, dtype) -> measurement. Device class "sm<major><minor>" from
# torch.cuda.get_device_capability (H100 and H200: sm90; A100: sm80).
EVIDENCE: dict[tuple[str, str, str], Measurement] = {
    ("relu_attention", "sm90", "bf16"): Measurement(0.62, 0.93, f"{H100_DIR}/attention_bf16.json", ATTENTION_V1),
    ("relu_attention", "sm90", "fp16"): Measurement(0.97, 1.19, f"{H100_DIR}/attention_fp16.json", ATTENTION_V1),
    ("relu_attention", "sm90", "fp32"): Measurement(2.21, 1.13, f"{H100_DIR}/attention_fp32.json", ATTENTION_V1),
    ("scoring", "sm90", "bf16"): Measurement(3.98, None, f"{H100_DIR}/scoring_bf16.json", SCORING_V1),
    ("scoring", "sm90", "fp32"): Measurement(2.32, None, f"{H100_DIR}/bench.log (scoring fp32 table)", SCORING_V1),
}

DTYPE_NAMES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float64": "fp64"}


def dtype_name(dtype: object) -> str:
    """'fp32', 'fp16', 'bf16' (or the torch name) for a torch dtype or its string."""
    text = str(dtype)
    return DTYPE_NAMES.get(text, text.removeprefix("torch."))


def measured_speedup(kernel: str, device_class: str, dtype: object, training: bool = False) -> Optional[float]:
    """The recorded speed-up of ``kernel`` over its reference, or None if never measured.

    Training without a forward + backward measurement counts as unmeasured."""
    entry = EVIDENCE.get((kernel, device_class, dtype_name(dtype)))
    return None if entry is None else entry.speedup(training)


def kernel_is_faster(kernel: str, device_class: str, dtype: object, training: bool = False) -> bool:
    """True only where a recorded measurement shows the fused kernel faster than the reference."""
    speedup = measured_speedup(kernel, device_class, dtype, training)
    if speedup is None and training:  # no fwd+bwd number: inference-only evidence does not carry over
        return False
    return speedup is not None and speedup > 1.0


__all__ = ["EVIDENCE", "Measurement", "measured_speedup", "kernel_is_faster", "dtype_name"]
