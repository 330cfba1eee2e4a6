"""The ``inpctl`` command line: parses flags, builds a config, calls the library, prints results.

No logic lives here that a Python user would also need: everything is in ``inp_former``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch
import typer

from inpctl.console import console, err_console, metrics_table, progress_bar

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="INP-Former for industrial anomaly detection: train one model for all your "
                       "categories, evaluate it with the paper's metrics, benchmark the kernels.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: paper Table 1, kernels, the whole model.")
app.add_typer(bench_app, name="bench")


def fail(message: str, code: int = 2) -> None:
    """A one-line error and a non-zero exit, never a traceback."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        fail(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA GPU is available here")
    return chosen


def default_run_dir(dataset: str, encoder: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset}-{encoder}-{stamp}"


def parse_categories(text: Optional[str]) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


# --- train -------------------------------------------------------------------------------------

@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root. Omit it (and --source) to run the "
                                        "built-in demo."),
    dataset: str = typer.Option("mvtec", help="Folder layout of --data: mvtec, visa (1cls folders or raw VisA with "
                                "split_csv/1cls.csv), realiad (realiad_1024 + realiad_jsons) or folder (your own "
                                "normal/, abnormal/, mask/ images)."),
    setting: Optional[str] = typer.Option(None, help="multi-class (one model for all categories), single-class (one "
                                          "model per category, RUN_DIR/<category>/checkpoint.pt), few-shot (implied "
                                          "by --shots) or super-multi-class (implied by --source). Default: inferred."),
    shots: int = typer.Option(0, min=0, help="Few-shot: normal images sampled per category with --seed (paper: 1, 2 "
                              "or 4), each expanded to 22 augmented images; one model for all categories."),
    source: Optional[list[str]] = typer.Option(None, "--source", help="Super-multi-class: a dataset as DATASET=ROOT "
                                               "(repeat it, e.g. --source mvtec=/d/mvtec --source visa=/d/visa/1cls), "
                                               "or NAME:DATASET=ROOT to choose the prefix; replaces --data/--dataset; "
                                               "categories become DATASET/CATEGORY (or NAME/CATEGORY)."),
    categories: Optional[str] = typer.Option(None, help="Comma-separated categories (default: all under --data)."),
    encoder: str = typer.Option("base", help="Frozen encoder: small, base or large DINOv2-reg4 ViT/14; "
                                 "efficientnet_lite0 (ImageNet weights shipped offline with inpctl); or any timm "
                                 "CNN as timm:<name>, e.g. timm:wide_resnet50_2 (README: Choosing the frozen encoder)."),
    encoder_weights: str = typer.Option("pretrained", help="'pretrained' (timm cache/download; offline "
                                        "package for efficientnet_lite0), a weight file (timm .safetensors/.pth, or "
                                        "Meta's dinov2_vit*14_reg4_pretrain.pth), or 'random'."),
    epochs: int = typer.Option(200, min=1, help="Epochs over the training images (ignored with --iters)."),
    iters: Optional[int] = typer.Option(None, min=1, help="Total iterations; overrides --epochs."),
    batch_size: int = typer.Option(16, min=1, help="Images per step."),
    lr: float = typer.Option(1e-3, min=0.0, help="Peak learning rate (after warm-up)."),
    final_lr: float = typer.Option(1e-4, min=0.0, help="Learning rate at the end of the cosine decay."),
    warmup_iters: int = typer.Option(100, min=0, help="Linear warm-up iterations from 0."),
    weight_decay: float = typer.Option(1e-4, min=0.0, help="Decoupled weight decay of StableAdamW."),
    eps: float = typer.Option(1e-10, min=0.0, help="StableAdamW epsilon (1e-6 cures rare NaN losses)."),
    grad_clip: float = typer.Option(0.1, min=0.0, help="Gradient-norm clipping."),
    coherence_weight: float = typer.Option(0.2, min=0.0, help="Weight of the INP coherence loss."),
    gamma: float = typer.Option(3.0, min=0.0, help="Soft-mining exponent."),
    num_prototypes: int = typer.Option(6, min=1, help="Number of INPs (M)."),
    resize: int = typer.Option(448, min=14, help="Images are resized to this square size ..."),
    crop: int = typer.Option(392, min=14, help="... then centre-cropped to this size (a multiple of the patch, 14)."),
    precision: str = typer.Option("fp32", help="fp32, or bf16 autocast (the fast path on GPUs)."),
    seed: int = typer.Option(1, help="Random seed (data order, initialisation)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<dataset>-<encoder>-<time>)."),
    overwrite: bool = typer.Option(False, help="Allow --out to be a directory that already holds a run."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip evaluation on the test split after training."),
    eval_batch_size: int = typer.Option(16, min=1, help="Images per evaluation batch."),
    num_workers: int = typer.Option(0, min=0, help="Data-loading worker processes."),
    on_nonfinite: str = typer.Option("stop", help="What a NaN/inf loss does: stop, or skip the step."),
    checkpoint_every: int = typer.Option(500, min=0, help="Write a resumable state (last.pt) every N iterations; 0 = never."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its last.pt "
                                          "(its saved config is used; other flags are ignored)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (under torchrun: the local GPU)."),
) -> None:
    """Train one INP-Former on all chosen categories, then evaluate it (a demo without --data).

    Multi-GPU: torchrun --nproc-per-node N -m inpctl train ... (the global --batch-size is split).
    """
    from inp_former.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    if resume is not None:
        run(lambda: _resume(resume, device, not no_eval, eval_batch_size))
        return

    for flag, value, allowed in (("--precision", precision, ("fp32", "bf16")),
                                 ("--on-nonfinite", on_nonfinite, ("stop", "skip"))):
        if value not in allowed:
            fail(f"{flag} {value!r}: expected one of {', '.join(allowed)}")
    if crop > resize:
        fail(f"--crop {crop}: must not exceed --resize {resize}")
    demo = data is None and not source
    if demo:
        from inp_former.demo import demo_config

        cfg, notice = demo_config(seed=seed)
        console.print(notice)
    else:
        if data is not None and not data.is_dir():
            fail(f"--data {data}: no such directory")
        if data is not None and source:
            fail("--data and --source: give one dataset with --data, or several with --source (not both)")
        cfg = RunConfig(
            model=ModelConfig(encoder=encoder, encoder_weights=encoder_weights, resize=resize, crop=crop,
                              num_prototypes=num_prototypes),
            train=TrainConfig(iters=iters, epochs=epochs, batch_size=batch_size, lr=lr, final_lr=final_lr,
                              warmup_iters=warmup_iters, weight_decay=weight_decay, eps=eps, grad_clip=grad_clip,
                              coherence_weight=coherence_weight, mining_gamma=gamma, seed=seed,
                              num_workers=num_workers, on_nonfinite=on_nonfinite, precision=precision,
                              checkpoint_every=checkpoint_every),
            data=DataConfig(dataset=dataset, root=str(data or ""), categories=parse_categories(categories)),
        )
        from inpctl.settings_cmd import apply_setting

        apply_setting(cfg, setting, shots, source or [])
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        fail("--out: required under torchrun, so that every process writes to the same run directory")
    run_dir = out or default_run_dir(cfg.data.dataset if not demo else "demo", cfg.model.encoder)
    if any((run_dir / name).exists() for name in ("checkpoint.pt", "last.pt")) and not overwrite:
        fail(f"--out {run_dir}: already holds a run; choose another --out, pass --overwrite, "
             f"or continue it with --resume {run_dir}")
    if cfg.data.setting == "single-class":
        from inpctl.settings_cmd import train_single_class

        run(lambda: train_single_class(cfg, run_dir, device, not no_eval, eval_batch_size, overwrite))
        return
    run(lambda: _train_and_eval(cfg, run_dir, device, not no_eval, eval_batch_size, demo))


