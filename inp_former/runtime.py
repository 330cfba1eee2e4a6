"""Process-level runtime defaults: data-loading workers, CPU threads; and the tensor form of the preprocessing.

What the entry points call, in this order::

    from inp_former.runtime import apply_env_defaults
    apply_env_defaults()              # 1. very first, BEFORE torch is imported (OMP_WAIT_POLICY)
    import torch ...
    from inp_former.runtime import configure_cpu_threads
    configure_cpu_threads()           # 2. once, before the first tensor op (intra-op threads)
    DataLoader(dataset, batch_size=..., **loader_kwargs(device, num_workers))   # 3. every loader

Nothing here overrides a choice the user made: an OMP_* / MKL_* variable already in the
environment, or an explicit ``threads``/``num_workers`` argument, always wins. The defaults come
from measurements on a shared 2-core machine (bench/results/threads-cpu-2026-12-01.md and
bench/results/loader-cpu-2026-12-01.md; docs/performance.md).

This module imports torch lazily: importing it must not load libgomp before
:func:`apply_env_defaults` has run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, MutableMapping, Sequence

if TYPE_CHECKING:
    import torch

# --- the CPU's matrix units --------------------------------------------------------------------

@dataclass(frozen=True)
class CpuCapabilities:
    """What the CPU can do natively, read at run time (never guessed from a model or host name)."""
    amx_bf16: bool          # Intel AMX tiles with bf16 (Sapphire Rapids and later)
    avx512_bf16: bool       # AVX-512 BF16 dot products (Cooper Lake, Zen 4 and later)
    amx_int8: bool
    avx512_vnni: bool       # int8 dot products (what int8 inference uses without AMX)
    source: str             # where it was read: "torch.cpu" or "/proc/cpuinfo"

    @property
    def native_bf16(self) -> str | None:
        """The name of the CPU's native bf16 matrix unit, or None."""
        return "AMX-BF16" if self.amx_bf16 else "AVX-512-BF16" if self.avx512_bf16 else None

    def as_dict(self) -> dict[str, Any]:
        return {"amx_bf16": self.amx_bf16, "avx512_bf16": self.avx512_bf16, "amx_int8": self.amx_int8,
                "avx512_vnni": self.avx512_vnni, "native_bf16": self.native_bf16, "source": self.source}


