"""Compile-time evidence: every autotune config of every Triton kernel, compiled for sm_80 and sm_90.

No GPU needed: ``triton.compile`` lowers a kernel for an explicit ``GPUTarget`` to PTX and, through
the ``ptxas`` that ships in the Triton wheel, to a cubin. For each (kernel, arch, dtype, config) at
the paper's shapes (attention B=16, N=784, M=6, C=768, H=12, head dim 64; scoring 2 groups, grid 28,
image 392, map 256), with the arguments the library launches it with (each kernel module's launch spec,
e.g. ``kernels.relu_attention.forward_launch``, called on meta tensors), a row records:

* registers per thread and local-memory bytes, read back from the cubin Triton built (``cuobjdump``);
* spill stores/loads (bytes, ``ptxas -v`` on Triton's PTX) and spill instructions (``STL``/``LDL``
  in the SASS);
* shared memory Triton requests per program (``metadata.shared``);
* tensor-core instructions: ``mma.sync`` / ``wgmma`` in the PTX, ``HMMA`` / ``HGMMA`` in the SASS;
* vectorised global loads (``ld.global...v4`` / ``.v2`` in the PTX);
* theoretical occupancy: resident warps per SM as limited by registers, shared memory and the warp
  and block limits of the architecture (A100 / H100 tables below).

A config that fails to compile becomes a row with ``error`` set. Used by ``inpctl bench compile`` and
``tests/test_compile_evidence.py``. Under ``TRITON_INTERPRET=1`` the kernels are interpreter objects
that cannot be compiled, so the report then runs itself in a subprocess without it.
"""
from __future__ import annotations

import concurrent.futures
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

ARCHS = (80, 90)
DTYPES = ("fp32", "bf16", "fp16")
KERNELS = ("attn_fwd", "attn_bwd", "cos_dist", "map")

# Paper shapes
B, N, M, C, H = 16, 784, 6, 768, 12
D = C // H
GROUPS, GRID, IMAGE, OUT = 2, 28, 392, 256


@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits of the occupancy calculation (CUDA programming guide, compute capability table)."""
    regs: int = 65536
    max_warps: int = 64
    max_blocks: int = 32
    smem_bytes: int = 228 * 1024
    smem_reserved_per_block: int = 1024   # the runtime keeps 1 KB per resident block (sm_80+)
    reg_alloc_unit: int = 256             # registers are allocated per warp in units of 256
    max_regs_per_thread: int = 255


LIMITS = {80: SmLimits(smem_bytes=164 * 1024), 90: SmLimits(smem_bytes=228 * 1024)}
GPU_NAMES = {80: "A100", 90: "H100"}
SM_COUNTS = {80: 108, 90: 132}   # A100, H100 SXM: what the attention backward's split is sized for


def occupancy(regs: int, smem: int, num_warps: int, arch: int) -> dict[str, Any]:
    """Resident warps per SM for a program of ``num_warps`` warps using ``regs`` registers per thread
    and ``smem`` bytes of shared memory; ``limiter`` names what bounds it."""
    lim = LIMITS[arch]
    regs_per_warp = math.ceil(max(regs, 1) * 32 / lim.reg_alloc_unit) * lim.reg_alloc_unit
    by = {
        "warps": lim.max_warps // num_warps,
        "blocks": lim.max_blocks,
        "regs": (lim.regs // regs_per_warp) // num_warps,
        "smem": lim.smem_bytes // (smem + lim.smem_reserved_per_block) if smem else lim.max_blocks,
    }
    blocks = min(by.values())
    limiter = min(by, key=lambda k: (by[k], k != "warps"))
    warps = blocks * num_warps
    return {"blocks_per_sm": blocks, "warps_per_sm": warps, "occupancy": warps / lim.max_warps,
            "limiter": limiter}


# --------------------------------------------------------------------------------------------
# Kernel specifications at the paper's shapes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    kernel: str                # short name (KERNELS)
    attr: tuple[str, str]      # (module, attribute) of the kernel (an Autotuner or a JITFunction)
    args: dict[str, Any]       # runtime args by name: "*type" for pointers, ints, floats
    constexprs: dict[str, Any]
    configs: list[tuple[dict[str, Any], int, int]]  # (meta, num_warps, num_stages)
    has_dot: bool              # fp16/bf16 dots that must run on tensor cores


def _configs_of(configs: Iterable[Any]) -> list[tuple[dict[str, Any], int, int]]:
    return [(dict(c.kwargs), c.num_warps, c.num_stages) for c in configs]


def _meta(*shape: int, dtype: str) -> Any:
    """A tensor with shape, strides and dtype but no memory: what a launch spec needs."""
    import torch

    return torch.empty(shape, dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype],
                       device="meta")


def _compiler_args(launch: Any) -> dict[str, Any]:
    """A launch's runtime arguments as the compiler sees them: tensors become pointer types ("*bf16")."""
    from kernels.evidence import dtype_name

    return {name: f"*{dtype_name(v.dtype)}" if hasattr(v, "data_ptr") else v for name, v in launch.args.items()}