def _resume(run_dir: Path, device: str, do_eval: bool, eval_batch_size: int) -> None:
    from inp_former.config import RunConfig
    from inp_former.train import TRAINING_STATE, load_training_state

    state_path = run_dir / TRAINING_STATE
    if not run_dir.is_dir():
        fail(f"--resume {run_dir}: no such run directory")
    if not state_path.is_file():
        if (run_dir / "checkpoint.pt").is_file():
            fail(f"--resume {run_dir}: the run is complete (checkpoint.pt is written, no {TRAINING_STATE} left); "
                 f"evaluate it with inpctl eval --ckpt {run_dir / 'checkpoint.pt'}")
        fail(f"--resume {run_dir}: no {TRAINING_STATE} there (nothing to resume; expected a run directory of "
             f"inpctl train with --checkpoint-every > 0)")
    state = load_training_state(state_path)
    try:
        cfg = RunConfig.from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as exc:
        fail(f"--resume {state_path}: its run config is not readable ({exc})")
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"Resuming {run_dir} at iteration {state['iteration']} of {cfg.train.iters}")
    del state
    _train_and_eval(cfg, run_dir, device, do_eval, eval_batch_size, demo=False, resume=True)


def _setup_distributed(device: str) -> tuple[torch.device, int]:
    """Under torchrun: join the process group; returns (this process's device, rank)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return pick_device(device), 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return (torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")), dist.get_rank()


def _train_and_eval(cfg, run_dir: Path, device_flag: str, do_eval: bool, eval_batch_size: int, demo: bool,
                    resume: bool = False) -> None:
    import torch.distributed as dist

    from inp_former.model import INPFormer
    from inp_former.settings import category_samples
    from inp_former.train import resolve_categories, seed_everything, train as train_model

    if do_eval:  # a category without test images fails now, not after hours of training
        for category in resolve_categories(cfg):
            category_samples(cfg.data, category, "test")
    device, rank = _setup_distributed(device_flag)
    try:
        seed_everything(cfg.train.seed)  # the decoder's initialisation follows --seed (bit-for-bit reruns)
        model = INPFormer(cfg.model)
        if rank == 0:
            console.print(f"Encoder: [bold]{cfg.model.encoder}[/] ({model.encoder.weights_source}); device {device}")
        with progress_bar("stats", disable=rank != 0) as progress:
            task = progress.add_task("train", total=None, stats="")

            def on_step(step) -> None:
                progress.update(task, completed=step.iteration, total=step.total,
                                stats=f"loss {step.loss:.4f}  lr {step.lr:.2e}")

            result = train_model(cfg, run_dir, device, on_step=on_step, model=model, resume=resume)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank != 0:
        return
    console.print(f"Trained {result.iterations} iterations in {result.seconds:.1f}s; "
                  f"checkpoint [bold]{result.checkpoint}[/]")
    if do_eval:
        _evaluate_and_report(model, cfg, cfg.data.categories, device, eval_batch_size, "fp32", "decoder", run_dir,
                             extra_meta={"checkpoint": str(result.checkpoint), "demo": demo}, ckpt=result.checkpoint)


def _evaluate_and_report(model, cfg, categories, device, batch_size, precision, map_mode, out_dir: Path,
                         extra_meta: dict | None = None, ckpt: Path | None = None, report: bool = False,
                         report_samples: int = 3, exact_pixels: int | None = None) -> None:
    from inp_former.evaluate import EXACT_PIXELS, bound_heap_growth, evaluate
    from inp_former.thresholds import Calibrator
    from inpctl.predict_cmd import store_thresholds, write_eval_report

    bound_heap_growth()  # memory stays flat however many test images stream through
    calibrator = Calibrator(map_mode)

    total_images = None
    with progress_bar("category") as progress:
        task = progress.add_task("eval", total=total_images, category="")
        seen: dict[str, int] = {}

        def on_batch(category: str, count: int, size: int) -> None:
            if category not in seen:
                seen[category] = 0
                progress.update(task, total=(progress.tasks[0].total or 0) + size)
            seen[category] += count
            progress.update(task, advance=count, category=category)

        result = evaluate(model, cfg, categories, device, batch_size, precision, map_mode, on_batch=on_batch,
                          on_category=calibrator.update,
                          exact_pixels=EXACT_PIXELS if exact_pixels is None else exact_pixels)
    # "random" is also the placeholder for weights embedded in the checkpoint (the authors' model.pth):
    # only an encoder still at its random initialisation counts as random
    random_encoder = (cfg.model.encoder_weights == "random"
                      and str(getattr(model.encoder, "weights_source", "random")).startswith("random"))
    result.meta.update({"encoder": cfg.model.encoder, "encoder_source": model.encoder.weights_source,
                        "random_encoder": random_encoder, **(extra_meta or {})})
    calibration = store_thresholds(calibrator, result, ckpt)  # F1-max thresholds -> metrics.json + checkpoint meta
    result.write(out_dir)
    console.print(metrics_table(result.categories, result.mean, title=f"INP-Former ({map_mode} maps), %"))
    if random_encoder:
        console.print("[yellow]Note: the encoder has random weights, so these numbers do not measure INP-Former.")
    _print_pixel_error_bounds(result.meta.get("pixel_metrics") or {})
    console.print(f"Wrote {out_dir / 'metrics.json'} and {out_dir / 'scores.csv'}")
    if report:
        write_eval_report(model, cfg, result, calibrator, calibration, device, precision, map_mode, out_dir,
                          report_samples)


def _print_pixel_error_bounds(info: dict) -> None:
    """One line saying which pixel metrics were binned and how far they can be from the exact ones."""
    binned = info.get("binned_categories") or {}
    if not binned:
        return
    names = {"p_auroc": "P-AUROC", "p_ap": "P-AP", "p_f1max": "P-F1max", "aupro": "AUPRO"}
    worst = info.get("max_error_bounds", {})
    bounds = ", ".join(f"{names[k]} ±{100 * v:.2g}" for k, v in worst.items() if k in names)
    console.print(f"Pixel metrics of {len(binned)} categor{'y' if len(binned) == 1 else 'ies'} "
                  f"({', '.join(binned)}) are binned ({info.get('bins')} bins, more than "
                  f"{info.get('exact_pixel_limit')} pixels): at most {bounds} points from the exact values "
                  f"(also in metrics.json meta.pixel_metrics)", highlight=False)


# --- eval --------------------------------------------------------------------------------------

@app.command("eval")
def eval_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint.pt written by inpctl train, a single-class run "
                              "directory (one checkpoint per category), or the authors' released model.pth."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root (default: the one the model trained on)."),
    dataset: Optional[str] = typer.Option(None, help="Folder layout of --data (default: the checkpoint's)."),
    categories: Optional[str] = typer.Option(None, help="Comma-separated categories (default: all under --data)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where metrics.json and scores.csv go (default: beside --ckpt)."),
    batch_size: int = typer.Option(16, min=1, help="Images per batch."),
    precision: str = typer.Option("fp32", help="fp32, or bf16 autocast."),
    map_mode: str = typer.Option("decoder", "--map", help="decoder (the method) or prototype (distance to the "
                                 "nearest INP: the zero-shot map)."),
    encoder_weights: Optional[str] = typer.Option(None, help="Where the frozen encoder's weights come from, if not "
                                                  "as at training time."),
    resize: Optional[int] = typer.Option(None, min=14, help="Preprocessing resize, if not the checkpoint's (the "
                                         "authors' model.pth holds none: 448 is assumed)."),
    crop: Optional[int] = typer.Option(None, min=14, help="Centre crop, if not the checkpoint's (model.pth: 392)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    report: bool = typer.Option(False, "--report", help="Also write report.html: metrics, thresholds and figures "
                                "(overlays, INP attention, distance maps, score densities) for sample images."),
    report_samples: int = typer.Option(3, min=0, help="Sample images per category in the --report."),
    exact_pixels: Optional[int] = typer.Option(None, min=0, help="Pixel metrics are exact for categories of up to "
                                               "this many pixels (default 16777216: 256 maps of 256x256); beyond, "
                                               "they stream through 2^20-bin histograms (flat memory) and the output "
                                               "states their error bound. 0: always binned."),
) -> None:
    """Evaluate a checkpoint: a table per category + mean, metrics.json and scores.csv (+ report.html).

    Also stores the F1-maximising image and pixel thresholds in the checkpoint, for inpctl predict.
    """
    if precision not in ("fp32", "bf16"):
        fail(f"--precision {precision!r}: expected fp32 or bf16")
    if map_mode not in ("decoder", "prototype"):
        fail(f"--map {map_mode!r}: expected decoder or prototype")

    def job() -> None:
        from inp_former.checkpoint import load_checkpoint
        from inp_former.train import resolve_categories

        chosen = pick_device(device)
        if ckpt.is_dir():  # a single-class run: each category with its own model
            from inpctl.settings_cmd import eval_single_class

            eval_single_class(ckpt, data, dataset, parse_categories(categories), out, batch_size, precision,
                              map_mode, encoder_weights, resize, crop, chosen)
            return
        model, cfg, loaded_meta = load_checkpoint(ckpt, chosen, encoder_weights)
        authors = "imported_from" in loaded_meta  # the authors' model.pth: never modified
        if resize is not None or crop is not None:
            cfg.model.resize, cfg.model.crop = resize or cfg.model.resize, crop or cfg.model.crop
            if cfg.model.crop > cfg.model.resize:
                fail(f"--crop {cfg.model.crop}: must not exceed --resize {cfg.model.resize}")
        if data is not None:
            if not data.is_dir():
                fail(f"--data {data}: no such directory")
            cfg.data.root = str(data)
            cfg.data.sources = []  # e.g. zero-shot: a super-multi-class model on another dataset
            cfg.data.categories = parse_categories(categories)
        elif categories:
            cfg.data.categories = parse_categories(categories)
        if dataset is not None:
            cfg.data.dataset = dataset
        if not cfg.data.root and not cfg.data.sources:
            fail(f"--ckpt {ckpt}: the checkpoint does not say which data it was trained on; pass --data")
        chosen_categories = resolve_categories(cfg)
        _evaluate_and_report(model, cfg, chosen_categories, chosen, batch_size, precision, map_mode,
                             out or ckpt.parent, extra_meta={"checkpoint": str(ckpt)}, ckpt=None if authors else ckpt,
                             report=report, report_samples=report_samples, exact_pixels=exact_pixels)
        if authors:
            console.print(f"Thresholds not stored in {ckpt} (the authors' file is never modified); they are in "
                          f"{(out or ckpt.parent) / 'metrics.json'} under meta.calibration", highlight=False)

    run(job)


from inpctl.export_cmd import register as _register_export  # noqa: E402
from inpctl.predict_cmd import register as _register_predict  # noqa: E402

_register_predict(app)
_register_export(app)


# --- bench -------------------------------------------------------------------------------------

def _dtype(name: str) -> torch.dtype:
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        fail(f"--dtype {name!r}: expected fp32, fp16 or bf16")
    return table[name]


def _write_json(path: Optional[Path], payload: dict) -> None:
    if path is not None:
        from inp_former.io import atomic_write_text

        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
        console.print(f"Wrote {path}")


@bench_app.command("attention")
def bench_attention(
    n: int = typer.Option(784, min=1, help="Tokens per image (N)."),
    m: int = typer.Option(6, min=1, max=32, help="INPs (M)."),
    c: int = typer.Option(768, min=1, help="Channels (C)."),
    heads: int = typer.Option(12, min=1, help="Heads (H); C must be divisible by H."),
    batch: int = typer.Option(16, min=1, help="Batch size for the timed rows."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16 for the timed rows."),
    repeats: int = typer.Option(20, min=1, help="Timed repetitions (median reported)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Paper Table 1 (operation counts, memory) and measured times of each attention."""
    if c % heads:
        fail(f"--c {c} is not divisible by --heads {heads}")

    def job() -> None:
        from inp_former.benchmarks.attention import run_attention_bench, table1_counts
        from inpctl.bench_views import print_attention

        counts = table1_counts(n, m, c)
        timed = run_attention_bench(n, m, c, heads, batch, _dtype(dtype), pick_device(device), repeats=repeats)
        print_attention(counts, timed)
        _write_json(json_path, {"table1": counts, "timed": timed})

    run(job)


