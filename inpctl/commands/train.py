"""``inpctl train``: flags -> RunConfig -> :func:`inp_former.workflow.train_run` -> tables."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from inpctl.helpers import (RichReporter, choices, console, default, err_console, fail, parse_categories, parse_stages,
                            print_evaluation, run)

if TYPE_CHECKING:
    from inp_former.config import RunConfig


def train_command(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root. Without it (and --source): the "
                                        "built-in demo."),
    dataset: Optional[str] = typer.Option(None, help="Layout of --data: mvtec, visa, realiad or folder "
                                          "(docs/datasets.md)." + default("data", "dataset")),
    setting: Optional[str] = typer.Option(None, metavar=choices("Setting"), help="Default: from --shots/--source, "
                                          "else multi-class (docs/datasets.md)."),
    shots: Optional[int] = typer.Option(None, min=1, help="Few-shot: normal images per category (paper: 1, 2, 4)."),
    source: Optional[list[str]] = typer.Option(None, "--source", help="Super-multi-class: DATASET=ROOT, repeated "
                                               "(or NAME:DATASET=ROOT); replaces --data/--dataset."),
    categories: Optional[str] = typer.Option(None, help="Comma-separated categories (default: all)."),
    encoder: Optional[str] = typer.Option(None, help="small|base|large (DINOv2-reg4 ViT/14), efficientnet_lite0 "
                                          "(offline) or timm:<cnn>." + default("model", "encoder")),
    encoder_weights: Optional[str] = typer.Option(None, help="pretrained, a weight file, or random."
                                                  + default("model", "encoder_weights")),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs (ignored with --iters)." + default("train", "epochs")),
    iters: Optional[int] = typer.Option(None, min=1, help="Total iterations; overrides --epochs. With --resume: "
                                        "extend the run to this total (docs/reliability.md)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per step." + default("train", "batch_size")),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Peak learning rate." + default("train", "lr")),
    final_lr: Optional[float] = typer.Option(None, min=0.0, help="Final learning rate." + default("train", "final_lr")),
    warmup_iters: Optional[int] = typer.Option(None, min=0, help="Warm-up iterations." + default("train", "warmup_iters")),
    weight_decay: Optional[float] = typer.Option(None, min=0.0, help="Weight decay." + default("train", "weight_decay")),
    eps: Optional[float] = typer.Option(None, min=0.0, help="StableAdamW epsilon (1e-6 cures rare NaNs)."
                                        + default("train", "eps")),
    grad_clip: Optional[float] = typer.Option(None, min=0.0, help="Gradient-norm clip." + default("train", "grad_clip")),
    coherence_weight: Optional[float] = typer.Option(None, min=0.0, help="INP coherence loss weight."
                                                     + default("train", "coherence_weight")),
    gamma: Optional[float] = typer.Option(None, min=0.0, help="Soft-mining exponent." + default("train", "mining_gamma")),
    num_prototypes: Optional[int] = typer.Option(None, min=1, help="INPs (M)." + default("model", "num_prototypes")),
    resize: Optional[int] = typer.Option(None, min=14, help="Resize images to this square..." + default("model", "resize")),
    crop: Optional[int] = typer.Option(None, min=14, help="...then centre-crop." + default("model", "crop")),
    keep_aspect: bool = typer.Option(False, "--keep-aspect", help="Keep the aspect ratio: the shorter side to "
                                     "--resize, the longer in proportion, no crop (tall or wide parts; "
                                     "docs/datasets.md)."),
    tile: Optional[int] = typer.Option(None, min=1, metavar="SIZE", help="High resolution: train and score "
                                       "SIZE x SIZE tiles at the images' own resolution, maps blended back to full "
                                       "resolution; no --resize/--crop (docs/datasets.md)."),
    tile_overlap: Optional[int] = typer.Option(None, min=0, metavar="PX", help="With --tile: pixels neighbouring "
                                               "tiles share at least [default: SIZE / 8]."),
    token_stride: Optional[int] = typer.Option(None, min=1, help="CNN encoders: pixels per token."),
    encoder_padding: Optional[int] = typer.Option(None, min=0, help="CNN encoders: mirror padding in pixels "
                                                  "[default: 32, rounded up to a multiple of the token stride]."),
    encoder_stages: Optional[str] = typer.Option(None, help="CNN encoders: feature levels as tokens, e.g. 3,4 "
                                                 "[default: strides 4-32]."),
    precision: Optional[str] = typer.Option(None, metavar=choices("Precision"), help="bf16: autocast."
                                            + default("train", "precision")),
    seed: Optional[int] = typer.Option(None, help="Seed (initialisation, data order)." + default("train", "seed")),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory [default: runs/<dataset>-<encoder>-<time>]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow --out to hold a run already."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Do not evaluate after training."),
    eval_batch_size: Optional[int] = typer.Option(None, min=1, help="Evaluation batch." + default("inference", "batch_size")),
    num_workers: Optional[int] = typer.Option(None, min=0, help="Data-loading processes [default: by device]."),
    on_nonfinite: Optional[str] = typer.Option(None, metavar=choices("OnNonfinite"), help="What a NaN/inf loss does."
                                               + default("train", "on_nonfinite")),
    checkpoint_every: Optional[int] = typer.Option(None, min=0, help="Write last.pt every N iterations; 0: never."
                                                   + default("train", "checkpoint_every")),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard events to "
                                     "RUN_DIR/tensorboard (needs: pip install tensorboard)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its "
                                          "last.pt, with its saved config; with --iters, extend it (also a "
                                          "finished run)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Train one model on all chosen categories, then evaluate it (without --data: a demo).

    Several GPUs: torchrun --nproc-per-node N -m inpctl train ... (--batch-size is global).
    """
    given = {name: value for name, value in locals().items() if value not in (None, False, [])}
    from inp_former.config import RunConfig, overlay
    from inp_former.evaluate import EvalConfig
    from inp_former.inference import InferenceConfig
    from inp_former.workflow import resume_run, train_run

    evaluation = None if no_eval else EvalConfig(overlay(InferenceConfig(), batch_size=eval_batch_size))
    reporter = RichReporter(rank_zero_only=True)
    if resume is not None:
        ignored = sorted(set(given) - {"resume", "device", "no_eval", "eval_batch_size", "iters"})
        if ignored:
            fail(f"--resume {resume}: the run continues with its saved config; these flags cannot change it: "
                 + ", ".join("--" + name.replace("_", "-") for name in ignored))
        from inp_former.workflow import CHECKPOINT_NAME, TRAINING_STATE, resume_point

        point = run(lambda: resume_point(resume))
        if point.finished and iters is None:
            fail(f"--resume {resume}: the run is complete ({CHECKPOINT_NAME} is written, no {TRAINING_STATE} left); "
                 f"evaluate it with inpctl eval --ckpt {resume / CHECKPOINT_NAME}, or train it longer with "
                 f"--resume {resume} --iters N (more than its {point.config.train.iters} iterations)")
        outcome = run(lambda: resume_run(resume, device, evaluation, reporter, iters=iters), on_interrupt=_interrupted)
        _show(outcome, reporter)
        return

    if data is not None and not data.is_dir():
        fail(f"--data {data}: no such directory")
    if data is not None and source:
        fail("--data and --source: give one dataset with --data, or several with --source (not both)")
    demo = data is None and not source
    if demo and dataset is not None:
        fail("--dataset: names the layout of --data; the demo has its own data (give --data too)")

    def build() -> RunConfig:
        if tensorboard:
            from inp_former.train import require_tensorboard

            require_tensorboard()   # refused before anything is printed or trained
        if demo:
            from inp_former.demo import demo_config

            base, notice = demo_config()
            notices.append(notice)
        else:
            base = RunConfig()
        return config_from_flags(
            base, data=data, dataset=dataset, categories=categories, setting=setting, shots=shots, source=source,
            encoder=encoder, encoder_stages=encoder_stages,
            model=dict(encoder_weights=encoder_weights, num_prototypes=num_prototypes, resize=resize, crop=crop,
                       keep_aspect=keep_aspect or None, token_stride=token_stride, encoder_padding=encoder_padding,
                       tile=tile, tile_overlap=tile_overlap),
            train=dict(iters=iters, epochs=epochs, batch_size=batch_size, lr=lr, final_lr=final_lr,
                       warmup_iters=warmup_iters, weight_decay=weight_decay, eps=eps, grad_clip=grad_clip,
                       coherence_weight=coherence_weight, mining_gamma=gamma, seed=seed, num_workers=num_workers,
                       on_nonfinite=on_nonfinite, precision=precision, checkpoint_every=checkpoint_every,
                       tensorboard=tensorboard or None))

    notices: list[str] = []   # the demo's notice, printed once every flag has been checked
    cfg = run(build)
    from inp_former.distributed import launched

    if out is None and launched():
        fail("--out: required under torchrun, so that every process writes to the same run directory")
    from inp_former.workflow import check_run_dir, default_output_dir

    run_dir = out or default_output_dir(f"runs/{'demo' if demo else cfg.data.dataset}-{cfg.model.encoder}")
    run(lambda: check_run_dir(run_dir, overwrite), flags={"run_dir": "--out"})   # refused before it is announced
    for notice in notices:
        console.print(notice, highlight=False)
    reporter.message(f"Run directory: {run_dir}")   # at the start: where to look while it trains
    outcome = run(lambda: train_run(cfg, run_dir, device, evaluation, overwrite=overwrite, reporter=reporter),
                  flags={"run_dir": "--out"}, on_interrupt=_interrupted)
    _show(outcome, reporter)


