"""Score a set of image files with a :class:`~inp_former.predictor.Predictor` and write the results.

Into ``out_dir``:

* ``predictions.csv``: one row per scored image (columns in ``CSV_COLUMNS``);
* ``predictions.json``: the same rows plus the threshold used, the colour scale, counts and the
  files that could not be read;
* ``overlays/<name>.png``: the anomaly map over the image the model sees (resized, centre-cropped),
  on a fixed colour scale (one per input image, unless ``overlays=False``);
* ``maps/<name>.npy``: the raw anomaly map, float32 (map_size, map_size), lossless (``save_maps``);
* ``masks/<name>.png``: the predicted anomalous region at the input image's resolution, 255 where the
  map is at or above the pixel threshold, else 0 (``masks``; :meth:`Prediction.mask`);
* while it runs, ``.partial/``: the results so far, batch by batch, for ``resume`` (:class:`PartialResults`).

An image of more than ``max_megapixels`` (read from its header, before decoding) is skipped, as
``serve`` refuses it; one far smaller than the model's input is scored and listed in ``small_images``.

A tiled model (``cfg.model.tile``) scores one image per batch, as tiles at its own resolution: its
overlays and maps are full resolution (the whole image, (H, W)).

``<name>`` keeps where the image came from, so that a picture is found by its image: for a folder,
the file's path relative to it (prefixed by the folder's name: ``test/hole/000``); for files given
one by one, their path relative to the folder they all share (``good/000``, ``hole/000``); without
the extension. Names that still clash get ``_2``, ``_3``, ...
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from inp_former import distributed
from inp_former.data import IMAGE_EXTENSIONS, DatasetError, load_rgb
from inp_former.data.geometry import Geometry
from inp_former.data.transforms import READ_ERRORS
from inp_former.io import atomic_save_image, atomic_write_text
from inp_former.predictor import Predictor
from inp_former.serve.config import MAX_MEGAPIXELS
from inp_former.serve.images import too_many_pixels
from inp_former.thresholds import LABEL_RULE
from inp_former.visualize import overlay

PARTIAL_DIR = ".partial"               # results of an unfinished run, for resume (PartialResults)
PER_IMAGE = ("predictions", "skipped", "small_images")  # lists of every image: rank 0's alone under torchrun
CSV_COLUMNS = ["path", "score", "normalized_score", "label", "threshold", "threshold_source", "category",
               "category_source", "map_min", "map_max", "map_mean", "map_p99",
               "anomalous_area", "overlay", "map_file", "mask"]


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


# --- scoring -----------------------------------------------------------------------------------

@dataclass
class _Item:
    """One input of a batch: its prediction and the picture it is drawn over, or why it was skipped."""
    path: Path
    name: Path
    prediction: Any = None
    view: Any = None
    error: str | None = None
    arg: str | None = None                 # the argument that would let a skipped file through
    size: tuple[int, int] | None = None    # the image's (width, height)


def _too_large(path: Path, max_pixels: int) -> str | None:
    """Why ``path`` is over the pixel limit, from its header alone (as serve checks an upload), or None."""
    try:
        with Image.open(path) as image:   # lazy: only the header is parsed
            refused = too_many_pixels(image.size, max_pixels)
    except READ_ERRORS:
        return None   # not readable: load_rgb says why
    return refused and f"{refused}; raise max_megapixels to score it"


def _score_chunk(predictor: Predictor, chunk: list[tuple[Path, Path]], overlays: bool,
                 max_pixels: int = int(MAX_MEGAPIXELS * 1e6)) -> list[_Item]:
    """Read and score one batch; unreadable and too large files are kept as items with their error."""
    items, tensors = [], []
    for path, name in chunk:
        refused = _too_large(path, max_pixels)
        if refused:
            items.append(_Item(path, name, error=refused, arg="max_megapixels"))
            continue
        try:
            image = load_rgb(path)
            tensors.append(predictor.preprocess(image))
        except (DatasetError, OSError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            items.append(_Item(path, name, error=message.removeprefix(f"{path}: ")))
            continue
        items.append(_Item(path, name, view=predictor.view(image) if overlays else None, size=image.size))
    kept = [item for item in items if item.error is None]
    if kept:
        for item, p in zip(kept, predictor.predict_tensor(tensors, [str(i.path) for i in kept])):
            item.prediction = p
    return items


def _overlay_range(predictor: Predictor, batches: list[list[tuple[Path, Path]]], mine: range, overlays: bool,
                   max_pixels: int) -> tuple[tuple[float, float] | None, str, dict[int, list[_Item]]]:
    """The one colour scale of every overlay, its source, and the batches of this process scored to
    find it. Without a stored scale or a threshold it is the range of the first batch with a readable
    image: every process scores those first batches itself (the same maps everywhere), and keeps
    the ones that are its own for the main loop."""
    if predictor.map_range is not None:
        return predictor.map_range, "checkpoint calibration", {}
    if predictor.threshold is not None and predictor.threshold > 0:
        return (0.0, 2.0 * predictor.threshold), "0 .. 2 x threshold (no stored calibration)", {}
    scored: dict[int, list[_Item]] = {}
    for index, chunk in enumerate(batches):
        items = _score_chunk(predictor, chunk, overlays and index in mine, max_pixels)
        if index in mine:
            scored[index] = items
        maps = [item.prediction.map for item in items if item.prediction is not None]
        if maps:
            lo, hi = float(np.min(np.stack(maps))), float(np.max(np.stack(maps)))
            return (lo, hi if hi > lo else lo + 1e-6), "range of the first batch", scored
    return None, "checkpoint calibration", scored


def _record(item: _Item, out_dir: Path, value_range: tuple[float, float] | None, overlays: bool,
            save_maps: bool, masks: Geometry | None = None) -> dict[str, Any]:
    """Write an item's overlay, map and mask (``masks``: the geometry that brings a map back onto
    its image); its result: a row of predictions.csv and the image's size, or a skipped file."""
    base = {"name": item.name.as_posix(), "path": str(item.path)}
    if item.prediction is None:
        skipped = {"path": str(item.path), "error": item.error, **({"arg": item.arg} if item.arg else {})}
        return {**base, "skipped": skipped}
    p = item.prediction
    row: dict[str, Any] = {"path": str(item.path), "score": p.score, "normalized_score": p.normalized_score,
                           **p.decision.fields(), **p.stats(), "overlay": None, "map_file": None, "mask": None}
    if overlays:
        target = out_dir / "overlays" / item.name.with_name(item.name.name + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        overlay(item.view, p.map, value_range, pixel_threshold=p.pixel_threshold).save(target)
        row["overlay"] = target.relative_to(out_dir).as_posix()
    if save_maps:
        target = out_dir / "maps" / item.name.with_name(item.name.name + ".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, p.map.astype(np.float32))
        row["map_file"] = target.relative_to(out_dir).as_posix()
    if masks is not None and p.pixel_threshold is not None:
        target = out_dir / "masks" / item.name.with_name(item.name.name + ".png")
        atomic_save_image(p.mask(item.size, masks), target)
        row["mask"] = target.relative_to(out_dir).as_posix()
    return {**base, "row": row, "size": list(item.size)}


# --- results of an unfinished run --------------------------------------------------------------

class PartialResults:
    """What a run into ``out_dir`` has written so far, batch by batch, so that ``resume`` skips it.

    ``out_dir/.partial/batch-<index>.json`` holds the results of one batch (rows and skipped files,
    by output name), written atomically once its overlays and maps are written, and tagged with the
    job's settings (``identity``): only results of the same checkpoint file, thresholds, map, precision,
    batch size, overlays and maps are taken up again. The folder goes once the final files are written.
    """

    def __init__(self, out_dir: Path, identity: dict[str, Any]) -> None:
        self.dir = Path(out_dir) / PARTIAL_DIR
        self.identity = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        self.ignored = 0   # earlier batches of other settings, found by read()

    def read(self) -> dict[str, dict[str, Any]]:
        """The results written so far with the same settings: {output name: record}."""
        records: dict[str, dict[str, Any]] = {}
        for part in sorted(self.dir.glob("batch-*.json")) if self.dir.is_dir() else []:
            try:
                payload = json.loads(part.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue   # not ours, or unreadable: that batch is scored again
            if payload.get("identity") != self.identity:
                self.ignored += 1
                continue
            records.update((record["name"], record) for record in payload.get("records", []))
        return records

    def write(self, index: int, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.dir / f"batch-{index:08d}.json",
                          json.dumps({"identity": self.identity, "records": records}) + "\n")

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _identity(predictor: Predictor, checkpoint: str | None, overlays: bool, save_maps: bool,
              batch_size: int, masks: bool, max_megapixels: float) -> dict[str, Any]:
    """What makes two runs' results the same: the checkpoint file as it is now, the scoring settings."""
    stamp = None
    source = predictor.checkpoint or (Path(checkpoint) if checkpoint else None)
    if source is not None:
        source = source / "checkpoint.pt" if source.is_dir() else source
        with contextlib.suppress(OSError):
            info = source.stat()
            stamp = [str(source.resolve()), info.st_size, info.st_mtime_ns]
    return {"checkpoint": stamp, "calibration": predictor.calibration.to_dict() if predictor.calibration else None,
            "threshold": predictor.decision.given, "category": predictor.category, "map_mode": str(predictor.map_mode),
            "precision": str(predictor.precision), "runtime": predictor.runtime, "batch_size": batch_size,
            "overlays": overlays, "save_maps": save_maps, "masks": masks, "max_megapixels": max_megapixels}


# --- the job -----------------------------------------------------------------------------------

def predict_files(predictor: Predictor, inputs: list[Path], out_dir: Path, overlays: bool = True,
                  save_maps: bool = False, batch_size: int | None = None, checkpoint: str | None = None,
                  on_progress: Callable[[int, int, str], None] | None = None, resume: bool = False,
                  masks: bool = False, max_megapixels: float = MAX_MEGAPIXELS) -> dict[str, Any]:
    """Score every image under ``inputs`` and write the outputs; returns the JSON summary.

    ``on_progress(done, total, name)`` is called after each batch; ``batch_size`` defaults to the
    predictor's. ``masks``: a binary mask per image (that has a pixel threshold). An image of more
    than ``max_megapixels`` is skipped, read from its header. ``resume``: take up the results an
    interrupted run into ``out_dir`` wrote (:class:`PartialResults`) instead of scoring those images
    again; the outputs are those of an uninterrupted run. The summary returned also says (not
    written) how many images were taken up (``resumed``) and how many earlier batches of other
    settings were ignored (``ignored_partial``).

    In a process group of several processes (``torchrun``; every process calls it with the same
    inputs) each scores a contiguous block of the batches and writes their overlays, maps and masks;
    rank 0 writes predictions.csv/.json once every block is done, with the rows in the one-process
    order. Every process returns the summary; on the others it lacks the per-image lists
    (``predictions``, ``skipped``, ``small_images``)."""
    batch_size = batch_size or predictor.batch_size
    files, skipped = collect_inputs(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a tiled model: one image per batch (its tiles are scored batch_size at a time), so memory holds
    # one full-resolution image and map, not batch_size of them
    per_batch = 1 if predictor.tiled else batch_size
    batches = [files[start:start + per_batch] for start in range(0, len(files), per_batch)]
    mine = distributed.share(len(batches))
    partial = PartialResults(out_dir, _identity(predictor, checkpoint, overlays, save_maps, batch_size, masks,
                                                max_megapixels))
    max_pixels, geometry = int(max_megapixels * 1e6), predictor.geometry if masks else None
    if not resume:  # a fresh run: no stale results are taken up later (rank 0 clears, the others wait)
        distributed.on_writer(partial.clear)
    earlier = partial.read() if resume else {}
    taken = {index for index in mine  # batches whose every image has its result already (same file)
             if all(earlier.get(name.as_posix(), {}).get("path") == str(path) for path, name in batches[index])}
    value_range, range_source, scored = _overlay_range(predictor, batches, mine, overlays, max_pixels)
    job, last = distributed.Job("predict"), [""]

    def progress(count: int) -> None:
        if on_progress is not None:
            on_progress(count, len(files), last[0])

    records: list[dict[str, Any]] = []   # this process's results, in input order
    resumed = sum(len(batches[index]) for index in taken)
    if resumed:
        progress(job.advance(resumed))
    # one batch at a time: memory does not grow with the number of files
    for index in mine:
        if index in taken:
            records.extend(earlier[name.as_posix()] for _, name in batches[index])
            continue
        items = scored.pop(index, None) or _score_chunk(predictor, batches[index], overlays, max_pixels)
        batch_records = [_record(item, out_dir, value_range, overlays, save_maps, geometry) for item in items]
        partial.write(index, batch_records)
        records.extend(batch_records)
        last[0] = batches[index][-1][1].name
        progress(job.advance(len(batches[index])))
    job.wait(progress)   # every block is scored (or a process failed: all stop, nothing final is written)
    shares = distributed.gather((records, resumed))
    del records

    def write() -> dict[str, Any]:   # rank 0: the final files, only now that every block arrived
        every = [record for share, _ in shares for record in share]
        rows = [record["row"] for record in every if "row" in record]
        unreadable = [record["skipped"] for record in every if "skipped" in record]
        small = _small_images(predictor, [record for record in every if "row" in record])
        summary = _summary(predictor, checkpoint, files, rows, skipped + unreadable, value_range, range_source,
                           small)
        atomic_write_text(out_dir / "predictions.csv", _csv_text(rows))
        atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=2) + "\n")
        # returned, not written: how this run went, not what it found
        summary.update(resumed=sum(n for _, n in shares), ignored_partial=partial.ignored)
        return summary

    summary = distributed.on_writer(write, give=lambda s: {k: v for k, v in s.items() if k not in PER_IMAGE})
    partial.clear()
    return summary


def _small_images(predictor: Predictor, scored: list[dict[str, Any]]) -> dict[str, Any]:
    """The images with a side under half the model's input side: upscaled that much, their maps
    and scores say little. ``{model_input: [width, height], images: [{path, size: [width, height]}]}``."""
    height, width = predictor.geometry.crop
    small = [{"path": record["path"], "size": record["size"]} for record in scored
             if record["size"][0] * 2 < width or record["size"][1] * 2 < height]
    return {"model_input": [width, height], "images": small}


def _summary(predictor: Predictor, checkpoint: str | None, files: list[tuple[Path, Path]], rows: list[dict[str, Any]],
             skipped: list[dict[str, str]], value_range: tuple[float, float] | None,
             range_source: str, small_images: dict[str, Any]) -> dict[str, Any]:
    """predictions.json: the settings, the decisions per category, counts, the rows and skipped files."""
    mc = predictor.cfg.model
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
    return {
        "checkpoint": checkpoint,
        "map_mode": str(predictor.map_mode),
        "precision": str(predictor.precision),
        "precision_reason": predictor.precision_reason,
        "runtime": predictor.runtime,                 # torch or openvino: inference.choose_runtime
        "runtime_reason": predictor.runtime_reason,
        "threshold": {"image": predictor.threshold, "source": predictor.threshold_source,
                      "pixel": predictor.pixel_threshold, "rule": LABEL_RULE},
        "score_range": (predictor.calibration.score_range if predictor.calibration is not None else None),
        "map_range": {"value": list(value_range) if value_range else None, "source": range_source},
        "preprocessing": ({"tile": mc.tile, "tile_overlap": mc.tile_overlap, "map": "full resolution"}
                          if predictor.tiled else {"resize": mc.resize, "crop": mc.crop, "map_size": mc.map_size}),
        "categories": list(by_category.values()),
        "counts": {"inputs": len(files) + sum(1 for s in skipped if s["error"] == "no such file or directory"),
                   "scored": len(rows), "skipped": len(skipped),
                   "anomalous": sum(1 for r in labelled if r["label"] == 1),
                   "normal": sum(1 for r in labelled if r["label"] == 0)},
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "predictions": rows,
        "skipped": skipped,
        "small_images": small_images,
    }
