"""Fused Triton kernels for INP-Former, each beside a plain PyTorch reference.

Import ops through :mod:`kernels.dispatch`, which picks the Triton kernel on CUDA and the
reference elsewhere. ``INPCTL_KERNELS=reference`` forces the reference everywhere,
``INPCTL_KERNELS=triton`` forces the kernel (on CPU only under ``TRITON_INTERPRET=1``).

Each kernel module has, beside its kernels and host functions, a launch spec per kernel
(``forward_launch``, ``backward_launch``, ``cosine_distance_launches``, ``token_map_launch``): a
function of the tensors that returns a :class:`Launch`, what its host function passes. The host
functions launch exactly that; :mod:`inp_former.benchmarks.compile` calls the same functions on
"meta" tensors (shapes and strides, no memory) to compile each config as it is launched.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union


class Launch(NamedTuple):
    """One kernel launch: ``kernel[grid](**args, **constexprs)``.

    * ``grid``: a tuple, or for an autotuned kernel a function of the chosen config's meta-parameters;
    * ``args``: the runtime arguments by the kernel's parameter names: tensors (outputs included,
      allocated by the launch spec), sizes, strides and scalars;
    * ``constexprs``: the compile-time arguments the host passes (autotune adds its config's own).
    """
    grid: Union[tuple, Callable[[dict], tuple]]
    args: dict[str, Any]
    constexprs: dict[str, Any]


__all__ = ["Launch"]
