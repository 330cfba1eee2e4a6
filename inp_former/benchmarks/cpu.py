"""What a CPU benchmark records about the machine: the matrix units found at run time, the raw flags
that decide them, cores and threads, and the versions of the runtimes timed."""
from __future__ import annotations

import os
import platform
from typing import Any

FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu_flags(names: tuple[str, ...] = FLAGS) -> list[str]:
    """Those of ``names`` in ``/proc/cpuinfo``'s flags (sorted; empty where the file is missing)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            present = set(handle.read().split())
    except OSError:
        return []
    return sorted(name for name in names if name in present)


def _model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """JSON-ready: ``capabilities`` (:func:`inp_former.runtime.cpu_capabilities`), ``flags``,
    ``model``, ``cores`` (this process may use), ``threads`` (torch intra-op), ``load_average``
    (1 minute: the machine may be shared), ``torch``, ``onnxruntime`` (None when not installed)."""
    import torch

    from inp_former.runtime import cpu_capabilities, default_cpu_threads

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {"capabilities": cpu_capabilities().as_dict(), "flags": cpu_flags(), "model": _model_name(),
            "cores": default_cpu_threads(), "threads": torch.get_num_threads(),
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "onnxruntime": ort_version, "python": platform.python_version()}


__all__ = ["FLAGS", "cpu_flags", "cpu_info"]
