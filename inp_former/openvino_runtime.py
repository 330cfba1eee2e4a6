"""Scoring through OpenVINO: the model's ONNX export compiled by OpenVINO's CPU plugin.

Why: on a CPU with AMX-BF16, OpenVINO running the fp32 export (it computes in bf16 there) scored
ViT-S/14 at 392 px, batch 8, at 4.51x the fp32 eager path, map error 1.0% of the map maximum,
against 1.8-3.3x for torch's bf16 autocast (bench/results/bench-model-cpu-openvino-2026-12-06.md).
When it runs is decided in one place, :func:`inp_former.inference.choose_runtime`; the scorer is
built where every other one is, :func:`inp_former.fast_path.scoring_function`, so ``eval``,
``predict``, ``serve`` and the Python API all get it from there.

The graph is the network of :func:`inp_former.export.export_onnx`'s (``network_only``: ``image`` ->
encoder and decoder groups and the prototype distance) at the model's input size with a dynamic
batch; the map head (cosine, upsampling and blur, top-k, embeddings) runs after it in torch, in
fp32, with the export's own code (:meth:`inp_former.export.ExportableINPFormer.head`), as torch's
bf16 path computes it: OpenVINO running the whole graph in bf16 put maps 1.07% of their maximum
off the fp32 reference's at 392 px, above the 1% issue 21 allows. Exporting a ViT takes the TorchScript tracer many
seconds, so the file is cached under ``$INPCTL_CACHE/openvino`` (default ``~/.cache/inpctl/openvino``),
keyed by the model's content: every weight and buffer, its :class:`~inp_former.config.ModelConfig`,
the map mode, the torch, onnx and inpctl versions and the source of this library (any code change
exports again). An entry is written into a staging folder and renamed into place (a reader never
sees half a model; two processes exporting at once both succeed); at most :data:`CACHE_ENTRIES`
entries are kept. Where the cache cannot be written the export goes to a temporary folder.
"""
from __future__ import annotations

import functools

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inp_former.config import MapMode, Precision, RunConfig, choice, plain
from inp_former.errors import ConfigError
from inp_former.model import INPFormer

CACHE_ENTRIES = 4          # models kept (each as large as its weights in fp32)
KEEP_RECENT_S = 600        # an entry used this recently is never evicted (another process may be compiling it)
GRAPH_FORMAT = 2           # bump when what is cached changes meaning (2: the network only)
# torch's precision -> OpenVINO's INFERENCE_PRECISION_HINT, and back
OPENVINO_HINT = {Precision.BF16: "bf16", Precision.FP32: "f32"}

__all__ = ["CACHE_ENTRIES", "CompiledNetwork", "OpenVinoScorer", "cache_root", "model_key", "openvino_core"]


def cache_root() -> Path:
    """``$INPCTL_CACHE/openvino``, else ``~/.cache/inpctl/openvino`` (the demo's cache rule)."""
    return Path(os.environ.get("INPCTL_CACHE") or Path.home() / ".cache" / "inpctl") / "openvino"


