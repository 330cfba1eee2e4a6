"""Process-level runtime defaults: data-loading workers, CPU threads, optional GPU image decoding.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, MutableMapping, Sequence

if TYPE_CHECKING:
    import torch

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


# --- GPU image decoding ------------------------------------------------------------------------

GPU_DECODABLE = (".jpg", ".jpeg", ".png")


def decode_on_gpu(paths: Sequence[str | Path], device: "torch.device | str" = "cuda", resize: int = 448,
                  crop: int = 392) -> "torch.Tensor":
    """Images -> normalised (B, 3, crop, crop) float32 on ``device``, decoded and resized there.

    JPEGs decode with nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``, batched); PNGs decode
    on the CPU (torchvision has no GPU PNG decoder) and are resized on the GPU. Then the steps of
    :func:`inp_former.data.image_transform`: bilinear resize to resize x resize with antialiasing,
    centre crop, ImageNet normalisation. Grayscale is replicated to RGB, alpha dropped (as
    ``load_rgb``); 16-bit and other modes are not handled here: use the PIL path for them.

    Not bit-identical to the PIL path: PIL resizes the 8-bit image and rounds the result to 8 bits,
    this resizes in float32 and does not round; nvJPEG's IDCT may also differ from libjpeg's by
    one level. Measured on CPU with torchvision's CPU decoders (bench/loader_bench.py): 1024 px
    images reduced to 448 differ by at most 0.98 of 255 levels (mean 0.27), 224 px images enlarged
    to 448 by at most 0.44 (mean 0.001); tests/test_runtime.py holds it to 2 levels. Far below what
    moves an anomaly map. (torchvision >= 0.29 deprecates its decoders in favour of TorchCodec.)
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

    device = torch.device(device)
    datas = [read_file(str(p)) for p in paths]
    jpeg = [str(p).lower().endswith((".jpg", ".jpeg")) for p in paths]
    images: list[torch.Tensor | None] = [None] * len(datas)
    jpeg_index = [i for i, j in enumerate(jpeg) if j]
    if jpeg_index and device.type == "cuda":
        decoded = decode_jpeg([datas[i] for i in jpeg_index], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(jpeg_index, decoded):
            images[i] = image
    for i, data in enumerate(datas):
        if images[i] is None:
            images[i] = decode_image(data, mode=ImageReadMode.RGB).to(device, non_blocking=True)
    return preprocess_uint8([img for img in images if img is not None], resize, crop)


def preprocess_uint8(images: "Sequence[torch.Tensor]", resize: int = 448, crop: int = 392) -> "torch.Tensor":
    """(3, H, W) uint8 tensors (any sizes, any device) -> (B, 3, crop, crop) normalised float32:
    the tensor form of :func:`inp_former.data.image_transform`."""
    import torch
    import torch.nn.functional as F

    from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    if not 0 < crop <= resize:
        raise ValueError(f"crop {crop} / resize {resize}: expected 0 < crop <= resize")
    out = []
    for image in images:
        x = image.unsqueeze(0).float().div_(255.0)
        # antialias=True is PIL's low-pass filter when shrinking; when enlarging both are plain bilinear
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False, antialias=True)
        top = int(round((resize - crop) / 2.0))  # torchvision's CenterCrop offset
        out.append(x[..., top:top + crop, top:top + crop])
    batch = torch.cat(out)
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


__all__ = ["apply_env_defaults", "configure_cpu_threads", "decode_on_gpu", "default_cpu_threads",
           "default_num_workers", "loader_kwargs", "preprocess_uint8", "ThreadChoice"]
