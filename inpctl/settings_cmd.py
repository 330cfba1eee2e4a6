"""CLI glue for the paper's settings: flags -> DataConfig, and the single-class runs.

Single-class trains one model per category with the same loop (``inp_former.train.train``), into
``RUN_DIR/<category>/`` (checkpoint.pt, config.json, metrics.json), then writes one combined
``RUN_DIR/metrics.json`` + ``scores.csv`` and prints one table.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from inpctl.console import console, metrics_table, progress_bar


def _fail(message: str) -> None:
    from inpctl.cli import fail

    fail(message)


def apply_setting(cfg, setting: Optional[str], shots: int, sources: list[str]) -> None:
    """Fill ``cfg.data`` from --setting/--shots/--source (the setting is inferred when not given)."""
    from inp_former.settings import check_setting, parse_source, set_sources

    try:
        if sources:
            set_sources(cfg.data, [parse_source(text) for text in sources])
        if setting is None:
            setting = "few-shot" if shots else "super-multi-class" if sources else "multi-class"
        cfg.data.setting = setting
        cfg.data.shots = shots
        check_setting(cfg.data)
    except ValueError as exc:
        _fail(str(exc))


def _evaluate_one(model, cfg, category: str, device, batch_size: int, precision: str, map_mode: str,
                  ckpt: Optional[Path], out_dir: Optional[Path]):
    """Evaluate one category's model; stores its thresholds in ``ckpt``; returns the EvalResult."""
    from inp_former.evaluate import evaluate
    from inp_former.thresholds import Calibrator
    from inpctl.predict_cmd import store_thresholds

    calibrator = Calibrator(map_mode)
    result = evaluate(model, cfg, [category], device, batch_size, precision, map_mode, on_category=calibrator.update)
    result.meta.update({"encoder": cfg.model.encoder, "encoder_source": model.encoder.weights_source,
                        "random_encoder": cfg.model.encoder_weights == "random", "setting": "single-class",
                        "checkpoint": str(ckpt) if ckpt else None})
    store_thresholds(calibrator, result, ckpt)
    if out_dir is not None:
        result.write(out_dir)
    return result


def _write_combined(results: dict, out_dir: Path, meta: dict, title: str, random_encoder: bool) -> None:
    from inp_former.evaluate import EvalResult
    from inp_former.metrics import mean_metrics

    per_category = {c: r.categories[c] for c, r in results.items()}
    rows = [row for r in results.values() for row in r.rows]
    combined = EvalResult(per_category, mean_metrics(per_category), rows, meta)
    combined.write(out_dir)
    console.print(metrics_table(combined.categories, combined.mean, title=title))
    if random_encoder:
        console.print("[yellow]Note: the encoder has random weights, so these numbers do not measure INP-Former.")
    console.print(f"Wrote {out_dir / 'metrics.json'} and {out_dir / 'scores.csv'}")