@bench_app.command("scoring")
def bench_scoring(
    batch: int = typer.Option(16, min=1, help="Images per batch."),
    grid: int = typer.Option(28, min=1, help="Tokens per side."),
    channels: int = typer.Option(768, min=1, help="Feature channels."),
    image_size: int = typer.Option(392, min=1, help="Crop size the maps are upsampled to."),
    out_size: int = typer.Option(256, min=1, help="Anomaly-map size."),
    dtype: str = typer.Option("fp32", help="Feature dtype: fp32, fp16 or bf16."),
    repeats: int = typer.Option(20, min=1, help="Timed repetitions (median reported)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Fused regional-cosine scoring against the reference path."""
    def job() -> None:
        from inp_former.benchmarks.scoring import run_scoring_bench
        from inpctl.bench_views import print_rows

        result = run_scoring_bench(batch, grid, channels, image_size, out_size, _dtype(dtype), pick_device(device),
                                   repeats=repeats)
        print_rows("Scoring: maps + image scores", result)
        _write_json(json_path, result)

    run(job)


@bench_app.command("model")
def bench_model(
    encoder: str = typer.Option("base", help="Encoder (random weights: speed does not depend on them)."),
    batch: list[int] = typer.Option([1, 16, 64], help="Inference batch sizes (repeat the flag)."),
    train_batch: int = typer.Option(16, min=1, help="Training batch size."),
    crop: int = typer.Option(392, min=14, help="Image size."),
    repeats: int = typer.Option(10, min=1, help="Timed repetitions (median reported)."),
    compile_model: bool = typer.Option(False, "--compile", help="Also time torch.compile of the fast path."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """End to end: inference images/s and training step time, reference fp32 vs fused bf16."""
    def job() -> None:
        from inp_former.benchmarks.model import run_model_bench
        from inpctl.bench_views import print_rows

        result = run_model_bench(encoder, batch, train_batch, crop, pick_device(device), repeats=repeats,
                                 compile_model=compile_model)
        print_rows(f"Model ({encoder}, {crop} px)", result)
        _write_json(json_path, result)

    run(job)


@bench_app.command("quality")
def bench_quality(
    iters: Optional[int] = typer.Option(None, min=1, help="Training iterations (default: the demo's)."),
    seed: int = typer.Option(1, help="Seed of the model's initialisation and training."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Demo data: INP-Former untrained vs trained vs a nearest-neighbour patch baseline (same encoder)."""
    def job() -> None:
        from inp_former.benchmarks.quality import run_quality
        from inp_former.demo import demo_config
        from inpctl.console import METRIC_TITLES, percent, rows_table

        cfg, notice = demo_config(seed=seed)
        if iters is not None:
            cfg.train.iters, cfg.train.warmup_iters = iters, min(cfg.train.warmup_iters, iters // 10)
        console.print(notice)
        result = run_quality(cfg, pick_device(device))
        console.print(rows_table(f"Mean over categories, % ({cfg.model.encoder})", ["method", *METRIC_TITLES.values()],
                                 ([name, *(percent(m[k]) for k in METRIC_TITLES)] for name, m in result["rows"].items())))
        _write_json(json_path, result)

    run(job)


# --- entry point -------------------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    """The first line of an error's message; for an error re-raised by a DataLoader worker (whose
    message is the worker's whole traceback), the original error's own message."""
    text = str(exc)
    if "Original Traceback" in text:
        marker = f"{exc.__class__.__name__}: "
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    lines = text.strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


def run(job) -> None:
    """Run a command body, turning the library's expected errors into one-line messages."""
    from inp_former.checkpoint import CheckpointError
    from inp_former.data import DatasetError
    from inp_former.encoders import EncoderWeightsError
    from inp_former.train import TrainingError

    try:
        job()
    except (DatasetError, CheckpointError, EncoderWeightsError, TrainingError, ValueError, OSError) as exc:
        fail(_one_line(exc))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except torch.cuda.OutOfMemoryError:
        fail("the GPU ran out of memory: lower --batch-size (or --eval-batch-size)")
    except typer.Exit:
        raise
    except Exception as exc:  # a bug, not bad input: one line here, the traceback in a file to report
        log = _write_traceback()
        fail(f"internal error ({exc.__class__.__name__}: {_one_line(exc)}); please report it with the "
             f"traceback in {log}", code=1)


def _write_traceback() -> Path:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="inpctl-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exc(file=f)
    return Path(path)


def main() -> None:
    app(prog_name="inpctl")


if __name__ == "__main__":
    sys.exit(main())
