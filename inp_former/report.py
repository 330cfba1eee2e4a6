"""A self-contained HTML evaluation report: one file, no external resources (images are base64 PNG
data URIs, plots inline SVG), readable offline in any browser.

Contents: the run (checkpoint, encoder, data, map mode), the metrics table per category with the
mean, the stored thresholds, the training loss curve (when the checkpoint's run directory has a
``train_log.csv``), and per category: the density of anomaly scores of normal vs anomalous
pixels (paper Fig. 5) and, for a sample of test images, the input with its ground truth and the
anomaly-map overlay (Fig. 3), the distance to the nearest INP (Fig. 4/8) and the attention map of each
INP (Fig. 7). See :mod:`inp_former.visualize` for what each picture is and how it is scaled.

The sample of a category is deterministic: test images sorted by path, about two thirds anomalous
and one third normal, evenly spaced through each list.
"""
from __future__ import annotations

import datetime as _dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from inp_former.config import RunConfig
from inp_former.model import INPFormer
from inp_former.thresholds import Calibration, Calibrator

TILE = 192            # px: input, anomaly-map and distance-map tiles
ATTENTION_TILE = 96   # px: each INP attention tile
METRIC_TITLES = {"i_auroc": "I-AUROC", "i_ap": "I-AP", "i_f1max": "I-F1max", "p_auroc": "P-AUROC",
                 "p_ap": "P-AP", "p_f1max": "P-F1max", "aupro": "AUPRO"}


@dataclass
class SampleFigures:
    category: str
    path: str
    label: int
    score: float
    predicted: int | None
    input: Image.Image                     # the model's view with the ground-truth contour
    anomaly: Image.Image                   # anomaly-map overlay (calibrated scale) + GT contour
    distance: Image.Image                  # distance to the nearest INP
    attention: list[Image.Image] = field(default_factory=list)   # one per INP
    scales: dict[str, list[float]] = field(default_factory=dict)  # map_range, distance_range used