def _specs(kernel: str, dtype: str, arch: int) -> list[_Spec]:
    """How the library launches ``kernel`` at the paper's shapes: the kernel module's own launch spec
    (the function its host function calls) on meta tensors laid out as the model's."""
    from kernels import relu_attention as ra
    from kernels import scoring as sc

    if kernel in ("attn_fwd", "attn_bwd"):
        q = _meta(B, N, C, dtype=dtype)
        kv = _meta(B, M, 2 * C, dtype=dtype)  # k, v: column slices of the model's (B, M, 2C) kv Linear output
        k, v, scale = kv[..., :C], kv[..., C:], _meta(H, dtype="fp32")
        if kernel == "attn_fwd":
            launch, attr, configs = ra.forward_launch(q, k, v, scale, H), "_relu_attention_fwd", ra.FWD_CONFIGS
        else:
            launch = ra.backward_launch(q, k, v, scale, _meta(B, N, C, dtype=dtype), H, SM_COUNTS[arch])
            attr, configs = "_relu_attention_bwd", ra.BWD_CONFIGS
        return [_Spec(kernel, ("kernels.relu_attention", attr), _compiler_args(launch), launch.constexprs,
                      _configs_of(configs), has_dot=dtype != "fp32")]  # fp32: "ieee" FMA dots
    if kernel == "cos_dist":
        features = [_meta(B, N, C, dtype=dtype) for _ in range(2 * GROUPS)]
        launch = sc.cosine_distance_launches(features[:GROUPS], features[GROUPS:])[0]
        configs = sc.prune_cos_configs(sc.COS_CONFIGS, launch.constexprs["C"],   # what autotune keeps
                                       launch.args["e0"].element_size())
        return [_Spec(kernel, ("kernels.scoring", "_cosine_distance_kernel"), _compiler_args(launch),
                      launch.constexprs, _configs_of(configs), has_dot=False)]
    if kernel == "map":  # always fp32 (the map of any feature dtype); ieee dots: FMA, no tensor cores
        launch = sc.token_map_launch(_meta(B, GRID, GRID, dtype="fp32"), _meta(OUT, GRID, dtype="fp32"))
        tile = {name: launch.constexprs[name] for name in ("BLOCK_I", "BLOCK_J")}
        return [_Spec(kernel, ("kernels.scoring", "_token_map_to_image_kernel"), _compiler_args(launch),
                      launch.constexprs, [(tile, sc.MAP_WARPS, 3)], has_dot=False)]
    raise ValueError(f"unknown kernel {kernel!r}: expected one of {', '.join(KERNELS)}")


def _jit_function(attr: tuple[str, str]) -> Any:
    import importlib

    from triton.runtime.autotuner import Autotuner

    obj = getattr(importlib.import_module(attr[0]), attr[1])
    return obj.fn if isinstance(obj, Autotuner) else obj


