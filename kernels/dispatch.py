"""Choose between a Triton kernel and its PyTorch reference.

``auto`` (the default) uses the kernel when every tensor is on CUDA and Triton imports;
``reference`` always uses the reference; ``triton`` always uses the kernel (on CPU that
needs ``TRITON_INTERPRET=1`` set before :mod:`kernels` is imported). The mode comes from the
``INPCTL_KERNELS`` environment variable, and :func:`kernel_mode` overrides it in a block.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import torch

MODES = ("auto", "reference", "triton")
_override: list[str] = []


def current_mode() -> str:
    """The active mode: the innermost :func:`kernel_mode` block, else ``INPCTL_KERNELS``."""
    mode = _override[-1] if _override else os.environ.get("INPCTL_KERNELS", "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"INPCTL_KERNELS={mode!r}: expected one of {', '.join(MODES)}")
    return mode


@contextlib.contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    """Force ``mode`` ('auto', 'reference' or 'triton') inside a ``with`` block."""
    if mode not in MODES:
        raise ValueError(f"kernel mode {mode!r}: expected one of {', '.join(MODES)}")
    _override.append(mode)
    try:
        yield
    finally:
        _override.pop()


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_kernel(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernel should run on these tensors."""
    mode = current_mode()
    if mode == "reference":
        return False
    if mode == "triton":
        if not triton_available():
            raise RuntimeError("INPCTL_KERNELS=triton but Triton is not installed")
        if not all(t.is_cuda for t in tensors) and not interpreting():
            raise RuntimeError("INPCTL_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1")
        return True
    return triton_available() and all(t.is_cuda for t in tensors)