def choose_samples(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` rows of one category: ~2/3 anomalous, the rest normal, evenly spaced by path."""
    if count <= 0:
        return []
    anomalous = sorted((r for r in rows if int(r["label"]) == 1), key=lambda r: r["path"])
    normal = sorted((r for r in rows if int(r["label"]) == 0), key=lambda r: r["path"])
    want_anomalous = min(len(anomalous), max(count - len(normal), math.ceil(count * 2 / 3)))
    want_normal = min(len(normal), count - want_anomalous)

    def spaced(items: list, k: int) -> list:
        if k <= 0:
            return []
        return [items[int(i * len(items) / k)] for i in range(k)]

    return spaced(anomalous, want_anomalous) + spaced(normal, want_normal)


def tile_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(width, height) of a picture of ``size`` shown with the area of a ``side`` x ``side`` square
    and its own aspect ratio (a keep-aspect model's tall or wide input is not squashed)."""
    width, height = size
    scale = side / (width * height) ** 0.5
    return max(1, round(width * scale)), max(1, round(height * scale))


def render_samples(model: INPFormer, cfg: RunConfig, rows: list[dict[str, Any]], calibration: Calibration | None,
                   device: torch.device | str = "cpu", map_mode: str = "decoder", precision: str = "fp32",
                   batch_size: int = 8, on_sample: Callable[[], None] | None = None) -> list[SampleFigures]:
    """Figures for ``rows`` (dicts with path, category, label): runs the model once per batch."""
    from inp_former.data import AnomalyDataset, image_transform, mask_transform
    from inp_former.settings import category_samples
    from inp_former.inference import score_batch
    from inp_former.thresholds import DecisionRule
    from inp_former.visualize import (attention_images, capture_inp_attention, denormalize, distance_map, overlay,
                                      with_contour)

    mc = cfg.model
    by_path: dict[str, Any] = {}
    for category in dict.fromkeys(r["category"] for r in rows):
        for sample in category_samples(cfg.data, category, "test"):
            by_path[sample.path] = sample
    samples = [by_path[r["path"]] for r in rows if r["path"] in by_path]
    dataset = AnomalyDataset(samples, image_transform(mc.resize_hw, mc.input_hw),
                             mask_transform(mc.resize_hw, mc.input_hw))
    raw: list[dict[str, Any]] = []
    model.eval()
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([item["image"] for item in items]).to(device)
        with capture_inp_attention(model) as captured:
            maps, scores, out = score_batch(model, images, cfg, precision, map_mode)
        distances = distance_map(out.prototype_distance, tuple(images.shape[-2:]), mc.map_hw, mc.blur_kernel,
                                 mc.blur_sigma, out.grid)
        attention = captured[-1].reshape(len(items), -1, *out.grid)
        for i, item in enumerate(items):
            raw.append({"item": item, "map": maps[i].float().cpu().numpy(), "score": float(scores[i]),
                        "distance": distances[i].float().cpu().numpy(), "attention": attention[i]})
    if not raw:
        return []
    # one colour scale for every picture of a kind
    if calibration is not None and calibration.map_range:
        map_range = tuple(calibration.map_range)
    else:
        values = np.concatenate([r["map"].ravel() for r in raw])
        map_range = (float(np.quantile(values, 0.5)), float(values.max()))
    distances_all = np.concatenate([r["distance"].ravel() for r in raw])
    distance_range = (float(distances_all.min()), float(np.quantile(distances_all, 0.999)))
    if not distance_range[1] > distance_range[0]:
        distance_range = (distance_range[0], distance_range[0] + 1e-6)
    scales = {"map_range": [float(v) for v in map_range], "distance_range": list(distance_range)}
    decision = DecisionRule(calibration)   # each image is labelled with its category's threshold
    figures = []
    for r in raw:
        item = r["item"]
        view = denormalize(item["image"])
        view = view.resize(tile_size(view.size, TILE), Image.BILINEAR)
        mask = item["mask"][0].numpy() if int(item["label"]) == 1 else None
        small = view.resize(tile_size(view.size, ATTENTION_TILE), Image.BILINEAR)
        figures.append(SampleFigures(
            category=item["category"], path=item["path"], label=int(item["label"]), score=r["score"],
            predicted=decision.decide(r["score"], item["category"]).label,
            input=with_contour(view, mask),
            anomaly=overlay(view, r["map"], map_range, mask=mask,
                            pixel_threshold=decision.pixel_threshold(item["category"])),
            distance=overlay(view, r["distance"], distance_range, mask=mask),
            attention=attention_images(small, r["attention"]), scales=scales))
        if on_sample is not None:
            on_sample()
    return figures


# --- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}tr.mean td{font-weight:bold;background:#fafafa}
.meta td{text-align:left}.note{color:#a15c00}.samples td{vertical-align:top;text-align:center;font-size:11px}
.samples img{display:block;margin:auto}.attn{display:grid;grid-template-columns:repeat(3,auto);gap:2px}
.attn figure{margin:0}.attn figcaption{font-size:10px}.bar{vertical-align:middle}
.ok{color:#176f2c}.bad{color:#b00020}
"""


def _pct(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _num(value: Any, digits: int = 5) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def _img(image: Image.Image, alt: str, title: str = "") -> str:
    from inp_former.visualize import png_data_uri

    return (f'<img src="{png_data_uri(image)}" width="{image.width}" height="{image.height}" '
            f'alt="{html.escape(alt)}" title="{html.escape(title or alt)}">')


def metrics_table_html(categories: dict[str, dict[str, float]], mean: dict[str, float]) -> str:
    head = "".join(f"<th>{t}</th>" for t in METRIC_TITLES.values())
    rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_pct(v.get(k))}</td>" for k in METRIC_TITLES)
                   + "</tr>" for name, v in categories.items())
    rows += '<tr class="mean"><td>mean</td>' + "".join(f"<td>{_pct(mean.get(k))}</td>" for k in METRIC_TITLES) + "</tr>"
    return f"<table><tr><th>category</th>{head}</tr>{rows}</table>"


def thresholds_table_html(calibration: Calibration) -> str:
    rows = []
    for name, c in calibration.categories.items():
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_num(c.get('image_threshold'))}</td>"
                    f"<td>{_pct(c.get('image_f1'))}</td><td>{_num(c.get('pixel_threshold'))}</td>"
                    f"<td>{_pct(c.get('pixel_f1'))}</td>"
                    f"<td>{_num(c.get('score_min'))} – {_num(c.get('score_max'))}</td>"
                    f"<td>{c.get('images')}</td></tr>")
    rng = calibration.score_range
    rows.append(f'<tr class="mean"><td>all (stored, used by predict)</td><td>{_num(calibration.image_threshold)}</td>'
                f"<td>{_pct(calibration.image_f1)}</td><td>{_num(calibration.pixel_threshold)}</td>"
                f"<td>{_pct(calibration.pixel_f1)}</td><td>{_num(rng.get('min'))} – {_num(rng.get('max'))}</td>"
                f"<td>{calibration.source.get('images', '')}</td></tr>")
    return ("<table><tr><th>category</th><th>image threshold</th><th>I-F1 at it, %</th><th>pixel threshold</th>"
            "<th>P-F1 at it, %</th><th>image scores (min – max)</th><th>images</th></tr>"
            + "".join(rows) + "</table>")


def _sample_table(figures: list[SampleFigures]) -> str:
    if not figures:
        return "<p>No test images to show.</p>"
    cells = []
    for f in figures:
        truth = "anomalous" if f.label else "normal"
        verdict = ""
        if f.predicted is not None:
            right = f.predicted == f.label
            verdict = (f' → predicted <span class="{"ok" if right else "bad"}">'
                       f'{"anomalous" if f.predicted else "normal"}</span>')
        attention = "".join(f"<figure>{_img(a, f'INP {m + 1} attention')}<figcaption>INP {m + 1}</figcaption></figure>"
                            for m, a in enumerate(f.attention))
        cells.append(
            f"<tr><td>{_img(f.input, 'input + ground truth')}<div>{html.escape(Path(f.path).parent.name)}/"
            f"{html.escape(Path(f.path).name)}<br>{truth}{verdict}</div></td>"
            f"<td>{_img(f.anomaly, 'anomaly map')}<div>score {_num(f.score)}</div></td>"
            f"<td>{_img(f.distance, 'distance to nearest INP')}</td>"
            f'<td><div class="attn">{attention}</div></td></tr>')
    return ('<table class="samples"><tr><th>input + ground truth (green)</th><th>anomaly map (Fig. 3)</th>'
            "<th>distance to nearest INP (Fig. 4/8)</th><th>INP attention maps (Fig. 7)</th></tr>"
            + "".join(cells) + "</table>")


def meta_text(key: str, value: Any) -> str:
    """A metadata value as a person reads it: yes/no, lists and small dicts inline, the pixel-metrics
    block as one sentence."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "pixel_metrics" and isinstance(value, dict):
        binned = value.get("binned_categories") or {}
        if not binned:
            return f"exact (every category within {value.get('exact_pixel_limit'):,} pixels)"
        worst = ", ".join(f"{k} ±{100 * v:.2g} points" for k, v in (value.get("max_error_bounds") or {}).items())
        return f"binned for {', '.join(binned)} ({value.get('bins'):,} bins; at most {worst})"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {meta_text(str(k), v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(meta_text(key, v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def training_log(result: Any) -> tuple[Path | None, list[dict[str, float]]]:
    """The ``train_log.csv`` of the run directory of the evaluated checkpoint (``result.meta``'s
    ``checkpoint``) and its rows; (None, []) when there is none (e.g. the authors' model.pth)."""
    from inp_former.train import TRAIN_LOG, read_train_log

    checkpoint = (getattr(result, "meta", {}) or {}).get("checkpoint")
    path = Path(checkpoint).parent / TRAIN_LOG if checkpoint else None
    rows = read_train_log(path) if path is not None else []
    return (path, rows) if rows else (None, [])


def loss_curve_html(path: Path, rows: list[dict[str, float]]) -> str:
    """The report's training section: the loss against the iteration, and where it came from."""
    from inp_former.visualize import loss_curve_svg

    last = rows[-1]
    return ("<h2>Training loss</h2>"
            + loss_curve_svg([r["iteration"] for r in rows], [r["loss"] for r in rows], "training loss")
            + f"<p>From {html.escape(str(path))}: {len(rows)} steps up to iteration {last['iteration']:.0f}, "
              f"{last['seconds']:.0f} s of training; last loss {_num(last['loss'])}.</p>")


def build_report_html(result: Any, calibration: Calibration | None, calibrator: Calibrator | None,
                      figures: list[SampleFigures], title: str = "INP-Former evaluation report",
                      info: dict[str, Any] | None = None) -> str:
    """The HTML text. ``result``: an :class:`inp_former.evaluate.EvalResult`."""
    from inp_former.visualize import colour_bar, density_svg, png_data_uri

    meta = {**(getattr(result, "meta", {}) or {}), **(info or {})}
    meta.pop("calibration", None)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    rows = "".join(f"<tr><td>{html.escape(str(k).replace('_', ' '))}</td><td>{html.escape(meta_text(k, v))}</td></tr>"
                   for k, v in meta.items() if v not in (None, ""))
    parts.append(f'<table class="meta"><tr><td>written</td><td>{when}</td></tr>{rows}</table>')
    if meta.get("random_encoder"):
        parts.append('<p class="note">The encoder has random weights: these numbers and pictures do not measure '
                     "INP-Former.</p>")
    parts.append("<h2>Metrics per category (%)</h2>" + metrics_table_html(result.categories, result.mean))
    log_path, log_rows = training_log(result)
    if log_rows:
        parts.append(loss_curve_html(log_path, log_rows))
    scales = figures[0].scales if figures else None
    if calibration is not None:
        parts.append("<h2>Decision thresholds (F1-maximising; in thresholds.json)</h2>"
                     + thresholds_table_html(calibration)
                     + "<p>An image is labelled anomalous when its score ≥ the image threshold; a pixel when its map "
                       "value ≥ the pixel threshold (white contours in the anomaly maps).</p>")
    if scales:
        lo, hi = scales["map_range"]
        bar = f'<img class="bar" src="{png_data_uri(colour_bar((lo, hi)))}" width="256" height="12" alt="colour scale">'
        dlo, dhi = scales["distance_range"]
        parts.append(f"<p>Colour scale of every anomaly map: {_num(lo)} {bar} {_num(hi)} (fixed across images: "
                     f"median of normal test pixels to the 99.9th percentile of all test pixels). Distance maps: "
                     f"{_num(dlo)} – {_num(dhi)} (fixed across the sampled images). Each INP attention map is scaled "
                     "by its own maximum.</p>")
    if calibrator is not None and calibrator.histograms:
        pooled = calibrator.pooled_histogram()
        threshold = calibration.pixel_threshold if calibration is not None else None
        parts.append("<h2>Anomaly scores of normal vs anomalous pixels (Fig. 5)</h2>"
                     + density_svg(pooled.density(), "all categories", threshold))
    by_category: dict[str, list[SampleFigures]] = {}
    for f in figures:
        by_category.setdefault(f.category, []).append(f)
    for category in result.categories:
        parts.append(f"<h2>{html.escape(category)}</h2>")
        if calibrator is not None and category in calibrator.histograms:
            cat_threshold = None
            if calibration is not None:
                cat_threshold = calibration.categories.get(category, {}).get("pixel_threshold")
            parts.append(density_svg(calibrator.histograms[category].density(),
                                     f"{category}: pixel score densities", cat_threshold))
        parts.append(_sample_table(by_category.get(category, [])))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, model: INPFormer, cfg: RunConfig, result: Any, calibration: Calibration | None,
                 calibrator: Calibrator | None, device: torch.device | str = "cpu", map_mode: str = "decoder",
                 precision: str = "fp32", samples_per_category: int = 3, info: dict[str, Any] | None = None,
                 on_sample: Callable[[], None] | None = None) -> Path:
    """Choose the samples, draw them and write the report atomically; returns ``path``."""
    from inp_former.io import atomic_write_text

    chosen = []
    for category in result.categories:
        chosen += choose_samples([r for r in result.rows if r["category"] == category], samples_per_category)
    figures = render_samples(model, cfg, chosen, calibration, device, map_mode, precision, on_sample=on_sample)
    text = build_report_html(result, calibration, calibrator, figures, info=info)
    atomic_write_text(Path(path), text)
    return Path(path)
