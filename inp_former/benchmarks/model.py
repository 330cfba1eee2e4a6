"""End-to-end speed: inference images/s and training step time, reference vs the faster paths.

Every row is timed in one run on the same images and weights, against the ``ref fp32`` row: fp32
eager with the PyTorch reference ops (what the authors' code computes, the same way). The encoder
has random weights here: speed does not depend on the weights' values.

On CUDA:
  fused:     the fused kernels in fp32 and bf16 autocast, optionally torch.compile.
  fast path: what ``--fast`` runs in eval/predict/serve (inp_former/fast_path.py): bf16, the
             dispatcher's kernels and the whole forward + scoring as a CUDA graph per batch shape.
On a CPU:
  auto:      the default path, what ``inpctl predict`` scores with (precision ``auto``: bf16 where
             the CPU has native bf16 units; the row's note names the precision and why).
  bf16:      bf16 autocast, asked for.
  compile:   ``torch.compile`` of the default path (``compile_model``); its note says how long the
             first call, which compiles, took.
  onnx fp32, onnx int8: the ``inpctl export`` graph and its int8 quantisation in ONNX Runtime
             (:mod:`inp_former.benchmarks.onnx_paths`; skipped, saying why, without onnxruntime).
  openvino, openvino int8: the same two files compiled by OpenVINO's CPU plugin at its default
             precision (bf16 on a CPU with native bf16; the note names it); skipped, saying why,
             without the optional ``openvino`` extra.
  The result's ``cpu`` holds the CPU's detected units, flags, cores, threads and versions.

What is timed when the caller does not say depends on the device
(:func:`inp_former.benchmarks.sizes.default_sizes`): the paper's ViT-B at 392 px on a GPU, a ViT-S
at 224 px on a CPU, where the GPU sizes take many minutes.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Sequence

import torch

from inp_former.benchmarks.timing import PeakRss, Timing, measure
from inp_former.config import ModelConfig, RunConfig
from inp_former.fast_path import scoring_function
from inp_former.inference import InferenceConfig, autocast, score_batch
from inp_former.losses import coherence_loss, soft_mining_loss
from inp_former.model import INPFormer
from inp_former.optim import StableAdamW
from kernels.dispatch import kernel_mode

REFERENCE = "ref fp32"
GPU_PATHS = {  # name: (kernel mode, precision)
    REFERENCE: ("reference", "fp32"),
    "fused fp32": ("auto", "fp32"),
    "fused bf16": ("auto", "bf16"),
}
CPU_TRAIN_PATHS = {REFERENCE: ("reference", "fp32"), "bf16": ("auto", "bf16")}   # no fused kernels on a CPU
ONNX_ROWS = ("onnx fp32", "onnx int8")
OPENVINO_ROWS = ("openvino", "openvino int8")   # the same two files, compiled by OpenVINO
COLUMNS = {
    "img/s": "images per second (median of the timed repetitions)",
    "x ref": "speed over the ref fp32 row of the same pass and batch",
    "max err": "largest |map - ref fp32 map| / largest |ref fp32 map|, same images",
    "RSS MB": "the process's peak resident memory while the row ran (model and runtimes included)",
    "peak MB": "peak GPU memory allocated during one call, above what was live before",
}
Scorer = Callable[[torch.Tensor], Any]   # images -> (maps, scores, ...)
Progress = Callable[[int, int, str], None]


class _Ticks:
    """``progress(done, total, name)`` with the count kept here: rows and the slow steps between them."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress or (lambda done, total, name: None), total, 0

    def __call__(self, name: str, counts: bool = True) -> None:
        """Say ``name`` is about to run; ``counts=False`` for a step outside the total (building the model)."""
        self.progress(self.done, self.total, name)
        self.done += counts

    def end(self) -> None:
        self.progress(self.total, self.total, "")


def _train_step(model: INPFormer, optimizer: torch.optim.Optimizer, images: torch.Tensor, precision: str) -> None:
    with autocast(images.device, precision):
        out = model(images)
        loss = soft_mining_loss(out.encoder_groups, out.decoder_groups) + 0.2 * coherence_loss(out.prototype_distance)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 0.1)
    optimizer.step()


def _scored(mode: str, fn: Callable[[torch.Tensor], Any]) -> Scorer:
    """``fn`` run under a kernel mode."""
    def score(images: torch.Tensor) -> Any:
        with kernel_mode(mode):
            return fn(images)
    return score


