"""``inpctl export``: the whole inference graph as ONNX (see :mod:`inp_former.export`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from inpctl.console import console, err_console

FORMATS = ("onnx",)
CHECK_TOLERANCE = 1e-4  # largest absolute difference accepted between onnxruntime and torch (maps, scores)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint.pt written by inpctl train."),
        format: str = typer.Option("onnx", "--format", help="Export format: onnx."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: --ckpt with the format's "
                                           "suffix)."),
        map_mode: str = typer.Option("decoder", "--map", help="decoder (the method) or prototype (zero-shot map)."),
        exporter: str = typer.Option("torchscript", help="torchscript (fast; needs onnx) or dynamo "
                                     "(torch.export-based; needs onnxscript)."),
        opset: int = typer.Option(17, min=14, help="ONNX opset (dynamo uses at least 18)."),
        check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with torch on random "
                                   "images at batch 1 and 3 (needs onnxruntime; skipped with a note otherwise)."),
        encoder_weights: Optional[str] = typer.Option(None, help="Where the frozen encoder's weights come from, if "
                                                      "not as at training time."),
    ) -> None:
        """Export the model for deployment: image (B, 3, crop, crop) in, map (B, S, S) and score (B,) out."""
        from inpctl.cli import fail, run

        if format not in FORMATS:
            fail(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
        if map_mode not in ("decoder", "prototype"):
            fail(f"--map {map_mode!r}: expected decoder or prototype")
        target = out or ckpt.with_suffix(f".{format}")

        def job() -> None:
            from inp_former.checkpoint import load_checkpoint
            from inp_former.export import check_onnx, export_metadata, export_onnx, onnxruntime_available
            from inp_former.thresholds import read_calibration

            model, cfg, meta = load_checkpoint(ckpt, "cpu", encoder_weights)
            calibration = read_calibration(meta, map_mode)
            metadata = export_metadata(cfg, map_mode, calibration.to_dict() if calibration else None, str(ckpt))
            with console.status(f"Exporting to ONNX ({exporter})"):
                info = export_onnx(model, cfg, target, map_mode, exporter, opset, metadata=metadata)
            mc = cfg.model
            console.print(f"Wrote {info.path} (opset {info.opset}): image (batch, 3, {mc.crop}, {mc.crop}) -> "
                          f"map (batch, {mc.map_size}, {mc.map_size}), score (batch); and {info.sidecar}",
                          highlight=False)
            if calibration is None:
                err_console.print("[yellow]note:[/] the checkpoint holds no threshold (run inpctl eval on it first); "
                                  "the metadata has none", highlight=False, soft_wrap=True)
            if not check:
                return
            if not onnxruntime_available():
                err_console.print("[yellow]note:[/] onnxruntime is not installed: the export was not checked "
                                  "(pip install onnxruntime)", highlight=False, soft_wrap=True)
                return
            worst = check_onnx(info.path, model, cfg, map_mode)
            console.print(f"Checked with onnxruntime at batch 1 and 3: max |diff| map {worst['map']:.2e}, "
                          f"score {worst['score']:.2e}", highlight=False)
            if max(worst.values()) > CHECK_TOLERANCE:
                fail(f"the ONNX model differs from torch by {max(worst.values()):.2e} (> {CHECK_TOLERANCE:g})", code=1)

        run(job)
