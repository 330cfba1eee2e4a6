"""ONNX export of the whole inference graph: preprocessed images in, anomaly maps and scores out.

Graph: ``image`` (B, 3, H, W) float32, ImageNet-normalised -> ``map`` (B, map_h, map_w) float32,
``score`` (B,) float32 and ``embedding`` (B, C) float32 (what the category rule compares,
:mod:`inp_former.categories`); the batch axis is dynamic, the image size is fixed: the checkpoint's
``input_hw`` (crop x crop, or a keep-aspect model's non-square input) and its ``map_hw``.
Preprocessing (resize to ``resize_hw`` with PIL-style antialiased bilinear, centre crop unless
keep-aspect, ImageNet mean/std) stays outside the graph, as does the decision: both are
written beside the model in ``<file>.json`` (pooled and per-category thresholds, the label rule,
the category rule and its reference embeddings) and into the ONNX file's ``metadata_props``.
Needs the ``onnx`` package (``pip install 'inpctl[export]'``, which also brings onnxruntime for the
check).

What is exported is :class:`ExportableINPFormer`, which equals the reference path:

* the model runs with the kernels dispatcher forced to its PyTorch reference
  (``kernels.dispatch.kernel_mode("reference")``);
* the encoder's position embeddings are resampled (bicubic, Meta's ``scale_factor``) for one fixed
  image size, so they are computed once and enter the graph as a constant;
* the map is formed as ``Gh @ A @ Gw^T`` (``kernels.scoring.scoring_matrices``): A is the
  (grid_h, grid_w) mean over groups of ``1 - cos`` per token and Gh, Gw the fixed (map_h, grid_h)
  and (map_w, grid_w) matrices of the upsample -> resize -> blur chain, exact up to float rounding
  (no ONNX Resize, whose corner conventions vary between runtimes);
* the score is the mean of the top ``k = int(map_h * map_w * top_fraction)`` values (``TopK`` with a
  constant k).
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from inp_former.errors import ConfigError
from inp_former.config import RunConfig
from inp_former.model import INPFormer
from inp_former.thresholds import LABEL_RULE

if TYPE_CHECKING:
    from inp_former.categories import CategoryReferences

EXPORTERS = ("torchscript", "dynamo")
OUTPUTS = ("map", "score", "embedding")
DEFAULT_OPSET = 17


class ExportableINPFormer(nn.Module):
    """The inference graph of an :class:`INPFormer` as one module: ``images -> (maps, scores, embeddings)``."""

    def __init__(self, model: INPFormer, cfg: RunConfig, map_mode: str = "decoder") -> None:
        super().__init__()
        from kernels.scoring import scoring_matrices, top_k_count

        if map_mode not in ("decoder", "prototype"):
            raise ConfigError(f"map_mode {map_mode!r}: expected decoder or prototype", arg="map_mode")
        mc = cfg.model
        self.model = model.eval()
        self.map_mode = map_mode
        self.grid = model.encoder.grid_size(mc.input_hw)
        rows, cols = scoring_matrices(self.grid, mc.input_hw, mc.map_hw, mc.blur_kernel, mc.blur_sigma, "cpu")
        self.register_buffer("matrix", rows.clone(), persistent=False)     # Gh
        self.register_buffer("cols", cols.clone(), persistent=False)       # Gw
        self.k = top_k_count(mc.map_hw[0] * mc.map_hw[1], mc.top_fraction)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(*self.features(images))

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network: encoder groups, decoder groups (G each, (B, N, C)) and the prototype distance (B, N)."""
        out = self.model(images)
        return (*out.encoder_groups, *out.decoder_groups, out.prototype_distance)

    def head(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`features` -> (maps, scores, embeddings), in fp32."""
        # the same cosine and G A G^T as the library's matrix path, so the graph cannot drift from it
        from kernels.scoring import apply_scoring_matrix, cosine_distance

        from inp_former.categories import image_embeddings

        groups = (len(features) - 1) // 2
        encoder_groups, decoder_groups = features[:groups], features[groups:2 * groups]
        if self.map_mode == "decoder":
            a = torch.stack([cosine_distance(e.float(), d.float())
                             for e, d in zip(encoder_groups, decoder_groups)]).mean(0)
        else:
            a = features[-1].float()
        maps = apply_scoring_matrix(a.reshape(-1, *self.grid), self.matrix, self.cols)
        scores = torch.topk(maps.flatten(1), self.k, dim=1).values.mean(1)
        return maps, scores, image_embeddings([e.float() for e in encoder_groups])


class NetworkGraph(nn.Module):
    """Only the network of an :class:`ExportableINPFormer` (its :meth:`~ExportableINPFormer.features`):
    what a runtime that computes in bf16 runs, the map head then staying in fp32 outside it."""

    def __init__(self, whole: ExportableINPFormer) -> None:
        super().__init__()
        self.whole = whole

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.whole.features(images)


def network_outputs(model: INPFormer) -> list[str]:
    """The output names of :class:`NetworkGraph`: ``encoder_0``.., ``decoder_0``.., ``distance``."""
    groups = len(model.encoder.groups)
    return ([f"encoder_{i}" for i in range(groups)] + [f"decoder_{i}" for i in range(groups)] + ["distance"])


@contextlib.contextmanager
def fixed_position_embedding(model: INPFormer, size: int | tuple[int, int]) -> Iterator[None]:
    """Inside the block the encoder returns its position embeddings for images of ``size`` pixels
    ((height, width); an int: a square) as a constant.

    Resampling them at every forward (bicubic with a computed scale factor) does not trace; for one
    image size they do not depend on the input. Restored on exit."""
    encoder = model.encoder
    if not hasattr(encoder, "position_embedding"):
        yield
        return
    grid = encoder.grid_size(size)
    with torch.no_grad():
        constant = encoder.position_embedding(*grid).detach().clone()

    def position_embedding(grid_h: int, grid_w: int) -> torch.Tensor:
        return constant

    encoder.position_embedding = position_embedding  # instance attribute shadows the method
    try:
        yield
    finally:
        del encoder.position_embedding


@dataclass
class ExportInfo:
    path: Path
    sidecar: Path
    exporter: str
    opset: int
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    check: dict[str, float] | None = None


def export_metadata(cfg: RunConfig, map_mode: str, calibration: dict[str, Any] | None,
                    checkpoint: str | None = None, references: "CategoryReferences | None" = None) -> dict[str, Any]:
    """What a deployment needs beside the graph: preprocessing, shapes, and the decision: the label
    rule, the pooled and per-category thresholds, and the category rule with its data (the same
    rule as ``inpctl predict``: given, else a folder on the path, else the nearest reference, else
    pooled; :mod:`inp_former.categories`)."""
    from inp_former.categories import CategoryResolver
    from inp_former.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    import inp_former

    mc = cfg.model
    (height, width), (map_h, map_w) = mc.input_hw, mc.map_hw
    categories = (calibration or {}).get("categories") or {}
    resolver = CategoryResolver(categories, references)
    return {
        "format": "inpctl-onnx",
        "inpctl_version": inp_former.__version__,
        "checkpoint": checkpoint,
        "map_mode": map_mode,
        "input": {"name": "image", "shape": ["batch", 3, height, width], "dtype": "float32",
                  "preprocessing": {"resize": list(mc.resize_hw),
                                    "resize_interpolation": "bilinear (PIL, antialiased)",
                                    "center_crop": [height, width], "keep_aspect": mc.keep_aspect, "scale": "1/255",
                                    "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channels": "RGB"}},
        "outputs": {"map": {"shape": ["batch", map_h, map_w],
                            "covers": "the whole image" if mc.keep_aspect else "the centre crop"},
                    "score": {"shape": ["batch"], "definition": f"mean of the top {mc.top_fraction:.0%} of the map"},
                    "embedding": {"shape": ["batch", "C"], "definition": "what category_rule.image compares"}},
        "image_threshold": (calibration or {}).get("image_threshold"),
        "pixel_threshold": (calibration or {}).get("pixel_threshold"),
        "category_thresholds": {name: {"image_threshold": values.get("image_threshold"),
                                       "pixel_threshold": values.get("pixel_threshold")}
                                for name, values in sorted(categories.items())},
        "score_range": (calibration or {}).get("score_range"),
        "map_range": (calibration or {}).get("map_range"),
        "label_rule": LABEL_RULE,
        "category_rule": {
            "order": ["given", "path", "image", "pooled"],
            "path": "a run of folders on the image's path equals a category name (split at '/'); the deepest wins",
            "image": resolver.references.to_json() if resolver.references is not None else None,
            "pooled": "otherwise image_threshold (all categories pooled)",
            "only": len(categories) == 1},
    }


def export_onnx(model: INPFormer, cfg: RunConfig, path: Path, map_mode: str = "decoder",
                exporter: str = "torchscript", opset: int = DEFAULT_OPSET, example_batch: int = 2,
                metadata: dict[str, Any] | None = None, network_only: bool = False) -> ExportInfo:
    """Write ``path`` (ONNX) and ``path.json`` (metadata); returns what was written.

    ``exporter``: "torchscript" (``torch.onnx.export(dynamo=False)``: fast, needs only onnx)
    or "dynamo" (the torch.export-based exporter; needs ``onnxscript``). ``network_only``: the graph
    of :class:`NetworkGraph` (outputs :func:`network_outputs`), for a runtime that adds the map head."""
    from kernels.dispatch import kernel_mode

    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}", arg="exporter")
    from inp_former.inference import export_refusal

    refusal = export_refusal(cfg.model)
    if refusal:
        raise ConfigError(f"checkpoint: {refusal}, whose graph takes one fixed-size image; score it with inpctl "
                          "predict or serve", arg="checkpoint")
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError as exc:
        raise ValueError("ONNX export needs the onnx package: pip install onnx onnxruntime "
                         "(the export extra of inpctl)") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    wrapper = ExportableINPFormer(model, cfg, map_mode).eval()
    outputs = list(OUTPUTS)
    if network_only:
        wrapper, outputs = NetworkGraph(wrapper).eval(), network_outputs(model)
    example = torch.randn(example_batch, 3, *cfg.model.input_hw)
    tmp = path.with_name(f".{path.name}.tmp")
    with kernel_mode("reference"), fixed_position_embedding(model, cfg.model.input_hw), torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the result is checked instead
        if exporter == "torchscript":
            torch.onnx.export(wrapper, (example,), str(tmp), input_names=["image"], output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in ("image", *outputs)},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        else:
            try:
                import onnxscript  # noqa: F401
            except ImportError as exc:
                raise ConfigError("exporter dynamo needs the onnxscript package (pip install onnxscript); "
                                  "or use the exporter torchscript", arg="exporter") from exc
            program = torch.onnx.export(wrapper, (example,), input_names=["image"], output_names=outputs,
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                                        opset_version=max(opset, 18), dynamo=True, external_data=False)
            program.save(str(tmp), external_data=False)
    sidecar = publish(tmp, path, metadata or export_metadata(cfg, map_mode, None))
    mc = cfg.model
    return ExportInfo(path, sidecar, exporter, opset if exporter == "torchscript" else max(opset, 18),
                      {"image": ["batch", 3, *mc.input_hw]},
                      {name: ["batch", "..."] for name in outputs} if network_only else
                      {"map": ["batch", *mc.map_hw], "score": ["batch"],
                       "embedding": ["batch", model.encoder.embed_dim]})


def publish(staged: Path, path: Path, meta: dict[str, Any]) -> Path:
    """Put ``meta`` into the staged ONNX file, move it to ``path`` and write ``path.json`` beside it
    (each step atomic: a reader never sees a half-written model); returns the sidecar's path."""
    from inp_former.io import atomic_write_text

    _add_onnx_metadata(staged, meta)
    Path(staged).replace(path)
    sidecar = path.with_name(path.name + ".json")
    atomic_write_text(sidecar, json.dumps(meta, indent=2) + "\n")
    return sidecar


def _add_onnx_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Copy ``meta`` into the ONNX file's metadata_props (JSON text for non-string values)."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check_onnx(path: Path, model: INPFormer, cfg: RunConfig, map_mode: str = "decoder",
               batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0) -> dict[str, float]:
    """Run the ONNX file with onnxruntime (CPU) and the torch reference path on the same random
    images; returns the largest absolute differences {'map', 'score', 'embedding'} over ``batch_sizes``."""
    import onnxruntime as ort

    from kernels.dispatch import kernel_mode

    from inp_former.categories import image_embeddings
    from inp_former.inference import score_batch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = {name: 0.0 for name in OUTPUTS}
    model = model.eval().cpu()
    for batch in batch_sizes:
        images = torch.randn(batch, 3, *cfg.model.input_hw, generator=generator)
        with kernel_mode("reference"):
            maps, scores, out = score_batch(model, images, cfg, "fp32", map_mode)
        expected = {"map": maps, "score": scores, "embedding": image_embeddings(out.encoder_groups)}
        for name, value in zip(OUTPUTS, session.run(list(OUTPUTS), {"image": images.numpy()})):
            worst[name] = max(worst[name], float((torch.from_numpy(value) - expected[name]).abs().max()))
    return worst