def config_from_flags(base: RunConfig, *, data: Optional[Path] = None, dataset: Optional[str] = None,
                      categories: Optional[str] = None, setting: Optional[str] = None, shots: Optional[int] = None,
                      source: Optional[list[str]] = None, encoder: Optional[str] = None,
                      encoder_stages: Optional[str] = None, model: Optional[dict] = None,
                      train: Optional[dict] = None) -> RunConfig:
    """The run config of a command's flags put over ``base`` (a ``RunConfig``), the one way
    ``inpctl train`` and ``inpctl bench quality`` build theirs; None (or an absent key) = not given.

    ``model``/``train``: ModelConfig/TrainConfig fields as flags give them; ``encoder_stages`` is the
    flag's text (``3,4``). Another ``encoder`` than the base's starts from that encoder's own design
    defaults, keeping only the (flag-given or base) resize, crop and keep_aspect. A given ``iters`` not above the
    warm-up, without ``warmup_iters``, shortens the warm-up to iters // 10, so that a short run still
    decays its learning rate. ``data`` (a directory), ``dataset``, ``categories`` (comma-separated),
    ``setting``, ``shots``, ``source`` (``DATASET=ROOT`` texts): the data flags, checked together.
    A ``crop`` given with ``keep_aspect`` is refused: a keep-aspect model crops nothing; so are
    ``resize``/``crop`` with ``tile``, whose tiles are cut at the images' own resolution.
    """
    from inp_former.config import ModelConfig, RunConfig, overlay
    from inp_former.errors import ConfigError
    from inp_former.settings import with_setting

    model_flags = {**(model or {}), "encoder_stages": parse_stages(encoder_stages)}
    if model_flags.get("keep_aspect") and model_flags.get("crop") is not None:
        raise ConfigError(f"crop {model_flags['crop']}: unused with keep_aspect, which crops nothing (the shorter "
                          "side is resized to resize, the longer follows); leave out crop", arg="crop",
                          others=("keep_aspect",))
    # a tile is checked against the encoder's token stride: set once the encoder is chosen
    tiling = {name: model_flags.pop(name, None) for name in ("tile", "tile_overlap")}
    sized = [name for name in ("resize", "crop") if model_flags.get(name) is not None]
    if tiling["tile"] is not None and sized:
        raise ConfigError(f"tile {tiling['tile']}: tiles are cut at the images' own resolution, so {sized[0]} is "
                          f"unused; leave out {' and '.join(sized)}", arg="tile", others=tuple(sized))
    train_flags = dict(train or {})
    model_cfg = overlay(base.model, **model_flags)
    if encoder is not None and encoder != base.model.encoder:  # another encoder: its own design defaults
        sizes = {k: getattr(model_cfg, k) for k in ("resize", "crop", "keep_aspect")}
        model_cfg = overlay(ModelConfig(**sizes), encoder=encoder,
                            **{k: v for k, v in model_flags.items() if k not in sizes})
    model_cfg = overlay(model_cfg, **tiling)
    train_cfg = overlay(base.train, **train_flags)
    iters = train_flags.get("iters")
    if iters is not None and train_flags.get("warmup_iters") is None and train_cfg.warmup_iters >= iters:
        train_cfg = overlay(train_cfg, warmup_iters=iters // 10)
    data_cfg = overlay(base.data, root=None if data is None else str(data), dataset=dataset,
                       categories=tuple(parse_categories(categories)) or None)
    data_cfg = with_setting(data_cfg, setting, shots or 0, source or None)
    return RunConfig(model=model_cfg, train=train_cfg, data=data_cfg)


def _interrupted(exc) -> None:
    """SIGINT/SIGTERM: the state is saved; say how to continue; exit 130 (SIGINT) or 143 (SIGTERM)."""
    run_dir = Path(exc.state_path).parent
    err_console.print(f"{exc}; continue with: inpctl train --resume {run_dir}", highlight=False, soft_wrap=True)
    raise typer.Exit(128 + int(exc.signal_number or signal.SIGINT))


def _show(outcome, reporter: RichReporter) -> None:
    if outcome is None or outcome.evaluation is None:
        return
    title = "single-class " if len(outcome.trained) > 1 else ""
    print_evaluation(outcome.evaluation, f"INP-Former {title}({outcome.evaluation.result.meta.get('map_mode', 'decoder')} "
                                         "maps), %")