def _compilable() -> bool:
    """False when the kernels were built as interpreter objects (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.jit import JITFunction

    return isinstance(_jit_function(("kernels.relu_attention", "_relu_attention_fwd")), JITFunction)


def _source(fn: Any, args: dict[str, Any], constexprs: dict[str, Any]) -> Any:
    """An ASTSource specialised as a launch would be: ints equal to 1 become constants, pointers and
    ints divisible by 16 carry the divisibility hint (what enables 128-bit loads). The
    ``ASTSource(fn, signature, constexprs, attrs)`` form is shared by Triton 3.3 through 3.8."""
    from triton.compiler import ASTSource

    signature: dict[str, str] = {}
    constants: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name], constants[name] = "constexpr", constexprs[name]
            continue
        value = args[name]
        if isinstance(value, str):                      # pointer: torch allocations are 16-byte aligned
            signature[name] = value
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[name], constants[name] = "constexpr", 1
                continue
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    return ASTSource(fn, signature, constants, attrs)


def _tool(name: str) -> Optional[str]:
    """A CUDA binary shipped in the Triton wheel (ptxas, cuobjdump), else on PATH."""
    try:
        import triton.backends.nvidia as nvidia

        path = Path(nvidia.__file__).parent / "bin" / name
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return shutil.which(name)


def _run_tool(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def _sm_name(arch: int) -> str:
    return f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"  # Triton builds sm_90a (wgmma needs it)


def _analyse(ptx: str, cubin: bytes, arch: int, sass: bool = True) -> dict[str, Any]:
    """Registers, spills and instruction counts of one compiled kernel (SASS counts when ``sass``)."""
    out: dict[str, Any] = {
        "ptx_mma": len(re.findall(r"^\s*mma\.sync", ptx, re.M)),
        "ptx_wgmma": len(re.findall(r"^\s*wgmma\.mma_async", ptx, re.M)),
        "ld_v4": len(re.findall(r"^\s*(?:@%p\d+\s+)?ld\.global(?:\.[\w:]+)*\.v4\.", ptx, re.M)),
        "ld_v2": len(re.findall(r"^\s*(?:@%p\d+\s+)?ld\.global(?:\.[\w:]+)*\.v2\.", ptx, re.M)),
        "ld_scalar": len(re.findall(r"^\s*(?:@%p\d+\s+)?ld\.global(?:\.[\w:]+)*\.(?:b|f|u|s)\d+\s", ptx, re.M)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path, cubin_path = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        ptx_path.write_text(ptx)
        cubin_path.write_bytes(cubin)
        ptxas, cuobjdump = _tool("ptxas"), _tool("cuobjdump")
        if ptxas:  # the spill report; same ptxas and PTX as Triton's own build
            log = _run_tool([ptxas, "-lineinfo", "-v", f"--gpu-name={_sm_name(arch)}", str(ptx_path),
                             "-o", str(Path(tmp) / "again.cubin")])
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
            regs = re.search(r"Used (\d+) registers", log)
            if spill:
                out["spill_stores"], out["spill_loads"] = int(spill.group(1)), int(spill.group(2))
            if regs:
                out["regs"] = int(regs.group(1))
        if cuobjdump:  # the cubin Triton built: its registers and local memory are what runs
            usage = _run_tool([cuobjdump, "--dump-resource-usage", str(cubin_path)])
            found = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage)
            if found:
                out["regs"], out["stack"], out["local"] = (int(found.group(i)) for i in (1, 2, 4))
            if sass:  # disassembly: the slowest step (~0.5 s a kernel)
                text = _run_tool([cuobjdump, "-sass", str(cubin_path)])
                out["sass_hmma"] = len(re.findall(r"\bHMMA\.", text))
                out["sass_hgmma"] = len(re.findall(r"\bHGMMA\.", text))
                out["sass_spill_insts"] = len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\s", text))
                out["sass_ldg128"] = len(re.findall(r"\bLDG\.E\.128\b", text))
    return out


def _cfg_label(meta: dict[str, Any], num_warps: int, num_stages: int) -> str:
    """Short config text: block sizes, then w<warps> s<stages>, e.g. '64x128 w4 s3'."""
    return f"{'x'.join(str(v) for v in meta.values())} w{num_warps} s{num_stages}"


def _compile_row(kernel: str, dtype: str, arch: int, index: int, sass: bool = True) -> dict[str, Any]:
    """Compile config ``index`` of ``kernel`` for ``arch`` in ``dtype``; never raises."""
    import triton
    from triton.backends.compiler import GPUTarget

    spec = _specs(kernel, dtype, arch)[0]
    meta, num_warps, num_stages = spec.configs[index]
    row: dict[str, Any] = {"kernel": kernel, "arch": arch, "dtype": dtype,
                           "config": {**meta, "num_warps": num_warps, "num_stages": num_stages},
                           "cfg": _cfg_label(meta, num_warps, num_stages), "has_dot": spec.has_dot, "error": None}
    try:
        fn = _jit_function(spec.attr)
        source = _source(fn, spec.args, {**spec.constexprs, **meta})
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
        row["smem"] = int(getattr(compiled.metadata, "shared", 0) or 0)
        row.update(_analyse(compiled.asm["ptx"], compiled.asm["cubin"], arch, sass))
    except Exception as exc:  # a config that does not compile is a finding, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return row
    row["spills"] = row.get("spill_stores", 0) + row.get("spill_loads", 0) + row.get("local", 0)
    row["tensor_cores"] = bool(row.get("ptx_mma") or row.get("ptx_wgmma") or row.get("sass_hmma")
                               or row.get("sass_hgmma"))
    if "regs" in row:
        row.update(occupancy(row["regs"], row["smem"], num_warps, arch))
    return row


def _jobs(kernels: Sequence[str], targets: Sequence[tuple[int, str]],
          sass: bool) -> list[tuple[str, str, int, int, bool]]:
    jobs = []
    for kernel in kernels:
        # the map kernel is fp32 whatever the features' dtype: once per arch
        pairs = dict.fromkeys((arch, "fp32") for arch, _ in targets) if kernel == "map" else targets
        for arch, dtype in pairs:
            jobs += [(kernel, dtype, arch, i, sass) for i in range(len(_specs(kernel, dtype, arch)[0].configs))]
    return jobs


def _check_args(archs: Sequence[int], dtypes: Sequence[str], kernels: Sequence[str]) -> None:
    for arch in archs:
        if arch not in LIMITS:
            raise ValueError(f"arch {arch}: expected one of {', '.join(map(str, LIMITS))}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    for kernel in kernels:
        if kernel not in KERNELS:
            raise ValueError(f"kernel {kernel!r}: expected one of {', '.join(KERNELS)}")


def compiler_unavailable() -> Optional[str]:
    """Why Triton cannot compile for a GPU target here, or None if it can."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as exc:
        return f"Triton's compiler is not importable: {exc}"
    if not _tool("ptxas"):
        return "no ptxas (neither in the Triton wheel nor on PATH)"
    return None