def train_single_class(cfg, run_dir: Path, device_flag: str, do_eval: bool, eval_batch_size: int,
                       overwrite: bool) -> None:
    """One model per category, trained and evaluated one after the other; one table at the end."""
    from inp_former.model import INPFormer
    from inp_former.settings import category_dirname, single_class_configs
    from inp_former.train import resolve_categories, seed_everything
    from inp_former.train import train as train_model
    from inpctl.cli import pick_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _fail("--setting single-class: not supported under torchrun; run it as one process per GPU "
              "with --categories instead")
    device = pick_device(device_flag)
    categories = resolve_categories(cfg)
    cfg.data.categories = categories
    jobs = [(category, one, run_dir / category_dirname(category)) for category, one in single_class_configs(cfg, categories)]
    if not overwrite:
        for _, _, sub in jobs:
            if any((sub / name).exists() for name in ("checkpoint.pt", "last.pt")):
                _fail(f"--out {run_dir}: {sub} already holds a run; choose another --out or pass --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_json(run_dir / "config.json")
    encoder = None
    results = {}
    for number, (category, one, sub) in enumerate(jobs, start=1):
        seed_everything(one.train.seed)  # each category's model starts from the same initialisation rule
        model = INPFormer(one.model, encoder=encoder)
        encoder = model.encoder  # frozen: shared by every category's model
        if number == 1:
            console.print(f"Encoder: [bold]{one.model.encoder}[/] ({encoder.weights_source}); device {device}; "
                          f"single-class: {len(jobs)} models")
        with progress_bar("stats") as progress:
            task = progress.add_task(f"{category} ({number}/{len(jobs)})", total=None, stats="")

            def on_step(step) -> None:
                progress.update(task, completed=step.iteration, total=step.total,
                                stats=f"loss {step.loss:.4f}  lr {step.lr:.2e}")

            result = train_model(one, sub, device, on_step=on_step, model=model)
        console.print(f"{category}: trained {result.iterations} iterations in {result.seconds:.1f}s; "
                      f"checkpoint [bold]{result.checkpoint}[/]")
        if do_eval:
            results[category] = _evaluate_one(model, one, category, device, eval_batch_size, "fp32", "decoder",
                                              result.checkpoint, sub)
    if do_eval:
        meta = {"setting": "single-class", "map_mode": "decoder", "precision": "fp32", "device": str(device),
                "dataset": cfg.data.dataset, "data_root": str(cfg.data.root), "encoder": cfg.model.encoder,
                "random_encoder": cfg.model.encoder_weights == "random",
                "checkpoints": {c: str(run_dir / category_dirname(c) / "checkpoint.pt") for c in results}}
        _write_combined(results, run_dir, meta, "INP-Former single-class (decoder maps), %",
                        cfg.model.encoder_weights == "random")


def single_class_checkpoints(run_dir: Path) -> dict[str, Path]:
    """``{category: checkpoint}`` of a single-class run directory (from each checkpoint's config)."""
    from inp_former.checkpoint import read_checkpoint

    found = {}
    for path in sorted(run_dir.rglob("checkpoint.pt")):
        if path.parent == run_dir:
            continue
        payload = read_checkpoint(path)
        categories = payload["config"]["data"].get("categories") or []
        if len(categories) == 1:
            found[categories[0]] = path
    return found


def eval_single_class(run_dir: Path, data: Optional[Path], dataset: Optional[str], categories: list[str],
                      out: Optional[Path], batch_size: int, precision: str, map_mode: str,
                      encoder_weights: Optional[str], resize: Optional[int], crop: Optional[int],
                      device: torch.device) -> None:
    """``inpctl eval --ckpt RUN_DIR`` of a single-class run: each category with its own checkpoint."""
    from inp_former.checkpoint import load_checkpoint

    checkpoints = single_class_checkpoints(run_dir)
    if not checkpoints:
        _fail(f"--ckpt {run_dir}: a directory without per-category <category>/checkpoint.pt files "
              f"(expected a single-class run directory, or pass a checkpoint file)")
    if categories:
        unknown = [c for c in categories if c not in checkpoints]
        if unknown:
            _fail(f"--categories: {', '.join(unknown)} have no checkpoint in {run_dir} "
                  f"(available: {', '.join(checkpoints)})")
        checkpoints = {c: checkpoints[c] for c in categories}
    if data is not None and not data.is_dir():
        _fail(f"--data {data}: no such directory")
    results = {}
    random_encoder = False
    for category, path in checkpoints.items():
        model, cfg, _ = load_checkpoint(path, device, encoder_weights)
        cfg.model.resize, cfg.model.crop = resize or cfg.model.resize, crop or cfg.model.crop
        if data is not None:
            cfg.data.root, cfg.data.sources = str(data), []
            category = category.rsplit("/", 1)[-1] if "/" in category else category
        if dataset is not None:
            cfg.data.dataset = dataset
        random_encoder = random_encoder or cfg.model.encoder_weights == "random"
        results[category] = _evaluate_one(model, cfg, category, device, batch_size, precision, map_mode, path, None)
    meta = {"setting": "single-class", "map_mode": map_mode, "precision": precision, "device": str(device),
            "checkpoints": {c: str(p) for c, p in checkpoints.items()}}
    _write_combined(results, out or run_dir, meta, f"INP-Former single-class ({map_mode} maps), %", random_encoder)

