"""Detection quality on any dataset: INP-Former before and after training, and a nearest-neighbour baseline.

    from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from inp_former.benchmarks.quality import run_quality, format_table
    cfg = RunConfig(model=ModelConfig(encoder="efficientnet_lite0", resize=224, crop=224, token_stride=16),
                    train=TrainConfig(iters=200, batch_size=8, warmup_iters=20),
                    data=DataConfig(dataset="mvtec", root="/path/to/data", categories=["kolektor"]))
    result = run_quality(cfg, "cpu")          # JSON-serialisable dict
    print(format_table(result))

The dataset is whatever ``cfg.data`` names (layout, root, categories, several sources), as for
``inpctl train``. The three rows use the same frozen encoder, data, preprocessing and scoring
(upsampling, blur, top-1% image score), so they differ only in how a token's anomaly score is
obtained:

- ``untrained``: INP-Former with its initial weights (decoder maps, as evaluated after training);
- ``trained``: the same model after training;
- ``nearest-neighbour``: no training; a memory bank of the training images' patch tokens (the
  encoder's fused map, i.e. the mean of its layers, as the model's input) and, per test token,
  the cosine distance to its nearest bank token (PatchCore without coreset: a random subsample
  of the bank when it is large). One bank for all categories, like the one multi-class model.

Besides the metrics, the result holds the training loss curve's summary (:func:`loss_summary`:
first/last loss, loss at 25/50/75% of the run, and whether it was still falling, significantly,
over the last 20%)
and the training time, so that "is it trained long enough?" is answered by the same call.

:func:`provenance` and :func:`markdown_report` write the record of a run (``inpctl bench quality
--json/--md``). Used by ``inpctl bench quality``, ``bench/studies/quality/run_recipe.py`` and the
tests.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from inp_former.config import RunConfig
from inp_former.data import AnomalyDataset, image_transform, mask_transform, masks_for_metrics
from inp_former.data.transforms import load_rgb
from inp_former.evaluate import evaluate
from inp_former.inference import InferenceConfig
from inp_former.metrics import category_metrics, mean_metrics
from inp_former.model import INPFormer
from inp_former.settings import category_samples, resolve_input_size
from inp_former.tiling import TileLayout, tile_batches, to_uint8_tensor
from inp_former.train import StepInfo, resolve_categories, seed_everything, train
from inp_former.workflow import SILENT, Reporter
from kernels.scoring import top_k_count, upsample_token_map

BANK_LIMIT = 32768      # tokens kept in the nearest-neighbour bank (random subsample beyond)
QUERY_CHUNK = 4096      # test tokens per distance matrix (bounds memory)
REPORTED = ("i_auroc", "p_auroc")
METHODS = ("untrained", "trained", "nearest-neighbour")   # the rows, in report order
TAIL_FRACTION = 0.2     # loss_summary: "still falling" looks at the last 20% of the iterations
FALLING_THRESHOLD = 0.01  # ... and means a fitted drop of more than 1% of the tail's mean loss


@torch.no_grad()
def _fused_tokens(model: INPFormer, images: torch.Tensor) -> torch.Tensor:
    """The encoder's fused map (B, N, C): the mean of its layers, the INP-Former's input."""
    return torch.stack(model.encoder(images)).mean(0)


def nearest_neighbour_eval(model: INPFormer, cfg: RunConfig, categories: list[str], device: torch.device,
                           batch_size: int = 16, bank_limit: int = BANK_LIMIT, seed: int = 0,
                           on_batch: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Nearest-neighbour patch baseline on ``model.encoder``: metrics per category and their mean.

    The images are those of ``cfg.data`` (any layout, or several sources), read as evaluation reads them.
    ``on_batch(label, images done now, images in that pass)`` follows the progress, as in ``evaluate``:
    the bank's pass over the training images is labelled ``"<category> (bank)"``.
    """
    on_batch = on_batch or (lambda label, count, size: None)
    mc = cfg.model
    model.encoder.to(device).eval()
    if mc.tile is not None:
        return _nearest_neighbour_tiled(model, cfg, categories, device, batch_size, bank_limit, seed, on_batch)
    transform = image_transform(mc.resize_hw, mc.input_hw)
    bank_parts = []
    for category in categories:
        dataset = AnomalyDataset(category_samples(cfg.data, category, "train"), transform)
        for batch in DataLoader(dataset, batch_size=batch_size):
            tokens = _fused_tokens(model, batch["image"].to(device))
            bank_parts.append(F.normalize(tokens.flatten(0, 1).float(), dim=-1))
            on_batch(f"{category} (bank)", len(tokens), len(dataset))
    bank = _bank(bank_parts, bank_limit, seed)
    per_category = {}
    for category in categories:
        dataset = AnomalyDataset(category_samples(cfg.data, category, "test"), transform,
                                 mask_transform(mc.resize_hw, mc.input_hw))
        labels, scores, maps, masks = [], [], [], []
        for batch in DataLoader(dataset, batch_size=batch_size):
            images = batch["image"].to(device)
            tokens = F.normalize(_fused_tokens(model, images).float(), dim=-1)
            b, n, _ = tokens.shape
            flat = tokens.flatten(0, 1)
            nearest = torch.cat([(chunk @ bank.T).amax(1) for chunk in flat.split(QUERY_CHUNK)])
            distance = (1.0 - nearest).reshape(b, n)                       # cosine distance per token
            size = tuple(images.shape[-2:])
            image_maps = upsample_token_map(distance, image_size=size, out_size=mc.map_hw, kernel_size=mc.blur_kernel,
                                            sigma=mc.blur_sigma, grid=model.encoder.grid_size(size))
            k = top_k_count(image_maps[0].numel(), mc.top_fraction)
            scores.append(image_maps.flatten(1).topk(k, dim=1).values.mean(1).cpu())
            maps.append(image_maps.cpu())
            masks.append(masks_for_metrics(batch["mask"], mc.map_hw))
            labels.append(torch.as_tensor(batch["label"]))
            on_batch(category, len(images), len(dataset))
        per_category[category] = category_metrics(torch.cat(labels), torch.cat(scores),
                                                  torch.cat(masks), torch.cat(maps))
    return {"categories": per_category, "mean": mean_metrics(per_category), "bank_tokens": len(bank)}