def _gpu_scorers(model: INPFormer, cfg: RunConfig, compile_model: bool) -> dict[str, tuple[Scorer, str | None]]:
    paths = dict(GPU_PATHS)
    compiled = torch.compile(model) if compile_model else None
    scorers: dict[str, tuple[Scorer, str | None]] = {
        name: (_scored(mode, lambda images, p=precision: score_batch(model, images, cfg, p)), None)
        for name, (mode, precision) in paths.items()}
    if compiled is not None:
        scorers["compiled bf16"] = (_scored("auto", lambda images: score_batch(compiled, images, cfg, "bf16")), None)
    return scorers


def _cpu_scorers(model: INPFormer, cfg: RunConfig, device: torch.device,
                 compile_model: bool) -> dict[str, tuple[Scorer, str | None]]:
    default = scoring_function(model, cfg, InferenceConfig(), device)   # what `inpctl predict` builds
    scorers: dict[str, tuple[Scorer, str | None]] = {
        REFERENCE: (_scored("reference", lambda images: score_batch(model, images, cfg, "fp32")), None),
        # the row says which runtime the default picked: OpenVINO where it is installed on a native-bf16 CPU
        "auto": (default, f"{default.runtime} ({default.runtime_reason}), {default.precision} "
                          f"({default.precision_reason})"),
        "bf16": (lambda images: score_batch(model, images, cfg, "bf16"), None),
    }
    if compile_model:
        compiled = torch.compile(model)

        def compiled_scores(images: torch.Tensor) -> Any:
            with warnings.catch_warnings():   # the kernels' cached "is Triton here?" is cached on purpose
                warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
                return score_batch(compiled, images, cfg, default.precision)
        scorers["compile"] = (compiled_scores, None)
    return scorers


