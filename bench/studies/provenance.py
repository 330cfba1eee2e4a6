"""The provenance block of a study's results: date, machine, CPU flags, load, versions, command, commit."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# variables that change what a run measures: recorded with it when set (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16,
# for one, makes torch's and OpenVINO's oneDNN leave AMX unused: a CPU with AVX-512-BF16 alone, emulated)
SETTINGS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS", "INPCTL_RUNTIME", "INPCTL_KERNELS",
            "LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def commit() -> str:
    """``git rev-parse --short HEAD``, with ``+ uncommitted changes`` when the tree differs from it
    (untracked files included: a study run from a new file)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    return head + ("" if not git("status", "--porcelain").stdout.strip() else " + uncommitted changes")


def provenance(command: str) -> dict[str, Any]:
    """JSON-ready; ``cpu_flags`` are those of ``grep -o 'amx_bf16\\|avx512_bf16' /proc/cpuinfo``."""
    from inp_former.benchmarks.cpu import cpu_flags, cpu_info

    info = cpu_info()
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{info['model']}, {info['cores']} cores (shared with other jobs)",
            "cpu_flags": cpu_flags(("amx_bf16", "avx512_bf16")), "load_average": info["load_average"],
            "torch": info["torch"], "onnxruntime": info["onnxruntime"], "python": info["python"],
            "command": command, "commit": commit(),
            "environment": {name: os.environ[name] for name in SETTINGS if name in os.environ}}


def header_lines(prov: dict[str, Any], software: str = "", load: bool = True) -> list[str]:
    """A record page's provenance lines: date, machine, CPU flags (and the load average before the run
    where ``load``); versions (torch, ``software`` such as ``"onnxruntime 1.32.0, "``, Python) and
    the commit; the command."""
    load_text = f"; load average before: {prov['load_average']}" if load else ""
    return [f"- Date: {prov['date']}; machine: {prov['machine']}; CPU flags: {', '.join(prov['cpu_flags']) or 'none'}"
            f"{load_text}",
            f"- Software: torch {prov['torch']}, {software}Python {prov['python']}; commit {prov['commit']}",
            f"- Command: `{prov['command']}`"
            + "".join(f" with {name}={value}" for name, value in (prov.get("environment") or {}).items())]


def write_record(out: Path, result: dict[str, Any], markdown: str) -> None:
    """``<out>.json`` (the result) and ``<out>.md`` (its page), each written atomically; the page printed."""
    import json

    from inp_former.io import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown)
    print(markdown)
