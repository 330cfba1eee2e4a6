"""The end-to-end inference fast path: bf16 autocast, the fused kernels, and one CUDA graph per shape.

Why graphs: at the paper's sizes every layer of INP-Former is launch-bound on an H100 (each row of
``bench/results/h100-2026-11-22`` takes 150-700 µs for about 13 µs of memory traffic), so the
hundreds of small launches of one forward + scoring, not the kernels, decide end-to-end speed.
Capturing the whole ``images -> (maps, scores)`` computation once per input shape and replaying it
turns those launches into one.

Usage (what ``evaluate``/``predict``/``serve`` call)::

    score = scoring_function(model, cfg, InferenceConfig(fast=True), device="cuda")
    maps, scores = score(images)          # (B, S, S) float32, (B,) -- as score_batch's first two
    score.mode, score.fallback_reason     # "cuda-graph" | "eager", and why not a graph (None if it is)

Manual ``torch.cuda.CUDAGraph`` capture rather than ``torch.compile(mode="reduce-overhead")``: the
fused kernels are user Triton kernels behind an autotuner and a custom autograd Function, which
Dynamo must either trace through or break on (and a graph break splits the CUDA graph); a manual
capture takes any kernel that does not synchronise with the host, and needs no compile time.
Anything that cannot be captured (a host sync, a CPU tensor made during the forward, an old driver)
makes the capture fail: the scorer then runs eager, says why once (``warnings.warn`` and
``on_fallback``) and keeps the reason in ``fallback_reason``.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import TYPE_CHECKING, Callable, Iterator, Union

import torch

from inp_former.categories import image_embeddings
from inp_former.config import MapMode, Precision, RunConfig, choice
from inp_former.inference import (InferenceConfig, Runtime, choose_precision, choose_runtime, resolve_precision,
                                  score_batch)
from inp_former.model import INPFormer
from kernels.dispatch import kernel_mode

if TYPE_CHECKING:
    from inp_former.openvino_runtime import OpenVinoScorer

NO_CUDA = "no CUDA device"
DISABLED = "fast path switched off (--no-fast)"

__all__ = ["FastScorer", "Scorer", "scoring_function"]


Scored = tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # maps (B, S, S), scores (B,), embeddings (B, C)


class _Graph:
    """One captured graph: static input, static outputs."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", images: torch.Tensor, outputs: Scored) -> None:
        self.graph, self.images, self.outputs = graph, images, outputs