def cpu_capabilities(cpuinfo: str | None = None) -> CpuCapabilities:
    """The CPU's bf16/int8 matrix units: from ``/proc/cpuinfo`` flags (Linux; ``cpuinfo`` replaces the
    file's text, for tests), else from torch's own CPU probe; none found on other systems."""
    text = cpuinfo
    if text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            text = None
    if text is not None:
        flags = set(text.split())
        return CpuCapabilities("amx_bf16" in flags, "avx512_bf16" in flags, "amx_int8" in flags,
                               "avx512_vnni" in flags, "/proc/cpuinfo")
    import torch

    probe = getattr(torch, "cpu", None)
    amx = bool(getattr(probe, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(probe, "_is_avx512_bf16_supported", lambda: False)())
    return CpuCapabilities(amx, avx512_bf16, amx, avx512_bf16, "torch.cpu")


# --- data loading ----------------------------------------------------------------------------

MAX_CUDA_WORKERS = 8   # decoding + resizing one 448 px image takes ~2-6 ms of one core; 8 feed >1000 img/s
# On CPU the workers compete with the model's own threads for the same cores. On 2 shared cores
# (bench/results/loader-cpu-2026-12-01.md) workers looked 2-6x faster only because the main process
# collapsed under libgomp's spinning wait policy; with PASSIVE the main process alone loaded the
# demo at 13-82 img/s, above the ~10 img/s a CPU training step consumes. So none by default.
CPU_WORKERS = 0


def _cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_num_workers(device: "torch.device | str") -> int:
    """Data-loading processes for ``device``: on CUDA one per core, keeping one core for the main
    process (which launches the kernels), at most :data:`MAX_CUDA_WORKERS`; on CPU
    :data:`CPU_WORKERS` (the model needs the cores)."""
    kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
    if kind == "cuda":
        return max(0, min(MAX_CUDA_WORKERS, _cpu_count() - 1))
    return CPU_WORKERS


def loader_kwargs(device: "torch.device | str", num_workers: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``torch.utils.data.DataLoader`` on ``device``.

    ``num_workers`` None picks :func:`default_num_workers`. On CUDA, pinned memory makes the
    host-to-device copy asynchronous (``.to(device, non_blocking=True)``). With workers, they are
    kept between epochs (starting them costs ~1 s each: re-importing torch) and each prefetches 4
    batches so a slow image does not stall the GPU.
    """
    kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
    workers = default_num_workers(device) if num_workers is None else int(num_workers)
    if workers < 0:
        raise ValueError(f"num_workers {workers}: expected >= 0")
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": kind == "cuda"}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    return kwargs


# --- CPU threads -----------------------------------------------------------------------------

# Environment variables by which a user states a thread choice: never overridden.
USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "INPCTL_THREADS")
# OpenMP threads that finish their share sleep instead of spinning. Spinning (ACTIVE, and for a
# while libgomp's default) burns a core that a competing process needs; on a shared machine the
# spinning team then waits for a descheduled member, which is the collapse the demo showed.
DEFAULT_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_env_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the OpenMP defaults in the environment, keeping any value already there.

    Call at the very top of the CLI entry point, BEFORE ``import torch``: libgomp reads
    ``OMP_WAIT_POLICY`` once, when torch loads it. Returns the variables it set (name -> value).
    Subprocesses (DataLoader workers, torchrun) inherit the environment.
    """
    env = os.environ if environ is None else environ
    applied = {}
    for name, value in DEFAULT_ENV.items():
        if name not in env:
            env[name] = value
            applied[name] = value
    return applied


@dataclass(frozen=True)
class ThreadChoice:
    threads: int          # intra-op threads now in effect
    source: str           # "argument", "environment (OMP_NUM_THREADS)", "default (...)"
    wait_policy: str      # OMP_WAIT_POLICY as libgomp saw it (if set before torch loaded), or "libgomp default"


def default_cpu_threads(cores: int | None = None) -> int:
    """Intra-op threads when nobody chose: every core this process may use.

    Measured on a shared 2-core machine under a load average of 9-14
    (bench/results/threads-cpu-2026-12-01.md): with OMP_WAIT_POLICY=PASSIVE two threads beat one
    both with and without an extra competing process; it is the spinning wait policy (libgomp's
    default, or ACTIVE), not the thread count, that collapses under contention. So: all cores,
    and :func:`apply_env_defaults` makes the wait passive.
    """
    return max(1, _cpu_count() if cores is None else int(cores))


def configure_cpu_threads(threads: int | None = None, environ: MutableMapping[str, str] | None = None) -> ThreadChoice:
    """Set torch's intra-op threads, unless the user already chose.

    ``threads`` (e.g. a ``--threads`` flag) wins; else an ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``
    in the environment is left in effect (torch applied it when it started) and
    ``INPCTL_THREADS`` is applied; else :func:`default_cpu_threads`. Call once, early, from the main
    thread, before the first parallel tensor operation (changing the count later rebuilds the
    OpenMP team). Library users who set ``torch.set_num_threads`` themselves should not call it.
    """
    import torch

    env = os.environ if environ is None else environ
    policy = env.get("OMP_WAIT_POLICY", "libgomp default")
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads {threads}: expected >= 1")
        torch.set_num_threads(int(threads))
        return ThreadChoice(int(threads), "argument", policy)
    for name in USER_THREAD_VARIABLES:
        if env.get(name, "").strip():
            if name == "INPCTL_THREADS":
                try:
                    count = int(env[name])
                except ValueError:
                    raise ValueError(f"INPCTL_THREADS={env[name]!r}: expected a positive integer") from None
                if count < 1:
                    raise ValueError(f"INPCTL_THREADS={count}: expected a positive integer")
                torch.set_num_threads(count)
            return ThreadChoice(torch.get_num_threads(), f"environment ({name})", policy)
    count = default_cpu_threads()
    torch.set_num_threads(count)
    return ThreadChoice(count, "default (all cores)", policy)


# --- tensor preprocessing --------------------------------------------------------------------

def preprocess_uint8(images: "Sequence[torch.Tensor]", resize: int = 448, crop: int = 392) -> "torch.Tensor":
    """(3, H, W) uint8 tensors (any sizes, any device) -> (B, 3, crop, crop) normalised float32:
    the tensor form of :func:`inp_former.data.image_transform`, for images already decoded to
    tensors (e.g. on a GPU), with the same :class:`~inp_former.data.geometry.Geometry`.

    Not bit-identical to the PIL path, which rounds its resized image to 8 bits: within 2 levels of
    255 (tests/test_runtime.py; bench/studies/loader_bench.py measures it)."""
    import torch
    from torchvision.transforms.functional import normalize

    from inp_former.data.geometry import Geometry
    from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    geometry = Geometry(resize, crop)
    batch = torch.cat([geometry.forward_tensor(image.unsqueeze(0).float().div_(255.0)) for image in images])
    return normalize(batch, IMAGENET_MEAN, IMAGENET_STD)


__all__ = ["CpuCapabilities", "cpu_capabilities", "apply_env_defaults", "configure_cpu_threads", "default_cpu_threads",
           "default_num_workers", "loader_kwargs", "preprocess_uint8", "ThreadChoice"]