Progress = Callable[[int, int, str], None]   # (configs compiled, configs in all, the last one compiled)


def compile_report(archs: Sequence[int] = ARCHS, dtypes: Sequence[str] = DTYPES,
                   kernels: Sequence[str] = KERNELS, jobs: Optional[int] = None,
                   sass: bool = True, targets: Optional[Sequence[tuple[int, str]]] = None,
                   progress: Optional[Progress] = None) -> dict[str, Any]:
    """Compile every autotune config of each kernel for each arch and dtype; returns
    ``{"rows": [...], "triton": version, "shapes": ..., "limits": ...}``. Rows of configs that
    fail to compile carry ``error``. ``jobs``: parallel compiler processes (default: up to 4 cores);
    ``sass``: also disassemble (HMMA/HGMMA, STL/LDL, 128-bit LDG counts; slower); ``targets``:
    (arch, dtype) pairs to compile instead of every arch with every dtype; ``progress`` is called
    as the configs compile (a report already made in this process is returned at once)."""
    pairs = tuple(dict.fromkeys((int(a), str(d)) for a, d in targets)) if targets else \
        tuple((int(a), d) for a in archs for d in dtypes)
    _check_args([a for a, _ in pairs], [d for _, d in pairs], kernels)
    kernels = tuple(kernels)
    reason = compiler_unavailable()
    if reason:
        raise RuntimeError(reason)
    key = (pairs, kernels, jobs or min(4, os.cpu_count() or 1), bool(sass))
    if key not in _REPORTS:
        _REPORTS[key] = _report(*key, progress=progress or (lambda done, total, name: None))
    return _REPORTS[key]


