"""Choose between a Triton kernel and its PyTorch reference.

Modes (``INPCTL_KERNELS``, overridden in a block by :func:`kernel_mode`, which holds its mode in a
``contextvars.ContextVar``: it applies to the thread that entered the block, not to other threads
running at the same time; asyncio tasks created inside the block copy it, as they copy any context):

* ``auto`` (default): the kernel only where :mod:`kernels.evidence` holds a recorded GPU
  measurement showing it faster than the reference for this kernel, device class (``sm90``, ...)
  and dtype, with every tensor on CUDA; everything unmeasured uses the reference;
* ``reference``: always the reference;
* ``triton``: always the kernel (on CPU that needs ``TRITON_INTERPRET=1`` set before
  :mod:`kernels` is imported).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Iterator

import torch

from kernels.evidence import kernel_is_faster

MODES = ("auto", "reference", "triton")
# The innermost kernel_mode() block of the current thread / asyncio task; None outside any block.
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("inpctl_kernel_mode", default=None)


def current_mode() -> str:
    """The active mode: the innermost :func:`kernel_mode` block of this thread (or asyncio task),
    else ``INPCTL_KERNELS``."""
    mode = _override.get()
    if mode is None:
        mode = os.environ.get("INPCTL_KERNELS", "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"INPCTL_KERNELS={mode!r}: expected one of {', '.join(MODES)}")
    return mode


@contextlib.contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    """Force ``mode`` ('auto', 'reference' or 'triton') inside a ``with`` block, for the calling
    thread (or asyncio task) only; leaving the block restores the enclosing block's mode."""
    if mode not in MODES:
        raise ValueError(f"kernel mode {mode!r}: expected one of {', '.join(MODES)}")
    token = _override.set(mode)
    try:
        yield
    finally:
        _override.reset(token)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter). The only place that reads it."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@torch.compiler.assume_constant_result  # a constant while tracing: no graph break in compiled models
def _cuda_device_class(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm{major}{minor}"


def device_class(device: torch.device | str) -> str:
    """'sm90' (H100, H200), 'sm80' (A100), ... for a CUDA device; the device type otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return _cuda_device_class(device.index if device.index is not None else torch.cuda.current_device())


def use_kernel(kernel: str, *tensors: torch.Tensor, training: bool = False) -> bool:
    """True when the Triton ``kernel`` ('relu_attention', 'scoring', 'token_map') should run on
    these tensors; ``training``: a backward pass will follow (picks the forward + backward evidence)."""
    mode = current_mode()
    if mode == "reference":
        return False
    if mode == "triton":
        if not triton_available():
            raise RuntimeError("INPCTL_KERNELS=triton but Triton is not installed")
        if not all(t.is_cuda for t in tensors) and not interpreting():
            raise RuntimeError("INPCTL_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1")
        return True
    if not tensors or not triton_available() or not all(t.is_cuda for t in tensors):
        return False
    return kernel_is_faster(kernel, device_class(tensors[0].device), tensors[0].dtype, training)


__all__ = ["MODES", "current_mode", "kernel_mode", "triton_available", "interpreting", "device_class", "use_kernel"]
