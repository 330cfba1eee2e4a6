"""``inpctl predict``: flags -> :func:`inp_former.workflow.predict_images` -> a summary."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from inp_former.serve.config import MAX_MEGAPIXELS
from inpctl.helpers import (PRECISION_HELP, RUNTIME_CHOICES, RUNTIME_HELP, RichReporter, as_flags, choices, console,
                            err_console, fail, rows_table, run, warn)


def predict_command(
    inputs: list[Path] = typer.Argument(..., help="Images and/or folders (searched recursively)."),
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint.pt of inpctl train, or its run directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: predictions-<time>]."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Anomalous when score >= it [default: "
                                              "the one stored in --ckpt]."),
    category: Optional[str] = typer.Option(None, "--category", help="Use this category's stored threshold "
                                           "[default: each image's, from its folder names, else its look]."),
    save_maps: bool = typer.Option(False, "--save-maps", help="Also write each raw map (float32 .npy)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="A heatmap overlay PNG per image."),
    masks: bool = typer.Option(False, "--masks", help="A binary mask PNG per image at its resolution: 255 where "
                               "the map >= the stored pixel threshold."),
    max_megapixels: float = typer.Option(MAX_MEGAPIXELS, "--max-megapixels", min=0.001, help="Skip larger images "
                                         "(width x height, read from the header before decoding), as serve does."),
    batch_size: int = typer.Option(16, min=1, help="Images per batch."),
    map_mode: str = typer.Option("decoder", "--map", metavar=choices("MapMode"), help="prototype: zero-shot map."),
    precision: Optional[str] = typer.Option(None, metavar=choices("Precision"), help=PRECISION_HELP),
    runtime: Optional[str] = typer.Option(None, "--runtime", metavar=RUNTIME_CHOICES, help=RUNTIME_HELP),
    fast: bool = typer.Option(False, "--fast/--no-fast", help="CUDA: bf16, fused kernels, CUDA graphs."),
    encoder_weights: Optional[str] = typer.Option(None, help="Encoder weights, if not as at training."),
    allow_encoder_mismatch: bool = typer.Option(False, "--allow-encoder-mismatch", help="Score even if the "
                                                "encoder is not the trained one."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run into the same --out: "
                                "images whose results it wrote are not scored again."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Score new images: predictions.csv/.json, an overlay per image, raw maps and masks on request.

    Several GPUs or machines: torchrun --nproc-per-node N -m inpctl predict ... --out DIR.
    """
    from inp_former import distributed
    from inp_former.inference import InferenceConfig
    from inp_former.workflow import PredictOptions, default_output_dir, predict_images

    if out is None and resume:
        fail("--resume: give the --out folder of the interrupted run")
    if out is None and distributed.launched():
        fail("--out: required under torchrun, so that every process writes to the same folder")
    out_dir = out or default_output_dir("predictions")
    # where the library says "evaluate it with save_thresholds", a user here needs the whole command
    flags = {"save_thresholds": f"inpctl eval --ckpt {ckpt} --save-thresholds"}

    def job():
        inference = InferenceConfig(precision=precision, map_mode=map_mode, fast=fast, batch_size=batch_size,
                                    runtime=runtime)
        options = PredictOptions(inference, threshold, category, overlays, save_maps, masks, max_megapixels)
        return predict_images(ckpt, inputs, out_dir, options, device, encoder_weights, allow_encoder_mismatch,
                              RichReporter(rank_zero_only=True), resume=resume)

    summary = run(job, flags=flags)
    if not distributed.is_writer():  # under torchrun rank 0 shows the result of all processes
        return
    if resume:
        console.print(f"Resumed: {summary['resumed']} files had their results written already", highlight=False)
    if summary.get("ignored_partial"):
        warn(f"--resume: {summary['ignored_partial']} earlier batches in {out_dir} were made with another "
             f"checkpoint or other settings; their images were scored again")
    counts = summary["counts"]
    labelled = any(group["threshold"] is not None for group in summary["categories"])
    verdict = f": {counts['anomalous']} anomalous, {counts['normal']} normal" if labelled else " (no threshold)"
    if counts["scored"]:
        console.print(f"Scored {counts['scored']} images{verdict}", highlight=False)
    if labelled:
        console.print(rows_table("Decisions (score >= threshold is anomalous)",
                                 ["category", "chosen by", "threshold", "images", "anomalous", "normal"],
                                 [(group["category"] or "pooled",
                                   ", ".join(f"{how} {n}" if len(group["chosen_by"]) > 1 else how
                                             for how, n in group["chosen_by"].items()),
                                   f"{group['threshold']:.6g}" + (" given" if group["threshold_source"] == "given"
                                                                 else ""),
                                   group["images"], group["anomalous"], group["normal"])
                                  for group in summary["categories"]]))
    for item in summary["skipped"]:
        reason = as_flags(item["error"], [item["arg"]] if item.get("arg") else [], flags)
        err_console.print(f"[yellow]skipped:[/] {escape(item['path'])}: {escape(reason)}",
                          highlight=False, soft_wrap=True)
    if counts["scored"] == 0:   # no picture folder was made: say what happened instead
        console.print(f"Wrote {out_dir / 'predictions.csv'} (no rows) and {out_dir / 'predictions.json'} (the skipped "
                      "files)", highlight=False, soft_wrap=True)
        fail(f"nothing scored: {_skipped_reasons(summary['skipped'])}")
    if counts["skipped"]:
        console.print(f"Skipped {counts['skipped']} file(s) (listed in predictions.json)")
    written = sum(1 for row in summary["predictions"] if row["mask"])
    console.print(f"Wrote {out_dir / 'predictions.csv'}, {out_dir / 'predictions.json'}"
                  + (f", {counts['scored']} overlays in {out_dir / 'overlays'}" if overlays else "")
                  + (f", raw maps in {out_dir / 'maps'}" if save_maps else "")
                  + (f", {written} masks in {out_dir / 'masks'}" if masks else ""), highlight=False, soft_wrap=True)


def _skipped_reasons(skipped: list[dict]) -> str:
    """``2 inputs skipped (1 no such file or directory, 1 not a readable image)``: each reason's
    first words, counted (every file's whole reason is printed above)."""
    reasons = Counter(item["error"].split(" (")[0].split(";")[0] for item in skipped)
    return (f"{len(skipped)} input{'s' if len(skipped) != 1 else ''} skipped ("
            + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) + ")")