_REPORTS: dict[tuple, dict[str, Any]] = {}   # the reports made in this process (compiling takes minutes)


def _report(targets: tuple[tuple[int, str], ...], kernels: tuple[str, ...], jobs: int, sass: bool,
            progress: Progress) -> dict[str, Any]:
    import triton

    from kernels.dispatch import interpreting

    if interpreting() or not _compilable():
        return _report_in_subprocess(targets, kernels, jobs, sass, progress)
    work = _jobs(kernels, targets, sass)
    progress(0, len(work), "")
    if jobs > 1 and len(work) > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_compile_row, *job): job for job in work}
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                progress(done, len(work), _job_label(futures[future]))
            rows = [future.result() for future in futures]   # (a dict keeps the submission order)
    else:
        rows = []
        for job in work:
            rows.append(_compile_row(*job))
            progress(len(rows), len(work), _job_label(job))
    return {"rows": rows, "triton": triton.__version__,
            "shapes": {"attention": dict(B=B, N=N, M=M, C=C, H=H, D=D),
                       "scoring": dict(B=B, groups=GROUPS, grid=GRID, image=IMAGE, out=OUT, C=C)},
            "limits": {GPU_NAMES[a]: {"arch": f"sm_{a}", **LIMITS[a].__dict__}
                       for a in dict.fromkeys(a for a, _ in targets)}}


def _job_label(job: tuple[str, str, int, int, bool]) -> str:
    kernel, dtype, arch, index, _ = job
    return f"{kernel} sm_{arch} {dtype} #{index}"


SUBPROCESS_TIMEOUT_S = 1800
PROGRESS_PREFIX = "progress\t"   # the subprocess's progress lines on stderr: prefix, done, total, name


def _report_in_subprocess(targets, kernels, jobs, sass, progress: Progress) -> dict[str, Any]:
    """The same report from a fresh interpreter without TRITON_INTERPRET (kernels compile there);
    its progress comes back as lines on its stderr, the report as JSON on its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "inp_former.benchmarks.compile", "--jobs", str(jobs), "--progress",
           *(f"--target={a}:{d}" for a, d in targets), *(f"--kernel={k}" for k in kernels),
           *([] if sass else ["--no-sass"])]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
        watchdog = threading.Timer(SUBPROCESS_TIMEOUT_S, proc.kill)   # a hung compiler cannot hang us
        watchdog.start()
        errors: list[str] = []
        try:
            for line in proc.stderr:   # ends when the subprocess exits (or is killed)
                if line.startswith(PROGRESS_PREFIX):
                    done, total, name = line[len(PROGRESS_PREFIX):].rstrip("\n").split("\t", 2)
                    progress(int(done), int(total), name)
                else:
                    errors.append(line)
            code = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:   # we were interrupted: the compiler goes too
                proc.kill()
                proc.wait()
        if code:
            raise RuntimeError(f"compile report subprocess failed ({code}): {''.join(errors).strip()[-2000:]}")
        out.seek(0)
        return json.loads(out.read())


# --------------------------------------------------------------------------------------------
# Table for the CLI
# --------------------------------------------------------------------------------------------

COLUMNS = ["kernel", "sm", "dt", "cfg", "regs", "spill", "smemKB", "TC", "v4ld", "occ%"]
SHORT_NAMES = {"attn_fwd": "fwd", "attn_bwd": "bwd", "cos_dist": "cos", "map": "map"}
COLUMN_NOTES = {
    "kernel": "fwd / bwd: INP attention forward / backward; cos: 1 - cos per token; map: G A G^T",
    "cfg": "block sizes, w<warps>, s<pipeline stages> (kernels with a loop only)",
    "spill": "spill stores + loads + local memory, bytes per thread",
    "smemKB": "shared memory per program, KB",
    "TC": "tensor-core instructions of the fp16/bf16 dots (mma, wgmma); '-' where there is none to expect",
    "v4ld": "128-bit global loads (ld.global.v4) in the PTX",
    "occ%": "theoretical occupancy: resident warps / 64 per SM",
}


def format_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows of text) for a boxed terminal table within 80 columns; what each column
    means is in ``COLUMN_NOTES``."""
    table = []
    for r in report["rows"]:
        cfg = r["cfg"] if r["kernel"] == "attn_bwd" else r["cfg"].rsplit(" s", 1)[0]  # stages matter in loops
        head = [SHORT_NAMES.get(r["kernel"], r["kernel"]), str(r["arch"]), r["dtype"], cfg]
        if r.get("error"):
            table.append(head + ["error", "", "", "", "", ""])
            continue
        tc = ("wgmma" if r.get("ptx_wgmma") else "mma" if r.get("ptx_mma") else "no") if r["has_dot"] else "-"
        table.append(head + [str(r.get("regs", "?")), str(r.get("spills", "?")), f"{r['smem'] / 1024:.1f}", tc,
                             str(r.get("ld_v4", 0)),
                             f"{100 * r['occupancy']:.0f}" if "occupancy" in r else "?"])
    return COLUMNS, table