class FastScorer:
    """``images -> (maps, scores)`` through a CUDA graph per input shape, or eager.

    - ``mode``: ``"cuda-graph"`` while graphs are used, ``"eager"`` otherwise;
      ``fallback_reason`` says why not a graph (None while graphs are used).
    - A batch smaller than a captured one of the same image size (the ragged last batch) is padded
      into that graph instead of capturing another (``pad_batches``); images are independent
      through the whole model, so the real rows are unchanged (to cuBLAS's algorithm choice).
    - At most ``max_graphs`` shapes are captured (each keeps its activations' memory); other
      shapes run eager, without changing ``mode``.
    - ``verify``: the first replay of each new graph is compared with the eager result of the same
      input (computed during warm-up anyway); a mismatch means the capture missed something, and
      the scorer falls back to eager.
    - ``kernels``: a :func:`kernels.dispatch.kernel_mode` forced around every run (None: the
      dispatcher's own choice, i.e. ``INPCTL_KERNELS`` or ``auto``).

    Thread-safe: replays share static buffers, so calls are serialised by a lock.
    """

    runtime = "torch"   # what runs the model (inference.choose_runtime); OpenVinoScorer's is "openvino"

    def __init__(self, model: INPFormer, cfg: RunConfig, map_mode: str = "decoder", precision: str = "bf16",
                 device: torch.device | str | None = None, *, use_graphs: bool = True,
                 kernels: str | None = None, max_graphs: int = 8, pad_batches: bool = True,
                 warmup: int = 3, verify: bool = True, precision_reason: str | None = None,
                 runtime_reason: str | None = None, on_fallback: Callable[[str], None] | None = None) -> None:
        map_mode = str(choice(MapMode, map_mode, "map_mode"))
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        precision = str(resolve_precision(choice(Precision, precision, "precision"), self.device))
        self.model = model.eval().to(self.device)
        self.cfg, self.map_mode, self.precision, self.kernels = cfg, map_mode, precision, kernels
        self.precision_reason = precision_reason   # why this precision (inference.choose_precision)
        self.runtime_reason = runtime_reason       # why torch runs it (inference.choose_runtime)
        self.max_graphs, self.pad_batches, self.warmup, self.verify = max_graphs, pad_batches, max(1, warmup), verify
        self.on_fallback = on_fallback
        self.graphs: dict[tuple[int, ...], _Graph] = {}
        self._lock = threading.Lock()
        self._pool = None  # one memory pool shared by this scorer's graphs (graphs never run concurrently)
        self.fallback_reason: str | None = None
        if not use_graphs:
            self.fallback_reason = DISABLED
        elif self.device.type != "cuda" or not torch.cuda.is_available():
            self.fallback_reason = NO_CUDA
        self.mode = "eager" if self.fallback_reason else "cuda-graph"
        self.channels_last = cpu_channels_last(model, precision, self.device)

    # -- public ---------------------------------------------------------------------------------

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (B, map_size, map_size) float32 and scores (B,) of preprocessed images (B, 3, H, W)."""
        maps, scores, _ = self.score(images)
        return maps, scores

    def score(self, images: torch.Tensor) -> Scored:
        """Maps and scores as :meth:`__call__`, and each image's embedding (B, C) for the category
        rule (:func:`inp_former.categories.image_embeddings`), from the same forward pass."""
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        with self._lock:
            if self.mode == "cuda-graph":
                result = self._graphed(images)
                if result is not None:
                    return result
            return self._eager(images.to(self.device, non_blocking=True))

    def describe(self) -> str:
        """One line for logs and metrics meta: the runtime and why, which path runs and, if eager, why."""
        runtime = f"torch ({self.runtime_reason})" if self.runtime_reason else "torch"
        why = f" ({self.precision_reason})" if self.precision_reason else ""
        text = f"{runtime}, {self.mode}, {self.precision}{why}, map {self.map_mode}"
        return text + (f" (eager because: {self.fallback_reason})" if self.fallback_reason else
                       f", {len(self.graphs)} graph(s) captured")

    # -- internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _kernels(self) -> Iterator[None]:
        if self.kernels is None:
            yield
        else:
            with kernel_mode(self.kernels):
                yield

    def _run(self, images: torch.Tensor) -> Scored:
        with self._kernels():
            # no autocast weight cache: inside a capture a cached cast would outlive it in the graph's pool
            maps, scores, out = score_batch(self.model, images, self.cfg, self.precision, self.map_mode,
                                            autocast_cache=False)
            return maps, scores, image_embeddings(out.encoder_groups)

    def _eager(self, images: torch.Tensor) -> Scored:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._run(images)

    def _fall_back(self, reason: str) -> None:
        self.mode, self.fallback_reason = "eager", reason
        self.graphs.clear()  # frees the captured graphs' memory
        self._pool = None
        message = f"inference fast path: CUDA graph disabled, running eager ({reason})"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        if self.on_fallback is not None:
            self.on_fallback(message)

    def _graphed(self, images: torch.Tensor) -> Scored | None:
        """The graph's result, or None when this call should run eager."""
        batch, rest = images.shape[0], tuple(images.shape[1:])
        key = (batch, *rest)
        entry = self.graphs.get(key)
        if entry is None and self.pad_batches:
            larger = [k for k in self.graphs if k[1:] == rest and k[0] > batch]
            if larger:
                entry = self.graphs[min(larger)]
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return None
            entry = self._capture(images.to(self.device))
            if entry is None:
                return None
            self.graphs[key] = entry
        # Copy into the static input (host -> device included), zero any padding rows, replay.
        entry.images[:batch].copy_(images, non_blocking=True)
        if entry.images.shape[0] > batch:
            entry.images[batch:].zero_()
        entry.graph.replay()
        return tuple(output[:batch].clone() for output in entry.outputs)

    def _capture(self, images: torch.Tensor) -> _Graph | None:
        """Warm up on a side stream (Triton compiles and autotunes, caches fill), capture, verify."""
        static_images = images.clone()
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    eager_maps = self._run(static_images)[0]
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # thread_local: other threads (a server's) may use CUDA while this one captures
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                outputs = self._run(static_images)
            graph.replay()
            torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 - any failure means "not capturable here": say why
            self._fall_back(f"capture failed for shape {tuple(images.shape)}: "
                            f"{exc.__class__.__name__}: {_first_line(exc)}")
            return None
        maps = outputs[0]
        if self.verify and not _close(maps, eager_maps, self.precision):
            self._fall_back(f"graph replay differs from eager for shape {tuple(images.shape)} "
                            f"(max |diff| {float((maps - eager_maps).abs().max()):.3g})")
            return None
        return _Graph(graph, static_images, outputs)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _close(a: torch.Tensor, b: torch.Tensor, precision: str) -> bool:
    """Replay vs eager on the same input: the same kernels, so equal up to nondeterministic
    reductions (atomics, split-K); 1e-3 of the map range in bf16, 1e-5 in fp32 leaves room for
    those and none for a missed computation (stale or uninitialised buffers differ by O(1))."""
    if a.shape != b.shape or not bool(torch.isfinite(a).all() == torch.isfinite(b).all()):
        return False
    scale = float(b.abs().max().clamp_min(1e-6))
    tol = (1e-3 if precision == "bf16" else 1e-5) * scale
    return bool(((a - b).abs().nan_to_num(0.0) <= tol).all())


