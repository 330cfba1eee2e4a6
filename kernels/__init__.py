"""Fused Triton kernels for INP-Former, each beside a plain PyTorch reference.

Import ops through :mod:`kernels.dispatch`, which picks the Triton kernel on CUDA and the
reference elsewhere. ``INPCTL_KERNELS=reference`` forces the reference everywhere,
``INPCTL_KERNELS=triton`` forces the kernel (on CPU only under ``TRITON_INTERPRET=1``).
"""