def _source_fingerprint() -> str:
    """A hash of this library's Python source (inp_former and kernels): the exported graph is what
    that code computes, so a cached graph is only reused by the code that wrote it."""
    digest = hashlib.blake2b(digest_size=16)
    for package in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "kernels"):
        for path in sorted(package.rglob("*.py")):
            digest.update(str(path.relative_to(package.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def model_key(model: INPFormer, cfg: RunConfig, map_mode: str) -> str:
    """The cache key of ``model``'s graph: its content (weights, buffers, config), the map mode, the
    versions that write the graph and the library's source; equal keys, equal graphs."""
    import onnx

    import inp_former

    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps({"format": GRAPH_FORMAT, "map_mode": str(map_mode), "inpctl": inp_former.__version__,
                              "torch": torch.__version__, "onnx": onnx.__version__, "source": _source_fingerprint(),
                              "model": plain(dataclasses.asdict(cfg.model))}, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {data.dtype} {tuple(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


def _cached_graph(model: INPFormer, cfg: RunConfig, map_mode: str, root: Path) -> tuple[Path, str]:
    """(the ONNX file of ``model`` in the cache ``root``, ``cached`` or ``exported``); exports it
    into the cache first when absent."""
    from inp_former.export import export_onnx

    key = model_key(model, cfg, map_mode)
    entry = root / key
    if (entry / "model.onnx").is_file():
        os.utime(entry)   # recently used: kept by the eviction
        return entry / "model.onnx", "cached"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{key}-", dir=root))
    try:
        export_onnx(model, cfg, staging / "model.onnx", map_mode, network_only=True)
        try:
            staging.rename(entry)   # atomic; fails when another process put the same entry there first
        except OSError:
            if not (entry / "model.onnx").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _evict(root, keep=entry)
    return entry / "model.onnx", "exported"


def _evict(root: Path, keep: Path) -> None:
    """Remove all but the :data:`CACHE_ENTRIES` most recently used entries (and staging folders
    left by killed processes), sparing anything used in the last :data:`KEEP_RECENT_S` seconds."""
    now = time.time()

    def age(path: Path) -> float:
        try:
            return now - path.stat().st_mtime
        except OSError:
            return 0.0

    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=age)
    stale = entries[CACHE_ENTRIES:] + [p for p in root.glob(".staging-*") if age(p) > 24 * 3600]
    for path in stale:
        if path != keep and age(path) > KEEP_RECENT_S:
            shutil.rmtree(path, ignore_errors=True)



@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """One OpenVINO Core for the process. With a Core per scorer (destroyed with it), a pytest
    process that had compiled two models crashed (segmentation fault) at the next training run's
    Ctrl-C handling (OpenVINO 2026.4); with one Core it does not."""
    import openvino as ov

    return ov.Core()


class CompiledNetwork:
    """A model (an ONNX file) compiled by OpenVINO for the CPU, run batch by batch:
    ``outputs = net(array, names)``.

    ``latency`` False (batch scoring: ``eval``, ``predict``): compiled with OpenVINO's THROUGHPUT
    hint, which splits the threads into streams (2 of 1 thread on 2 cores); each batch is cut into
    one piece per stream, run at once, one infer request each. On the 2-core AMX VM this scored
    ViT-S/14 at 392 px, batch 8, about 1.2x faster than one request on all threads, since the
    threads of a stream never wait for each other (docs/performance.md). ``latency`` True (``serve``,
    where one image is often scored alone): the LATENCY hint, one stream on all threads (a lone image
    took 134 ms there against 167 ms on one stream of the THROUGHPUT model). ``settings``: more
    properties (e.g. ``INFERENCE_PRECISION_HINT``); the threads are the count the process chose for
    torch (:func:`inp_former.runtime.configure_cpu_threads`). Not thread-safe: callers serialise.
    """

    def __init__(self, model: str | Path | Any, settings: dict[str, Any] | None = None, latency: bool = False) -> None:
        settings = {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                    "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT", **(settings or {})}
        model = str(model) if isinstance(model, (str, Path)) else model   # a file, or an openvino.Model
        self.compiled = openvino_core().compile_model(model, "CPU", settings)
        self.streams = max(1, int(self.compiled.get_property("NUM_STREAMS")))
        self.requests = [self.compiled.create_infer_request() for _ in range(self.streams)]

    def property(self, name: str) -> Any:
        return self.compiled.get_property(name)

    def __call__(self, array: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        """The named outputs of a float32 batch (at least one image). One piece is read in place (no
        copy): use the arrays before the next call, which reuses the requests' buffers."""
        if self.compiled is None:
            raise RuntimeError("CompiledNetwork: used after close()")
        if len(array) == 0:
            raise ValueError("CompiledNetwork: an empty batch (give at least one image)")
        pieces = np.array_split(np.ascontiguousarray(array), min(self.streams, len(array)))
        used = self.requests[:len(pieces)]
        started = []
        try:
            for request, piece in zip(used, pieces):
                request.start_async({"image": piece})   # copies the piece (share_inputs is off)
                started.append(request)
        finally:   # every started request is waited for, even on an error or Ctrl-C: none is left busy
            for request in started:
                request.wait()
        parts = [[request.get_tensor(self.compiled.output(name)).data for request in used] for name in outputs]
        return [each[0] if len(each) == 1 else np.concatenate(each) for each in parts]

    def close(self) -> None:
        self.requests, self.compiled = [], None


class OpenVinoScorer:
    """``images -> (maps, scores)`` (and embeddings, :meth:`score`) through OpenVINO on the CPU:
    the same interface as :class:`inp_former.fast_path.FastScorer`.

    ``precision`` (bf16 or fp32, already resolved by :func:`inp_former.inference.choose_precision`)
    becomes OpenVINO's ``INFERENCE_PRECISION_HINT``; the compiled model's own value is read back
    (``openvino_precision``) and a model that would not compute in the precision asked for is
    refused. Calls are serialised by a lock (serve calls from its worker thread). ``latency``: see
    :class:`CompiledNetwork` (True for serve, where images often come one at a time).
    ``cache`` False exports into a temporary folder instead of the cache (:func:`cache_root`).
    """

    runtime = "openvino"
    mode = "openvino"          # what metrics.json records as ``fast_path``
    fallback_reason = None     # never falls back once built (scoring_function falls back instead)
    kernels = None

    def __init__(self, model: INPFormer, cfg: RunConfig, map_mode: str = "decoder", precision: str = "bf16", *,
                 precision_reason: str | None = None, runtime_reason: str | None = None, cache: bool = True,
                 latency: bool = False) -> None:
        from inp_former.export import ExportableINPFormer, network_outputs
        from inp_former.inference import openvino_release

        self.map_mode = str(choice(MapMode, map_mode, "map_mode"))
        self.precision = str(choice(Precision, precision, "precision"))
        if self.precision == Precision.AUTO:
            raise ValueError("OpenVinoScorer: precision must be resolved (bf16 or fp32), not auto")
        self.cfg, self.model, self.device = cfg, model.eval(), torch.device("cpu")
        self.precision_reason, self.runtime_reason = precision_reason, runtime_reason
        self.release = openvino_release()
        self.input_hw = tuple(cfg.model.input_hw)
        self.embed_dim = int(model.encoder.embed_dim)
        with tempfile.TemporaryDirectory(prefix="inpctl-openvino-") as scratch:
            path, self.graph = None, "exported"   # graph: "cached" when the cache held it already
            if cache:
                try:
                    path, self.graph = _cached_graph(self.model, cfg, self.map_mode, cache_root())
                except OSError:   # a read-only or full home: no cache, the same graph
                    path = None
            if path is None:
                from inp_former.export import export_onnx

                path = Path(scratch) / "model.onnx"
                export_onnx(self.model, cfg, path, self.map_mode, network_only=True)
            wanted = OPENVINO_HINT[Precision(self.precision)]
            self.network = CompiledNetwork(Path(path), {"INFERENCE_PRECISION_HINT": wanted}, latency)
        self.openvino_precision = self.network.property("INFERENCE_PRECISION_HINT").get_type_name()
        if self.openvino_precision != wanted:
            raise ConfigError(f"runtime openvino: OpenVINO computes in {self.openvino_precision} on this CPU, not the "
                              f"{self.precision} asked for (use precision fp32, or runtime torch)", arg="runtime")
        self.streams = self.network.streams
        self.outputs = network_outputs(model)
        # the map head (cosine, G A G^T, top-k, embeddings) in torch fp32, as torch's own bf16 path
        # computes it: in OpenVINO's bf16 it put maps ~1% of their maximum off (docs/performance.md)
        self.head = ExportableINPFormer(model, cfg, self.map_mode).eval()
        self._lock = threading.Lock()

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (B, *map_hw) float32 and scores (B,) of preprocessed images (B, 3, H, W)."""
        maps, scores, _ = self.score(images)
        return maps, scores

    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Maps and scores as :meth:`__call__`, and each image's embedding (B, C) for the category
        rule (:func:`inp_former.categories.image_embeddings`), from the same inference."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, *self.input_hw):
            raise ValueError(f"images must be (B, 3, {self.input_hw[0]}, {self.input_hw[1]}) (the exported size), "
                             f"got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            return (torch.zeros(0, *self.cfg.model.map_hw), torch.zeros(0), torch.zeros(0, self.embed_dim))
        array = images.detach().to("cpu", torch.float32).numpy()
        with self._lock, torch.no_grad():
            # the head's outputs are new tensors, made before the next call reuses the network's buffers
            return self.head.head(*(torch.from_numpy(out) for out in self.network(array, self.outputs)))

    def describe(self) -> str:
        """One line for logs and metrics meta: the runtime and why, the precision and why, and the
        precision the compiled model reports."""
        why = f" ({self.runtime_reason})" if self.runtime_reason else ""
        precision_why = f" ({self.precision_reason})" if self.precision_reason else ""
        streams = f", {self.streams} streams" if self.streams > 1 else ""
        return (f"openvino {self.release}{why}, {self.precision}{precision_why}, INFERENCE_PRECISION_HINT "
                f"{self.openvino_precision}{streams}, map {self.map_mode}")

    def close(self) -> None:
        """Free the compiled model (also done when the scorer is garbage-collected)."""
        self.network.close()