def run_model_bench(encoder: str, batches: Sequence[int], train_batch: int, crop: int, device: torch.device,
                    repeats: int = 10, compile_model: bool = False, max_seconds: float = 20.0,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Inference (per batch size) and training-step rows, each path against the ``ref fp32`` row.

    ``progress(steps done, steps in all, the step about to run)`` is called before each row, before
    the ONNX export, its quantisation and the OpenVINO compilation (CPU), and once at the end;
    :func:`inp_former.benchmarks.sizes.resolve_sizes` gives the sizes to time when the caller has none."""
    from inp_former.benchmarks.onnx_paths import (OnnxModels, OpenVinoModels, onnx_missing, openvino_missing,
                                                  openvino_version)

    on_cpu = device.type != "cuda"
    onnx_skip = onnx_missing() if on_cpu else None
    openvino_skip = (openvino_missing() or onnx_skip) if on_cpu else None   # it compiles the ONNX rows' files
    runtime_rows = ONNX_ROWS + OPENVINO_ROWS if on_cpu else ()
    inference_rows = (3 + compile_model + len(runtime_rows)) if on_cpu else (len(GPU_PATHS) + compile_model + 1)
    train_paths = CPU_TRAIN_PATHS if on_cpu else GPU_PATHS
    tick = _Ticks(progress, len(batches) * inference_rows + (2 if on_cpu and not onnx_skip else 0)
                  + (1 if on_cpu and not openvino_skip else 0) + len(train_paths))
    tick(f"building the {encoder} model", counts=False)   # seconds on a CPU: say so before
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder=encoder, encoder_weights="random", resize=crop, crop=crop))
    model = INPFormer(cfg.model).to(device).eval()
    scorers = _cpu_scorers(model, cfg, device, compile_model) if on_cpu else _gpu_scorers(model, cfg, compile_model)

    generator = torch.Generator(device="cpu").manual_seed(0)
    onnx = openvino = None
    if on_cpu and not onnx_skip:
        calibration = torch.randn(4, 3, crop, crop, generator=generator)
        onnx = OnnxModels(model, cfg, calibration, tick)
    rows: list[dict[str, Any]] = []
    try:
        if onnx is not None and not openvino_skip:
            openvino = OpenVinoModels(onnx, tick)
        runtimes = {**{name: (onnx, onnx_skip) for name in ONNX_ROWS},
                    **{name: (openvino, openvino_skip) for name in OPENVINO_ROWS}}
        for batch in batches:
            images = torch.randn(batch, 3, crop, crop, generator=generator).to(device)
            reference_maps = None
            for name, (scorer, note) in scorers.items():
                tick(f"infer {name}, batch {batch}")
                row, maps = _timed_row(name, batch, scorer, images, device, repeats, max_seconds, note, reference_maps)
                reference_maps = maps.float() if reference_maps is None else reference_maps
                rows.append(row)
            for name in runtime_rows:
                tick(f"infer {name}, batch {batch}")
                runtime, skip = runtimes[name]
                if runtime is None:
                    rows.append({"pass": "infer", "path": name, "batch": batch, "ms": None, "img/s": None,
                                 "max err": None, "note": skip})
                    continue
                note = runtime.note(name) if runtime is openvino else None   # the precision OpenVINO chose
                rows.append(_timed_row(name, batch, runtime.scorer(name), images, device, repeats, max_seconds, note,
                                       reference_maps)[0])
            if not on_cpu:   # the end-to-end fast path of eval/predict/serve: CUDA graphs + bf16
                tick(f"infer fast path, batch {batch}")
                fast = scoring_function(model, cfg, InferenceConfig(fast=True), device)
                rows.append(_timed_row(f"fast {fast.mode} {fast.precision}", batch, fast, images, device, repeats,
                                       max_seconds, None, reference_maps)[0])
    finally:
        if openvino is not None:
            openvino.close()
        if onnx is not None:
            onnx.close()

    train_images = torch.randn(train_batch, 3, crop, crop, generator=generator).to(device)
    model.train()
    for name, (mode, precision) in train_paths.items():
        tick(f"train {name}, batch {train_batch}")
        optimizer = StableAdamW(model.trainable_parameters(), lr=1e-4, eps=1e-10, weight_decay=1e-4, amsgrad=True)
        with kernel_mode(mode), PeakRss() as rss:
            timing = measure(lambda: _train_step(model, optimizer, train_images, precision), device,
                             warmup=2, repeats=repeats, max_seconds=max_seconds)
        rows.append(_row("train", name, train_batch, timing, None, rss.mb if on_cpu else None))
    _add_speedups(rows)
    tick.end()
    result = {"rows": rows, "device": torch.cuda.get_device_name(device) if not on_cpu else "cpu",
              "torch": torch.__version__, "encoder": f"{encoder} (random weights)", "crop": crop,
              "columns": {k: v for k, v in COLUMNS.items() if k != ("peak MB" if on_cpu else "RSS MB")}}
    if on_cpu:
        from inp_former.benchmarks.cpu import cpu_info

        result["cpu"] = {**cpu_info(), "openvino": openvino_version()}
    return result


def _timed_row(name: str, batch: int, scorer: Scorer, images: torch.Tensor, device: torch.device, repeats: int,
               max_seconds: float, note: str | None,
               reference_maps: torch.Tensor | None) -> tuple[dict[str, Any], torch.Tensor]:
    """One inference row: the first call (its time noted when it compiles), then the timed calls."""
    with PeakRss() as rss:
        started = time.perf_counter()
        maps = scorer(images)[0]
        first = time.perf_counter() - started
        timing = measure(lambda: scorer(images), device, repeats=repeats, max_seconds=max_seconds)
    if name == "compile":
        note = f"compile: the first call, which compiles, took {first:.1f} s"
    error = 0.0 if reference_maps is None else _relative_error(maps, reference_maps)
    row = _row("infer", name, batch, timing, error, rss.mb if device.type != "cuda" else None)
    if note:
        row["note"] = note
    return row, maps


def _relative_error(maps: torch.Tensor, reference: torch.Tensor) -> float:
    return ((maps.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()


def _row(pass_: str, path: str, batch: int, timing: Timing, error: float | None,
         rss_mb: float | None = None) -> dict[str, Any]:
    """One table row; short keys so that the printed table fits 80 columns."""
    row = {"pass": pass_, "path": path, "batch": batch, "ms": timing.median_ms,
           "img/s": batch / timing.median_ms * 1e3, "max err": error}
    if timing.peak_mem_mb is not None:   # CUDA
        row["peak MB"] = timing.peak_mem_mb
    if rss_mb is not None:               # CPU
        row["RSS MB"] = rss_mb
    return row


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-up of each row over the reference row of the same pass and batch (None for a skipped row)."""
    for row in rows:
        base = next(r for r in rows if r["pass"] == row["pass"] and r["batch"] == row["batch"]
                    and r["path"] == REFERENCE)
        row["x ref"] = None if row["ms"] is None else base["ms"] / row["ms"]


__all__ = ["run_model_bench"]
