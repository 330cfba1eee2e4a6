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
    int8: bool = typer.Option(False, "--int8", help="Quantise to int8 for CPUs (static, onnxruntime); refused if "
                              "image AUROC drops by more than 1 point on the check images."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="With --int8: normal images to "
                                               "calibrate on [default: the checkpoint's training images]."),
    check_data: Optional[Path] = typer.Option(None, "--check-data", help="With --int8: a dataset root whose test "
                                              "split checks accuracy [default: the checkpoint's data]."),
    force: bool = typer.Option(False, "--force", help="With --int8: write the model even if it loses accuracy."),
) -> None:
    """Export the model for deployment: image (B, 3, crop, crop) in; map (B, S, S), score (B,) and
    embedding (B, C) out; thresholds and rules in the .json beside it."""
    from inp_former.config import MapMode, choice
    from inp_former.workflow import export_model

    if format not in FORMATS:
        fail(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    given = [flag for flag, value in (("--calibration", calibration), ("--check-data", check_data),
                                      ("--force", force)) if value]
    if given and not int8:
        fail(f"{', '.join(given)}: only with --int8")
    check_override = None
    if check_data is not None:
        from inp_former.workflow import DataOverride

        check_override = DataOverride(root=str(check_data))
    outcome = run(lambda: export_model(ckpt, out, choice(MapMode, map_mode, "map_mode"), exporter, opset, check,
                                       encoder_weights, allow_encoder_mismatch, RichReporter(), int8=int8,
                                       int8_calibration=calibration, check_data=check_override, force=force),
                  flags={"data": "--check-data"})
    info, mc = outcome["info"], outcome["config"].model
    (height, width), (map_h, map_w) = mc.input_hw, mc.map_hw
    console.print(f"Wrote {info.path} (opset {info.opset}): image (batch, 3, {height}, {width}) -> "
                  f"map (batch, {map_h}, {map_w}), score (batch), embedding (batch, "
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
    quantised = outcome["int8"]
    if quantised is not None:
        console.print(f"Int8 against fp32 on {quantised.images} check images: image AUROC {quantised.auroc_fp32:.2f} -> "
                      f"{quantised.auroc_int8:.2f} ({-quantised.auroc_drop:+.2f} points; more than 1 lost is refused); "
                      f"max |map difference| {quantised.max_map_diff:.3g} (maps reach {quantised.map_scale:.3g})",
                      highlight=False, soft_wrap=True)
        if force and quantised.auroc_drop > 1.0:
            warn(f"written anyway (--force): the int8 model loses {quantised.auroc_drop:.2f} points of image AUROC")
