"""``inpctl predict`` and the threshold/report step of ``inpctl eval``.

predict writes into ``--out``:

* ``predictions.csv``: one row per scored image (columns in ``CSV_COLUMNS``);
* ``predictions.json``: the same rows plus the threshold used, the colour scale, counts and the
  files that could not be read;
* ``overlays/<name>.png``: the anomaly map over the image the model sees (resized, centre-cropped),
  on a fixed colour scale (one per input image, unless ``--no-overlays``);
* ``maps/<name>.npy``: the raw anomaly map, float32 (map_size, map_size), lossless (``--save-maps``).

``<name>`` is the file's path relative to the folder given (prefixed by that folder's name), or the
file name for files given directly, without the extension; clashes get ``_2``, ``_3``, ...
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from inpctl.console import console, err_console, progress_bar

CSV_COLUMNS = ["path", "score", "normalized_score", "label", "threshold", "map_min", "map_max", "map_mean", "map_p99",
               "anomalous_area", "overlay", "map_file"]


# --- inputs ----------------------------------------------------------------------------------------

def collect_inputs(inputs: list[Path]) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """(file, output name without extension) for every image to score, and the inputs that do not exist.

    Folders are searched recursively for image extensions (case-insensitive); files given directly
    are tried whatever their extension."""
    from inp_former.data import IMAGE_EXTENSIONS

    found: list[tuple[Path, Path]] = []
    missing: list[dict[str, str]] = []
    for given in inputs:
        if given.is_dir():
            base = Path(given.resolve().name or "root")
            files = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(given).parts))
            found.extend((p, (base / p.relative_to(given)).with_suffix("")) for p in files)
        elif given.is_file():
            found.append((given, Path(given.stem)))
        else:
            missing.append({"path": str(given), "error": "no such file or directory"})
    used: set[str] = set()
    unique: list[tuple[Path, Path]] = []
    seen_files: set[Path] = set()
    for path, name in found:
        if path.resolve() in seen_files:
            continue
        seen_files.add(path.resolve())
        candidate, index = name, 1
        while candidate.as_posix().lower() in used:
            index += 1
            candidate = name.with_name(f"{name.name}_{index}")
        used.add(candidate.as_posix().lower())
        unique.append((path, candidate))
    return unique, missing


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k])
                         for k in CSV_COLUMNS})
    return buffer.getvalue()


def run_predict(predictor, inputs: list[Path], out_dir: Path, overlays: bool = True, save_maps: bool = False,
                batch_size: int = 16, checkpoint: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Score every image under ``inputs`` and write the outputs; returns the JSON summary."""
    import numpy as np
    import torch

    from inp_former.data import DatasetError, load_rgb
    from inp_former.io import atomic_write_text
    from inp_former.visualize import model_view, overlay

    files, skipped = collect_inputs(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    mc = predictor.cfg.model
    rows: list[dict[str, Any]] = []
    value_range, range_source = predictor.map_range, "checkpoint calibration"
    if value_range is None and predictor.threshold is not None and predictor.threshold > 0:
        value_range, range_source = (0.0, 2.0 * predictor.threshold), "0 .. 2 x threshold (no stored calibration)"
    with progress_bar("name", disable=not show_progress) as progress:
        task = progress.add_task("predict", total=len(files), name="")
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            tensors, kept, views = [], [], []
            for path, name in chunk:
                try:
                    image = load_rgb(path)
                    tensors.append(predictor.transform(image))
                except (DatasetError, OSError, ValueError) as exc:
                    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    skipped.append({"path": str(path), "error": message.removeprefix(f"{path}: ")})
                    continue
                kept.append((path, name))
                views.append(model_view(image, mc.resize, mc.crop) if overlays else None)
            if kept:
                predictions = predictor.predict_tensor(torch.stack(tensors), [str(p) for p, _ in kept])
                if value_range is None:  # no calibration, no threshold: the first batch fixes the scale
                    maps = np.stack([p.map for p in predictions])
                    lo, hi = float(maps.min()), float(maps.max())
                    value_range, range_source = (lo, hi if hi > lo else lo + 1e-6), "range of the first batch"
                for (path, name), view, p in zip(kept, views, predictions):
                    row: dict[str, Any] = {"path": str(path), "score": p.score, "normalized_score": p.normalized_score,
                                           "label": p.label, "threshold": p.threshold, **p.stats(),
                                           "overlay": None, "map_file": None}
                    if overlays:
                        target = out_dir / "overlays" / name.with_name(name.name + ".png")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        overlay(view, p.map, value_range, pixel_threshold=p.pixel_threshold).save(target)
                        row["overlay"] = target.relative_to(out_dir).as_posix()
                    if save_maps:
                        target = out_dir / "maps" / name.with_name(name.name + ".npy")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        np.save(target, p.map.astype(np.float32))
                        row["map_file"] = target.relative_to(out_dir).as_posix()
                    rows.append(row)
            progress.update(task, advance=len(chunk), name=chunk[-1][1].name if chunk else "")
    labelled = [r for r in rows if r["label"] is not None]
    summary = {
        "checkpoint": checkpoint,
        "map_mode": predictor.map_mode,
        "threshold": {"image": predictor.threshold, "source": predictor.threshold_source,
                      "pixel": predictor.pixel_threshold,
                      "rule": "label = 1 (anomalous) when score >= image threshold"},
        "score_range": (predictor.calibration.score_range if predictor.calibration is not None else None),
        "map_range": {"value": list(value_range) if value_range else None, "source": range_source},
        "preprocessing": {"resize": mc.resize, "crop": mc.crop, "map_size": mc.map_size},
        "counts": {"inputs": len(files) + sum(1 for s in skipped if s["error"] == "no such file or directory"),
                   "scored": len(rows), "skipped": len(skipped),
                   "anomalous": sum(1 for r in labelled if r["label"] == 1),
                   "normal": sum(1 for r in labelled if r["label"] == 0)},
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "predictions": rows,
        "skipped": skipped,
    }
    atomic_write_text(out_dir / "predictions.csv", _csv_text(rows))
    atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=2) + "\n")
    return summary