def _bank(parts: list[torch.Tensor], limit: int, seed: int) -> torch.Tensor:
    bank = torch.cat(parts)
    if len(bank) > limit:  # a seeded random subsample keeps the cost bounded on CPUs
        keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:limit]
        bank = bank[keep.to(bank.device)]
    return bank


def _nearest_neighbour_tiled(model: INPFormer, cfg: RunConfig, categories: list[str], device: torch.device,
                             batch_size: int, bank_limit: int, seed: int,
                             on_batch: Callable[[str, int, int], None]) -> dict[str, Any]:
    """The baseline on the tokens of a tiled model: the bank holds the tokens of every tile of the
    training images, and test images are scored tile by tile and blended into full-resolution maps
    exactly as the tiled INP-Former is (:func:`inp_former.evaluate.evaluate` with this scorer)."""
    mc = cfg.model
    bank_parts = []
    for category in categories:
        samples = category_samples(cfg.data, category, "train")
        for sample in samples:
            image = to_uint8_tensor(load_rgb(sample.path))
            layout = TileLayout.of(*image.shape[-2:], mc.tile, mc.tile_overlap)
            for tiles, _ in tile_batches(image, layout, batch_size):
                tokens = _fused_tokens(model, tiles.to(device))
                bank_parts.append(F.normalize(tokens.flatten(0, 1).float(), dim=-1))
            on_batch(f"{category} (bank)", 1, len(samples))
    bank = _bank(bank_parts, bank_limit, seed)

    def score_tiles(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            tokens = F.normalize(_fused_tokens(model, tiles).float(), dim=-1)
            b, n, _ = tokens.shape
            nearest = torch.cat([(chunk @ bank.T).amax(1) for chunk in tokens.flatten(0, 1).split(QUERY_CHUNK)])
            size = tuple(tiles.shape[-2:])
            maps = upsample_token_map((1.0 - nearest).reshape(b, n), image_size=size, out_size=size,
                                      kernel_size=mc.blur_kernel, sigma=mc.blur_sigma,
                                      grid=model.encoder.grid_size(size))
        return maps, maps.flatten(1).amax(1)   # tile scores are unused: the image's comes from its blended map

    result = evaluate(model, cfg, categories, device, InferenceConfig(batch_size=batch_size), on_batch=on_batch,
                      scorer=score_tiles)
    return {"categories": result.categories, "mean": result.mean, "bank_tokens": len(bank)}


def loss_summary(losses: Sequence[float], tail_fraction: float = TAIL_FRACTION,
                 threshold: float = FALLING_THRESHOLD) -> dict[str, Any]:
    """What a training loss curve did, in a few numbers (all plain floats/ints/bools; JSON-ready).

    ``first``/``last``: the first and last recorded loss; ``at_25``/``at_50``/``at_75``: the loss at
    that fraction of the run (index ``round(q * (n - 1))``); ``min``; ``mean_first_10pct`` /
    ``mean_last_10pct``; ``tail_change``: the relative change of a least-squares line fitted to the
    last ``tail_fraction`` of the losses, from its start to its end (negative = falling), and
    ``tail_t`` its slope's t-statistic, or None where there is none: a tail of fewer than 3 losses
    (a line through 2 points leaves no noise to measure the slope against) or one exactly on a line;
    ``still_falling``: the fitted line dropped by more than ``threshold`` (1%) of the tail's mean
    AND the drop is significant (``tail_t < -2``; without a t, the drop alone decides): more
    iterations would probably still lower the loss. An empty curve gives ``steps = 0`` and NaN/None
    values.
    """
    values = [float(v) for v in losses]
    n = len(values)
    if n == 0:
        nan = math.nan
        return {"steps": 0, "first": nan, "last": nan, "at_25": nan, "at_50": nan, "at_75": nan, "min": nan,
                "mean_first_10pct": nan, "mean_last_10pct": nan, "tail_change": nan, "tail_t": nan,
                "still_falling": None}

    def at(q: float) -> float:
        return values[int(round(q * (n - 1)))]

    tenth = max(1, n // 10)
    tail = values[n - max(2, int(math.ceil(tail_fraction * n))):] if n >= 2 else values
    m = len(tail)
    change, t_stat = 0.0, None
    if m >= 2:
        xs = [i - (m - 1) / 2 for i in range(m)]
        sxx = sum(x * x for x in xs)
        mean = sum(tail) / m
        slope = sum(x * (y - mean) for x, y in zip(xs, tail)) / sxx
        change = slope * (m - 1) / abs(mean) if mean != 0 else 0.0
        if m > 2:
            residual = sum((y - mean - slope * x) ** 2 for x, y in zip(xs, tail)) / (m - 2)
            se = math.sqrt(residual / sxx)
            t_stat = slope / se if se > 0 else (0.0 if slope == 0 else None)
    return {"steps": n, "first": values[0], "last": values[-1], "at_25": at(0.25), "at_50": at(0.5),
            "at_75": at(0.75), "min": min(values), "mean_first_10pct": sum(values[:tenth]) / tenth,
            "mean_last_10pct": sum(values[-tenth:]) / tenth, "tail_change": float(change),
            "tail_t": None if t_stat is None else float(t_stat),
            "still_falling": bool(change < -threshold and (t_stat is None or t_stat < -2.0))}


def _plain(value: Any) -> Any:
    """A JSON-ready copy: tensors and numpy scalars become floats/lists, tuples lists, paths strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):   # numpy scalars
        return value.item()
    return value


def _with_categories(cfg: RunConfig, categories: list[str]) -> RunConfig:
    """A private copy of ``cfg`` naming its categories (never mutates ``cfg``, frozen or not)."""
    cfg = copy.deepcopy(cfg)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, categories=list(categories)))


def run_quality(cfg: RunConfig, device: torch.device | str = "cpu", *, run_dir: Path | None = None,
                on_step: Callable[[StepInfo], None] | None = None, batch_size: int = 16,
                reporter: Reporter = SILENT,
                methods: Sequence[str] = METHODS, encoder: torch.nn.Module | None = None,
                bank_limit: int = BANK_LIMIT) -> dict[str, Any]:
    """Untrained vs trained INP-Former vs a nearest-neighbour baseline on the data ``cfg.data`` names.

    ``cfg`` is never modified (a copy is used). ``methods`` picks the rows (any of :data:`METHODS`;
    ``trained`` trains ``cfg.train.iters`` iterations). ``encoder`` replaces the encoder ``cfg.model``
    would build (a :class:`inp_former.encoders.FrozenEncoder`, e.g. a wrapper for experiments);
    ``run_dir`` keeps the training run (config and checkpoint), else a temporary folder is used;
    ``batch_size`` is the evaluation batch (training uses ``cfg.train.batch_size``); ``reporter``
    shows the progress of each row (a front end's progress bars), ``on_step`` sees every training step.

    Returns a JSON-serialisable dict: ``rows`` {method: mean metrics over categories}, ``categories``
    {method: {category: metrics}}, ``loss`` (:func:`loss_summary` of the training losses; absent
    without ``trained``), ``losses`` (the per-iteration training losses), ``meta`` (encoder,
    data, sizes, ``train_seconds``, ``eval_seconds`` per row, ``final_loss``, ``bank_tokens``, ...)
    and ``config`` (the run config as trained, with the encoder's filled-in fields).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods {list(methods)}: expected some of {', '.join(METHODS)}")
    device = torch.device(device)
    cfg = _with_categories(cfg, resolve_categories(cfg))
    categories = list(cfg.data.categories)
    cfg, notes = resolve_input_size(cfg, categories)   # keep-aspect: every row sees the same input size
    for note in notes:
        reporter.message(note)
    seed_everything(cfg.train.seed)   # the model's initial weights are those train() would start from
    model = INPFormer(cfg.model, encoder=encoder).to(device)
    if isinstance(getattr(model, "cfg", None), type(cfg.model)):
        cfg = dataclasses.replace(cfg, model=model.cfg)   # completed with the encoder's choices (CNN stages...)
    rows: dict[str, dict[str, float]] = {}
    per_category: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    extra: dict[str, Any] = {}

    def record(name: str, started: float, result_categories: dict, mean: dict) -> None:
        rows[name] = dict(mean)
        per_category[name] = result_categories
        seconds[name] = round(time.perf_counter() - started, 2)

    if "untrained" in methods:
        started = time.perf_counter()
        with reporter.evaluating("untrained") as on_batch:
            before = evaluate(model, cfg, categories, device, InferenceConfig(batch_size=batch_size), on_batch=on_batch)
        record("untrained", started, before.categories, before.mean)

    if "nearest-neighbour" in methods:
        started = time.perf_counter()
        with reporter.evaluating("nearest-neighbour") as on_batch:
            nn_result = nearest_neighbour_eval(model, cfg, categories, device, batch_size=batch_size,
                                               bank_limit=bank_limit, on_batch=on_batch)
        record("nearest-neighbour", started, nn_result["categories"], nn_result["mean"])
        extra["bank_tokens"] = nn_result["bank_tokens"]
        extra["nearest_neighbour_tiled"] = cfg.model.tile is not None   # records before it existed: square

    if "trained" in methods:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="inpctl-quality-") as scratch:
            target = Path(run_dir) if run_dir is not None else Path(scratch)
            # the very model of the "untrained" row (evaluation changed nothing in it)
            with reporter.training("trained") as shown:
                def step(info: StepInfo) -> None:
                    shown(info)
                    if on_step is not None:
                        on_step(info)

                result = train(cfg, target, device, on_step=step, model=model)
        extra["train_seconds"] = round(time.perf_counter() - started, 1)
        resolved = getattr(result, "config", None)   # the config as training resolved it (iterations, ...)
        if isinstance(resolved, RunConfig):
            cfg = resolved
        extra.update(iterations=result.iterations, final_loss=result.final_loss,
                     skipped_steps=result.skipped_steps)
        extra["losses"] = [float(v) for v in result.losses]
        started = time.perf_counter()
        with reporter.evaluating("trained (eval)") as on_batch:
            after = evaluate(model, cfg, categories, device, InferenceConfig(batch_size=batch_size), on_batch=on_batch)
        record("trained", started, after.categories, after.mean)
        extra["test_images"] = len(after.rows)

    losses = extra.pop("losses", None)
    out: dict[str, Any] = {
        "rows": {name: rows[name] for name in METHODS if name in rows},
        "categories": {name: per_category[name] for name in METHODS if name in per_category},
        "meta": {"encoder": cfg.model.encoder, "encoder_source": getattr(model.encoder, "weights_source", ""),
                 "encoder_design": getattr(model.encoder, "describe", lambda: cfg.model.encoder)(),
                 "dataset": cfg.data.dataset, "data_root": str(cfg.data.root), "categories": categories,
                 "batch_size": cfg.train.batch_size, "lr": cfg.train.lr, "resize": cfg.model.resize,
                 "crop": cfg.model.crop, "keep_aspect": cfg.model.keep_aspect,
                 "tile": cfg.model.tile, "tile_overlap": cfg.model.tile_overlap,
                 "input_size": list(cfg.model.input_hw), "token_stride": cfg.model.token_stride, "device": str(device),
                 "eval_seconds": seconds, **extra},
        "config": cfg.to_dict(),
    }
    if losses is not None:
        out["loss"] = loss_summary(losses)
        out["losses"] = losses
    return _plain(out)


def format_table(result: dict[str, Any], keys: tuple[str, ...] = REPORTED) -> str:
    """The rows as a Markdown table, metrics in %."""
    header = "| method | " + " | ".join(k.replace("_", "-").upper() for k in keys) + " |"
    lines = [header, "|" + "---|" * (len(keys) + 1)]
    for name, metrics in result["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * metrics[k]:.1f}" for k in keys) + " |")
    return "\n".join(lines)


def provenance(command: str, device: torch.device | str) -> dict[str, Any]:
    """Where, when and how a result was measured (JSON-ready): date, the command, the device, the
    machine, the software versions and torch's thread count."""
    import os
    import platform
    from datetime import datetime, timezone

    import timm

    device = str(device)
    return {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command, "device": device,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores" + (
                f"; GPU {torch.cuda.get_device_name(torch.device(device))}" if device.startswith("cuda") else ""),
            "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "torch_threads": torch.get_num_threads()}


def _input_words(meta: dict[str, Any]) -> str:
    """How images reach the model, in words: square, aspect kept, or tiled."""
    if meta.get("tile"):
        baseline = ("the nearest-neighbour baseline on the same tiles" if meta.get("nearest_neighbour_tiled")
                    else f"the nearest-neighbour row square: {meta['resize']} px, crop {meta['crop']}")
        return f"tiles of {meta['tile']} px at native resolution, overlap {meta.get('tile_overlap')} px ({baseline})"
    if meta.get("keep_aspect"):
        height, width = meta["input_size"]
        return f"aspect kept: shorter side {meta['resize']} px, input {height}x{width} (height x width), no crop"
    return f"square: resized to {meta['resize']} px, centre crop {meta['crop']}"


def markdown_report(result: dict[str, Any]) -> str:
    """A :func:`run_quality` result (with ``provenance`` when it has one) as a Markdown page: how it
    was measured, the mean over categories, every category, and the differences between the rows."""
    from inp_former.report import METRIC_TITLES

    keys = tuple(METRIC_TITLES)
    meta, prov, rows, loss = result["meta"], result.get("provenance") or {}, result["rows"], result.get("loss")
    device = prov.get("device", meta.get("device", "?"))
    lines = [f"# Detection quality on {', '.join(meta['categories'])} ({device})", ""]
    if prov:
        lines += [f"- Date: {prov['date_utc']}; machine: {prov['machine']}; device `{device}`",
                  f"- Software: Python {prov['python']}, torch {prov['torch']}, timm {prov['timm']}; "
                  f"{prov['torch_threads']} torch thread(s)",
                  f"- Command: `{prov['command']}`"]
    lines += [f"- Encoder: `{meta['encoder']}` ({meta['encoder_source']}); {meta['encoder_design']}",
              f"- Data: {meta['dataset']} layout, categories {', '.join(meta['categories'])} ({meta['data_root']}); "
              f"images {_input_words(meta)}"]
    if "trained" in rows:
        lines.append(f"- Training: {meta['iterations']} iterations, batch {meta['batch_size']}, "
                     f"{meta['train_seconds']} s; final loss {meta['final_loss']:.4f}" + (
                         f"; loss {loss['first']:.3f} at the start, {loss['at_50']:.3f} halfway; still falling over "
                         f"the last 20%: {'yes' if loss['still_falling'] else 'no'}" if loss else ""))
    if meta.get("test_images"):
        per_image = {name: 1000 * sec / meta["test_images"] for name, sec in meta["eval_seconds"].items()}
        lines.append(f"- Evaluation time per test image ({meta['test_images']} images, batch included): " + ", ".join(
            f"{name} {ms:.0f} ms" for name, ms in per_image.items()))
    if "bank_tokens" in meta:
        lines.append(f"- Nearest-neighbour bank: {meta['bank_tokens']} tokens (all training tokens up to "
                     f"{BANK_LIMIT})")
    lines += ["", "Mean over categories, %:", "", format_table(result, keys), "", "Per category, %:", "",
              "| method | category | " + " | ".join(METRIC_TITLES.values()) + " |", "|" + "---|" * (len(keys) + 2)]
    for name, per_category in result["categories"].items():
        for category, metrics in per_category.items():
            lines.append(f"| {name} | {category} | " + " | ".join(f"{100 * metrics[k]:.1f}" for k in keys) + " |")
    for other in ("untrained", "nearest-neighbour"):
        if "trained" in rows and other in rows:
            lines += ["", f"Trained minus {other} (points): " + ", ".join(
                f"{METRIC_TITLES[k]} {100 * (rows['trained'][k] - rows[other][k]):+.1f}" for k in keys)]
    return "\n".join(lines) + "\n"