def problems(report: dict[str, Any]) -> list[str]:
    """What the CI test fails on: errors, spills, and fp16/bf16 dots not on tensor cores."""
    found = []
    for r in report["rows"]:
        where = f"{r['kernel']} sm_{r['arch']} {r['dtype']} [{r['cfg']}]"
        if r.get("error"):
            found.append(f"{where}: does not compile: {r['error']}")
        elif r.get("spills"):
            found.append(f"{where}: spills ({r.get('spill_stores')} B stored, {r.get('spill_loads')} B loaded, "
                         f"{r.get('local')} B local, {r.get('regs')} registers)")
        elif r["has_dot"] and not r["tensor_cores"]:
            found.append(f"{where}: tl.dot does not lower to tensor cores (no mma/wgmma)")
    return found


def _main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Compile every Triton kernel config; JSON on stdout.")
    parser.add_argument("--arch", type=int, action="append")
    parser.add_argument("--dtype", action="append")
    parser.add_argument("--kernel", action="append")
    parser.add_argument("--target", action="append", help="arch:dtype, e.g. 90:bf16 (replaces --arch/--dtype)")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--no-sass", action="store_true", help="skip the SASS disassembly (faster)")
    parser.add_argument("--table", action="store_true", help="print the short table instead of JSON")
    parser.add_argument("--progress", action="store_true", help="progress lines on stderr (for a parent process)")
    ns = parser.parse_args(argv)
    targets = [(int(t.split(":")[0]), t.split(":")[1]) for t in ns.target] if ns.target else None
    def progress(done: int, total: int, name: str) -> None:
        print(f"{PROGRESS_PREFIX}{done}\t{total}\t{name}", file=sys.stderr, flush=True)

    report = compile_report(ns.arch or ARCHS, ns.dtype or DTYPES, ns.kernel or KERNELS, ns.jobs, not ns.no_sass,
                            targets, progress if ns.progress else None)
    if ns.table:
        columns, rows = format_rows(report)
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        for line in [columns, *rows]:
            print("  ".join(text.ljust(w) for text, w in zip(line, widths)))
    else:
        json.dump(report, sys.stdout)


__all__ = ["compile_report", "format_rows", "COLUMN_NOTES", "problems", "occupancy", "compiler_unavailable",
           "ARCHS", "DTYPES", "KERNELS"]


if __name__ == "__main__":
    _main()