# --- eval: thresholds and report --------------------------------------------------------------------

def store_thresholds(calibrator, result, ckpt: Optional[Path]):
    """Compute the calibration, add it to the eval result's meta and store it in ``ckpt``'s meta."""
    from inp_former.checkpoint import CheckpointError
    from inp_former.thresholds import store_calibration

    calibration = calibrator.result({"dataset": result.meta.get("dataset"), "data_root": result.meta.get("data_root"),
                                     "precision": result.meta.get("precision")})
    result.meta["calibration"] = calibration.to_dict()

    def fmt(value: Optional[float], f1: Optional[float]) -> str:
        return "—" if value is None else f"{value:.6g} (F1 {100 * f1:.1f}%)" if f1 is not None else f"{value:.6g}"

    console.print(f"F1-max thresholds ({calibration.map_mode} maps): "
                  f"image {fmt(calibration.image_threshold, calibration.image_f1)}, "
                  f"pixel {fmt(calibration.pixel_threshold, calibration.pixel_f1)}", highlight=False)
    if ckpt is not None:
        try:
            store_calibration(ckpt, calibration)
            console.print(f"Stored them in {ckpt} (used by inpctl predict unless --threshold overrides)",
                          highlight=False)
        except (CheckpointError, OSError) as exc:
            err_console.print(f"[yellow]warning:[/] thresholds not stored in {ckpt}: {str(exc).splitlines()[0]}",
                              highlight=False, soft_wrap=True)
    return calibration


