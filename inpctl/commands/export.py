"""``inpctl export``: flags -> :func:`inp_former.workflow.export_model` -> what was written."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from inpctl.helpers import RichReporter, choices, console, fail, run, warn

FORMATS = ("onnx",)
CHECK_TOLERANCE = 1e-4  # largest absolute difference accepted between onnxruntime and torch (maps, scores)


def export_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint.pt of inpctl train, or its run directory."),
    format: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file [default: --ckpt with the format's suffix]."),
    map_mode: str = typer.Option("decoder", "--map", metavar=choices("MapMode"), help="prototype: zero-shot map."),
    exporter: str = typer.Option("torchscript", help="torchscript (needs onnx) or dynamo (needs onnxscript)."),
    opset: int = typer.Option(17, min=14, help="ONNX opset (dynamo uses at least 18)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with torch at batch 1 and 3."),
    encoder_weights: Optional[str] = typer.Option(None, help="Encoder weights, if not as at training."),
    allow_encoder_mismatch: bool = typer.Option(False, "--allow-encoder-mismatch", help="Export even if the "
                                                "encoder is not the trained one."),
) -> None:
    """Export the model for deployment: image (B, 3, crop, crop) in; map (B, S, S), score (B,) and
    embedding (B, C) out; thresholds and rules in the .json beside it."""
    from inp_former.config import MapMode, choice
    from inp_former.workflow import export_model

    if format not in FORMATS:
        fail(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    outcome = run(lambda: export_model(ckpt, out, choice(MapMode, map_mode, "map_mode"), exporter, opset, check,
                                       encoder_weights, allow_encoder_mismatch, RichReporter()))
    info, mc = outcome["info"], outcome["config"].model
    console.print(f"Wrote {info.path} (opset {info.opset}): image (batch, 3, {mc.crop}, {mc.crop}) -> "
                  f"map (batch, {mc.map_size}, {mc.map_size}), score (batch), embedding (batch, "
                  f"{info.outputs['embedding'][1]}); and {info.sidecar} (thresholds, label and category rules)",
                  highlight=False, soft_wrap=True)
    if outcome["calibration"] is None:
        warn("the checkpoint holds no threshold (evaluate it with --save-thresholds first); the metadata has none")
    if not check:
        return
    if not outcome["checked"]:
        warn("onnxruntime is not installed: the export was not checked (pip install onnxruntime)")
        return
    worst = outcome["check"]
    console.print(f"Checked with onnxruntime at batch 1 and 3: max |diff| map {worst['map']:.2e}, "
                  f"score {worst['score']:.2e}, embedding {worst['embedding']:.2e}", highlight=False)
    if max(worst.values()) > CHECK_TOLERANCE:
        fail(f"the ONNX model differs from torch by {max(worst.values()):.2e} (> {CHECK_TOLERANCE:g})", code=1)