def cpu_channels_last(model: INPFormer, precision: str, device: torch.device) -> bool:
    """Whether the eager path feeds the images channels-last: on a CPU, in bf16, with a CNN encoder.
    There oneDNN's convolutions ran about 2x faster with the same maps (bit-identical on an AMX
    CPU; bench/results/cpu-paths-cpu-2026-12-06.md); in fp32 the maps change in the 6th digit, so
    the fp32 reference path keeps its layout, and a ViT gains nothing (one convolution)."""
    from inp_former.encoders import TimmCNNEncoder

    return device.type == "cpu" and str(precision) == "bf16" and isinstance(model.encoder, TimmCNNEncoder)


Scorer = Union[FastScorer, "OpenVinoScorer"]   # both: __call__, score, describe, precision, runtime and why


def scoring_function(model: INPFormer, cfg: RunConfig, inference: InferenceConfig = InferenceConfig(),
                     device: torch.device | str | None = None,
                     on_fallback: Callable[[str], None] | None = None, latency: bool = False) -> Scorer:
    """The scorer ``inference`` describes; call it as ``maps, scores = f(images)``.

    The runtime is :func:`inp_former.inference.choose_runtime`'s (one rule): OpenVINO
    (:class:`inp_former.openvino_runtime.OpenVinoScorer`) where ``inference.runtime`` asks for it, or
    where ``auto`` picks it (a CPU with native bf16, OpenVINO installed, an exportable model);
    otherwise torch, as below. Should OpenVINO fail to export or compile the model under ``auto``,
    torch scores it, saying why once (``warnings.warn`` and ``on_fallback``) and in
    ``scorer.runtime_reason``. ``latency``: images often come one at a time (``serve``), so
    OpenVINO runs each call on all threads instead of splitting batches over its streams.

    Torch: ``inference.fast``: CUDA graphs on CUDA (eager elsewhere, ``fallback_reason`` "no CUDA
    device"); otherwise eager. The precision is ``inference.precision_on(device)`` (one rule:
    :func:`inp_former.inference.choose_precision`). Both use the dispatcher's kernels (a fused
    kernel where a recorded measurement shows it faster on this GPU and dtype, kernels/evidence.py;
    the PyTorch reference elsewhere) unless ``inference.kernels`` forces a mode.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision, reason = choose_precision(inference.precision, device)
    runtime, runtime_reason = choose_runtime(inference.runtime, inference.precision, device, cfg.model,
                                             inference.map_mode, inference.kernels)
    if runtime == Runtime.OPENVINO:
        from inp_former.openvino_runtime import OpenVinoScorer

        try:
            return OpenVinoScorer(model, cfg, inference.map_mode, precision, precision_reason=reason,
                                  runtime_reason=runtime_reason, latency=latency)
        except Exception as exc:  # noqa: BLE001 - under auto any failure means "torch scores it": say why
            if inference.runtime == Runtime.OPENVINO:
                raise
            runtime_reason = f"auto: OpenVINO failed ({exc.__class__.__name__}: {_first_line(exc)})"
            message = f"runtime auto: scoring with torch, {runtime_reason}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if on_fallback is not None:
                on_fallback(message)
    return FastScorer(model, cfg, inference.map_mode, precision, device, use_graphs=inference.fast,
                      kernels=inference.kernels, precision_reason=reason, runtime_reason=runtime_reason,
                      on_fallback=on_fallback)