def write_eval_report(model, cfg, result, calibrator, calibration, device, precision: str, map_mode: str,
                      out_dir: Path, samples: int = 3) -> Path:
    from inp_former.report import choose_samples, write_report

    total = sum(len(choose_samples([r for r in result.rows if r["category"] == c], samples)) for c in result.categories)
    with progress_bar() as progress:
        task = progress.add_task("report", total=total)
        path = write_report(out_dir / "report.html", model, cfg, result, calibration, calibrator, device, map_mode,
                            precision, samples, on_sample=lambda: progress.advance(task))
    console.print(f"Wrote {path}")
    return path


# --- the command -----------------------------------------------------------------------------------

def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_command(
        inputs: list[Path] = typer.Argument(..., help="Images and/or folders (searched recursively)."),
        ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint.pt written by inpctl train (thresholds from "
                                  "inpctl eval)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default predictions-<time>)."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Image-score threshold: anomalous when "
                                                  "score >= it. Default: the one inpctl eval stored in --ckpt."),
        category: Optional[str] = typer.Option(None, "--category", help="Use the stored threshold of this category "
                                               "instead of the pooled one."),
        save_maps: bool = typer.Option(False, "--save-maps", help="Also write each raw anomaly map (float32 .npy)."),
        overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write a heatmap overlay PNG per image."),
        batch_size: int = typer.Option(16, min=1, help="Images per batch."),
        map_mode: str = typer.Option("decoder", "--map", help="decoder (the method) or prototype (zero-shot map)."),
        precision: str = typer.Option("fp32", help="fp32, or bf16 autocast."),
        encoder_weights: Optional[str] = typer.Option(None, help="Where the frozen encoder's weights come from, if not "
                                                      "as at training time."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    ) -> None:
        """Score new images: predictions.csv/.json, an overlay per image, raw maps on request."""
        from inpctl.cli import fail, pick_device, run

        if precision not in ("fp32", "bf16"):
            fail(f"--precision {precision!r}: expected fp32 or bf16")
        if map_mode not in ("decoder", "prototype"):
            fail(f"--map {map_mode!r}: expected decoder or prototype")
        out_dir = out or Path(f"predictions-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")

        def job() -> None:
            from inp_former.predictor import Predictor

            files, _ = collect_inputs(inputs)
            if not files:
                fail(f"no images found in {', '.join(map(str, inputs))} "
                     "(extensions: png, jpg, jpeg, bmp, tif, tiff, webp)")
            predictor = Predictor.from_checkpoint(ckpt, pick_device(device), threshold, map_mode, precision,
                                                  encoder_weights, category, batch_size)
            if predictor.threshold is None:
                err_console.print("[yellow]warning:[/] no threshold: the checkpoint holds none (run inpctl eval on it "
                                  "first) and --threshold is not given, so images are scored but not labelled",
                                  highlight=False, soft_wrap=True)
            summary = run_predict(predictor, inputs, out_dir, overlays, save_maps, batch_size, str(ckpt))
            counts = summary["counts"]
            verdict = ""
            if predictor.threshold is not None:
                verdict = (f": {counts['anomalous']} anomalous, {counts['normal']} normal at threshold "
                           f"{predictor.threshold:.6g} ({predictor.threshold_source})")
            console.print(f"Scored {counts['scored']} images{verdict}", highlight=False)
            for item in summary["skipped"]:
                err_console.print(f"[yellow]skipped:[/] {escape(item['path'])}: {escape(item['error'])}",
                                  highlight=False, soft_wrap=True)
            if counts["skipped"]:
                console.print(f"Skipped {counts['skipped']} unreadable file(s) (listed in predictions.json)")
            console.print(f"Wrote {out_dir / 'predictions.csv'}, {out_dir / 'predictions.json'}"
                          + (f", {counts['scored']} overlays in {out_dir / 'overlays'}" if overlays else "")
                          + (f", raw maps in {out_dir / 'maps'}" if save_maps else ""), highlight=False)
            if counts["scored"] == 0:
                fail(f"none of the {counts['inputs']} inputs could be read", code=1)

        run(job)
