"""Score a set of image files with a :class:`~inp_former.predictor.Predictor` and write the results.

Into ``out_dir``:

* ``predictions.csv``: one row per scored image (columns in ``CSV_COLUMNS``);
* ``predictions.json``: the same rows plus the threshold used, the colour scale, counts and the
  files that could not be read;
* ``overlays/<name>.png``: the anomaly map over the image the model sees (resized, centre-cropped),
  on a fixed colour scale (one per input image, unless ``overlays=False``);
* ``maps/<name>.npy``: the raw anomaly map, float32 (map_size, map_size), lossless (``save_maps``).

``<name>`` keeps where the image came from, so that a picture is found by its image: for a folder,
the file's path relative to it (prefixed by the folder's name: ``test/hole/000``); for files given
one by one, their path relative to the folder they all share (``good/000``, ``hole/000``); without
the extension. Names that still clash get ``_2``, ``_3``, ...
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from inp_former.data import IMAGE_EXTENSIONS, DatasetError, load_rgb
from inp_former.io import atomic_write_text
from inp_former.predictor import Predictor
from inp_former.thresholds import LABEL_RULE
from inp_former.visualize import model_view, overlay

CSV_COLUMNS = ["path", "score", "normalized_score", "label", "threshold", "threshold_source", "category",
               "category_source", "map_min", "map_max", "map_mean", "map_p99",
               "anomalous_area", "overlay", "map_file"]


# --- inputs ----------------------------------------------------------------------------------------

def collect_inputs(inputs: list[Path]) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """(file, output name without extension) for every image to score, and the inputs that do not exist.

    Folders are searched recursively for image extensions (case-insensitive); files given directly
    are tried whatever their extension."""
    found: list[tuple[Path, Path]] = []
    missing: list[dict[str, str]] = []
    direct = [Path(p) for p in inputs if Path(p).is_file()]
    shared = Path(os.path.commonpath([str(p.resolve().parent) for p in direct])) if direct else None
    for given in map(Path, inputs):
        if given.is_dir():
            base = Path(given.resolve().name or "root")
            files = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(given).parts))
            found.extend((p, (base / p.relative_to(given)).with_suffix("")) for p in files)
        elif given.is_file():
            found.append((given, given.resolve().relative_to(shared).with_suffix("")))
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


def predict_files(predictor: Predictor, inputs: list[Path], out_dir: Path, overlays: bool = True,
                  save_maps: bool = False, batch_size: int | None = None, checkpoint: str | None = None,
                  on_progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Score every image under ``inputs`` and write the outputs; returns the JSON summary.

    ``on_progress(done, total, name)`` is called after each batch; ``batch_size`` defaults to the
    predictor's."""
    batch_size = batch_size or predictor.batch_size
    files, skipped = collect_inputs(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    mc = predictor.cfg.model
    rows: list[dict[str, Any]] = []
    value_range, range_source = predictor.map_range, "checkpoint calibration"
    if value_range is None and predictor.threshold is not None and predictor.threshold > 0:
        value_range, range_source = (0.0, 2.0 * predictor.threshold), "0 .. 2 x threshold (no stored calibration)"
    # one batch at a time: memory does not grow with the number of files
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
                                       **p.decision.fields(), **p.stats(),
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
        if on_progress is not None:
            on_progress(min(start + batch_size, len(files)), len(files), chunk[-1][1].name if chunk else "")
    labelled = [r for r in rows if r["label"] is not None]
    by_category: dict[str, dict[str, Any]] = {}
    for r in rows:  # one line per (category, threshold) actually used: what decided the labels
        key = r["category"] or "(pooled)"
        entry = by_category.setdefault(key, {"category": r["category"], "threshold": r["threshold"],
                                             "threshold_source": r["threshold_source"], "chosen_by": {},
                                             "images": 0, "anomalous": 0, "normal": 0})
        entry["images"] += 1
        chosen = r["category_source"] or "none"
        entry["chosen_by"][chosen] = entry["chosen_by"].get(chosen, 0) + 1
        if r["label"] is not None:
            entry["anomalous" if r["label"] == 1 else "normal"] += 1
    summary = {
        "checkpoint": checkpoint,
        "map_mode": str(predictor.map_mode),
        "precision": str(predictor.precision),
        "threshold": {"image": predictor.threshold, "source": predictor.threshold_source,
                      "pixel": predictor.pixel_threshold, "rule": LABEL_RULE},
        "score_range": (predictor.calibration.score_range if predictor.calibration is not None else None),
        "map_range": {"value": list(value_range) if value_range else None, "source": range_source},
        "preprocessing": {"resize": mc.resize, "crop": mc.crop, "map_size": mc.map_size},
        "categories": list(by_category.values()),
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


