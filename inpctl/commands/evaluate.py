"""``inpctl eval``: flags -> :func:`inp_former.workflow.evaluate_checkpoint` -> the table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from inpctl.helpers import (PRECISION_HELP, RUNTIME_CHOICES, RUNTIME_HELP, RichReporter, choices, default,
                            parse_categories, print_evaluation, run)


def eval_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint.pt, a run directory (also of a single-class "
                              "run), or the authors' model.pth."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root [default: the training data]."),
    dataset: Optional[str] = typer.Option(None, help="Layout of --data [default: the checkpoint's]."),
    categories: Optional[str] = typer.Option(None, help="Comma-separated categories [default: all]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: beside --ckpt]."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per batch." + default("inference", "batch_size")),
    precision: Optional[str] = typer.Option(None, metavar=choices("Precision"), help=PRECISION_HELP),
    runtime: Optional[str] = typer.Option(None, "--runtime", metavar=RUNTIME_CHOICES, help=RUNTIME_HELP),
    map_mode: Optional[str] = typer.Option(None, "--map", metavar=choices("MapMode"), help="prototype: the "
                                           "zero-shot map." + default("inference", "map_mode")),
    fast: bool = typer.Option(False, "--fast/--no-fast", help="CUDA: bf16, fused kernels, CUDA graphs."),
    encoder_weights: Optional[str] = typer.Option(None, help="Encoder weights, if not as at training."),
    allow_encoder_mismatch: bool = typer.Option(False, "--allow-encoder-mismatch", help="Evaluate even if the "
                                                "encoder is not the trained one (marked in metrics.json)."),
    resize: Optional[int] = typer.Option(None, min=14, help="Resize [default: the checkpoint's; model.pth: 448]."),
    crop: Optional[int] = typer.Option(None, min=14, help="Centre crop [default: the checkpoint's; model.pth: 392]."),
    save_thresholds: bool = typer.Option(False, "--save-thresholds", help="Merge the calibrated thresholds into "
                                         "the checkpoint (per category), for inpctl predict."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an evaluation of other categories, data, "
                                   "map or precision already in the output folder (refused otherwise)."),
    report: bool = typer.Option(False, "--report", help="Also write report.html (metrics, figures)."),
    report_samples: int = typer.Option(3, min=0, help="Sample images per category in --report."),
    exact_pixels: Optional[int] = typer.Option(None, min=0, help="Exact pixel metrics up to this many pixels "
                                               "per category, then binned (docs/reliability.md)."
                                               + default("eval", "exact_pixels")),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Evaluate a checkpoint: a table per category + mean, metrics.json, scores.csv, thresholds.json.

    The checkpoint is not modified unless --save-thresholds. Several GPUs or machines: torchrun
    --nproc-per-node N -m inpctl eval ... (the same files as one process; docs/reliability.md).
    """
    from inp_former import distributed
    from inp_former.config import overlay
    from inp_former.evaluate import EvalConfig
    from inp_former.inference import InferenceConfig
    from inp_former.workflow import DataOverride, evaluate_checkpoint

    def job():
        inference = overlay(InferenceConfig(), batch_size=batch_size, precision=precision, map_mode=map_mode,
                            fast=fast or None, runtime=runtime)
        evaluation = overlay(EvalConfig(inference), exact_pixels=exact_pixels)
        override = DataOverride(root=str(data) if data is not None else None, dataset=dataset,
                                categories=tuple(parse_categories(categories)), resize=resize, crop=crop)
        return evaluate_checkpoint(ckpt, override, evaluation, out, device, encoder_weights, allow_encoder_mismatch,
                                   save_thresholds, report_samples if report else None,
                                   RichReporter(rank_zero_only=True), overwrite=overwrite)

    outcome = run(job)
    if not distributed.is_writer():  # under torchrun rank 0 shows the result of all processes
        return
    setting = "single-class " if outcome.result.meta.get("setting") == "single-class" else ""
    print_evaluation(outcome, f"INP-Former {setting}({outcome.result.meta.get('map_mode')} maps), %")
