"""The jobs ``inpctl`` runs, as library functions: train a run, evaluate and calibrate, predict, export.

Each takes a validated config (frozen dataclasses from :mod:`inp_former.config`) or plain
arguments, does the whole job, and returns what it produced; a front end only builds the config,
calls one of these and shows the result. Progress and notices go to a :class:`Reporter` (silent by
default); errors are the typed errors of :mod:`inp_former.errors`.

>>> from inp_former.config import RunConfig, DataConfig
>>> from inp_former.workflow import train_run, evaluate_checkpoint        # doctest: +SKIP
>>> run = train_run(RunConfig(data=DataConfig(root="/data/mvtec")), "runs/mvtec")   # doctest: +SKIP
>>> run.evaluation.result.mean["i_auroc"]                                  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from inp_former import distributed
from inp_former.checkpoint import CHECKPOINT_NAME, load_checkpoint, read_checkpoint
from inp_former.config import MapMode, RunConfig, Setting, resolve_device
from inp_former.errors import CheckpointError, ConfigError, DatasetError, render_names
from inp_former.evaluate import EvalConfig, EvalResult, evaluate, heap_growth_bounded
from inp_former.inference import InferenceConfig
from inp_former.io import atomic_write_text
from inp_former.metrics import mean_metrics
from inp_former.model import INPFormer
from inp_former.serve.config import MAX_MEGAPIXELS
from inp_former.settings import category_dirname, category_samples, single_class_configs
from inp_former.thresholds import Calibration, Calibrator, read_calibration, store_calibration
from inp_former.train import (TRAINING_STATE, StepInfo, TrainResult, load_training_state, resolve_categories,
                              seed_everything, train)

THRESHOLDS_FILE = "thresholds.json"


# --- progress and notices ---------------------------------------------------------------------

class Notice(str):
    """A notice that names arguments (``names``, as words of the text), like an error's ``others``:
    a Python caller reads it as it is; a front end spells those names its own way with
    :meth:`render` (the command line: as the flags a user types, ``save_thresholds`` as
    ``inpctl eval --save-thresholds``). A warning starts with ``warning: ``."""

    names: tuple[str, ...] = ()

    def __new__(cls, text: str, names: tuple[str, ...] = ()) -> "Notice":
        notice = super().__new__(cls, text)
        notice.names = tuple(names)
        return notice

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        return render_names(str(self), self.names, flags)


class Reporter:
    """Where a job's progress and notices go. This base class is silent; a front end overrides
    what it shows (the command line draws progress bars and prints the notices)."""

    def message(self, text: str) -> None:
        """A notice for a person (which encoder, what was written, ...); a :class:`Notice` when it
        names arguments."""

    @contextlib.contextmanager
    def training(self, label: str) -> Iterator[Callable[[StepInfo], None]]:
        """A training of ``label`` runs inside; the yielded callback sees every step."""
        yield lambda step: None

    @contextlib.contextmanager
    def evaluating(self, label: str) -> Iterator[Callable[[str, int, int], None]]:
        """An evaluation runs inside; the callback sees (category, images done now, category size)."""
        yield lambda category, count, size: None

    @contextlib.contextmanager
    def counting(self, label: str, total: int) -> Iterator[Callable[[int, int, str], None]]:
        """A job of ``total`` items; the callback sees (done, total, current item's name)."""
        yield lambda done, total, name: None


SILENT = Reporter()


# --- results ----------------------------------------------------------------------------------

@dataclass
class Evaluation:
    """One evaluation: the metrics, the calibrated thresholds and the files written."""
    result: EvalResult
    calibration: Calibration
    out_dir: Path | None
    stored_in: Path | None = None                   # the checkpoint the thresholds were merged into
    stored_changes: list[str] = field(default_factory=list)
    report: Path | None = None

    @property
    def random_encoder(self) -> bool:
        return bool(self.result.meta.get("random_encoder"))


@dataclass
class RunOutcome:
    """A training run: one trained model (several with the single-class setting) and its evaluation."""
    run_dir: Path
    config: RunConfig
    trained: dict[str, TrainResult]              # one entry ("" for the whole run), or one per category
    evaluation: Evaluation | None


# --- evaluation -------------------------------------------------------------------------------

def evaluate_and_calibrate(model: INPFormer, cfg: RunConfig, device: torch.device | str = "cpu",
                           evaluation: EvalConfig = EvalConfig(), out_dir: Path | None = None,
                           categories: list[str] | None = None, meta: dict[str, Any] | None = None,
                           store_in: Path | None = None, report_samples: int | None = None,
                           reporter: Reporter = SILENT) -> Evaluation:
    """Evaluate ``model`` on the test split of ``categories`` (default: the config's), compute the
    F1-max thresholds, and write ``metrics.json``, ``scores.csv`` and ``thresholds.json`` into
    ``out_dir`` (if given), plus ``report.html`` when ``report_samples`` is set.

    The thresholds are merged into the checkpoint ``store_in`` only if it is given (training does
    so; an evaluation only when asked): evaluating never changes what a later prediction does.

    In a process group of several processes (``torchrun``) every process calls it: they score
    shares of the test images (:func:`inp_former.evaluate.evaluate`), rank 0 alone calibrates,
    writes and stores, and every process returns the same :class:`Evaluation`.
    """
    from inp_former.fast_path import scoring_function

    if report_samples is not None and cfg.model.tile is not None:   # refused before the evaluation runs
        raise ConfigError("report: its sample figures show resized crops; a tiled model's maps are full resolution "
                          "(see its overlays with inpctl predict)", arg="report")
    device = torch.device(device)
    categories = list(categories or resolve_categories(cfg))
    inference = evaluation.inference
    calibrator = Calibrator(str(inference.map_mode))
    scorer = scoring_function(model, cfg, inference, device)
    # memory stays flat however many test images stream through
    with heap_growth_bounded(), reporter.evaluating("eval") as on_batch:
        result = evaluate(model, cfg, categories, device, inference, on_batch=on_batch,
                          num_workers=evaluation.num_workers, on_category=calibrator.update,
                          exact_pixels=evaluation.exact_pixels, scorer=scorer)
    if result.meta.get("stretched_images") and distributed.is_writer():
        from inp_former.data.geometry import stretch_warning

        reporter.message(stretch_warning(*result.meta["stretched_images"], "test", cfg.model.input_hw))
    result.meta.update({"encoder": cfg.model.encoder, "encoder_source": model.encoder.weights_source,
                        "random_encoder": model.encoder.is_random, "fast_path": getattr(scorer, "mode", "eager"),
                        "precision_reason": inference.precision_reason(device),
                        # torch or openvino, and why (inference.choose_runtime, as the scorer resolved it)
                        "runtime": scorer.runtime, "runtime_reason": scorer.runtime_reason,
                        "scope": evaluation_scope(cfg, categories, inference, device), **(meta or {})})

    def finish() -> Evaluation:  # on rank 0 alone under torchrun: its calibrator saw every category
        calibration = calibrator.result({"dataset": result.meta.get("dataset"),
                                         "data_root": result.meta.get("data_root"),
                                         "precision": result.meta.get("precision"),
                                         "runtime": result.meta.get("runtime")})
        result.meta["calibration"] = calibration.to_dict()
        outcome = Evaluation(result, calibration, out_dir)
        if out_dir is not None:
            write_evaluation(outcome)
        if store_in is not None:
            outcome.stored_in, outcome.stored_changes = store_in, store_calibration(store_in, calibration)
        if report_samples is not None and out_dir is not None:
            outcome.report = _write_report(model, cfg, outcome, calibrator, device, evaluation, report_samples,
                                           reporter)
        return outcome

    return distributed.on_writer(finish)


def evaluation_scope(cfg: RunConfig, categories: list[str], inference: InferenceConfig,
                     device: torch.device) -> dict[str, Any]:
    """What an evaluation covers and how it scored: two evaluations of different scopes are
    different results, and one must not silently replace the other (:func:`check_evaluation_target`)."""
    return {"categories": sorted(categories), "dataset": cfg.data.dataset, "data_root": str(cfg.data.root),
            "sources": [dict(s) for s in cfg.data.sources], **_inference_meta(inference, device)}


def _scope_held(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scope of an evaluation on disk (older metrics.json files: read off its fields)."""
    meta = metrics.get("meta") or {}
    if isinstance(meta.get("scope"), dict):
        return meta["scope"]
    return {"categories": sorted(metrics.get("categories") or {}), "dataset": meta.get("dataset"),
            "data_root": meta.get("data_root"), "sources": [], "map_mode": meta.get("map_mode"),
            "precision": meta.get("precision")}


def _describe_scope(scope: dict[str, Any]) -> str:
    names = scope.get("categories") or []
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{shown or 'no categories'} ({scope.get('map_mode')} maps, {scope.get('precision')})"


def check_evaluation_target(out_dir: Path, scope: dict[str, Any], overwrite: bool = False) -> None:
    """Refuse to write an evaluation into ``out_dir`` over one of another scope (other categories,
    data, map mode or precision) unless ``overwrite``: a full evaluation can take hours to redo.
    The same scope again (a re-run) is replaced."""
    metrics = Path(out_dir) / "metrics.json"
    if overwrite or not metrics.is_file():
        return
    try:
        held = _scope_held(json.loads(metrics.read_text()))
    except (OSError, ValueError, AttributeError):
        held = {}
    differs = [key for key in ("categories", "dataset", "data_root", "sources", "map_mode", "precision")
               if held.get(key) != scope.get(key)]
    if differs:
        raise ConfigError(f"out {out_dir}: already holds an evaluation of {_describe_scope(held)}; this one is of "
                          f"{_describe_scope(scope)} (they differ in {', '.join(differs)}); give another out "
                          f"directory to keep both, or overwrite to replace it", arg="out", others=("out", "overwrite"))


def _inference_meta(inference: InferenceConfig, device: torch.device) -> dict[str, str]:
    return {"map_mode": str(inference.map_mode), "precision": str(inference.precision_on(device))}


def _runtime_meta(evaluations: dict[str, Evaluation]) -> dict[str, Any]:
    """The runtime of per-category evaluations (each resolved its own; they agree unless some model
    could not be exported), for the combined metrics.json."""
    if not evaluations:
        return {}
    runtimes = sorted({str(e.result.meta.get("runtime")) for e in evaluations.values()})
    reasons = sorted({str(e.result.meta.get("runtime_reason")) for e in evaluations.values()})
    return {"runtime": runtimes[0] if len(runtimes) == 1 else ", ".join(runtimes),
            "runtime_reason": reasons[0] if len(reasons) == 1 else "; ".join(reasons)}


def write_evaluation(outcome: Evaluation) -> None:
    """``metrics.json``, ``scores.csv`` and ``thresholds.json`` of an evaluation, atomically."""
    outcome.result.write(outcome.out_dir)
    atomic_write_text(outcome.out_dir / THRESHOLDS_FILE, json.dumps(outcome.calibration.to_dict(), indent=2) + "\n")


def _write_report(model: INPFormer, cfg: RunConfig, outcome: Evaluation, calibrator: Calibrator, device: torch.device,
                  evaluation: EvalConfig, samples: int, reporter: Reporter) -> Path:
    from inp_former.report import choose_samples, write_report

    result = outcome.result
    total = sum(len(choose_samples([r for r in result.rows if r["category"] == c], samples)) for c in result.categories)
    with reporter.counting("report", total) as on_progress:
        done = [0]

        def on_sample() -> None:
            done[0] += 1
            on_progress(done[0], total, "")

        return write_report(outcome.out_dir / "report.html", model, cfg, result, outcome.calibration, calibrator,
                            device, str(evaluation.inference.map_mode),
                            str(evaluation.inference.precision_on(device)), samples,
                            on_sample=on_sample)


def combine_evaluations(evaluations: dict[str, Evaluation], out_dir: Path, meta: dict[str, Any]) -> Evaluation:
    """One table of several single-category evaluations (the single-class setting): written to
    ``out_dir`` like any evaluation; each category keeps its own thresholds."""
    per_category = {c: e.result.categories[c] for c, e in evaluations.items()}
    rows = [row for e in evaluations.values() for row in e.result.rows]
    calibration = Calibration(map_mode=str(meta.get("map_mode", "decoder")),
                              categories={c: e.calibration.categories[c] for c, e in evaluations.items()},
                              source={"combined_from": {c: str(e.out_dir) for c, e in evaluations.items()}})
    meta = {**meta, "random_encoder": any(e.random_encoder for e in evaluations.values())}
    combined = Evaluation(EvalResult(per_category, mean_metrics(per_category), rows, meta), calibration, out_dir)
    distributed.on_writer(lambda: write_evaluation(combined))
    return combined


@dataclass(frozen=True)
class DataOverride:
    """Evaluate on other data than the checkpoint names (None: as at training time)."""
    root: str | None = None
    dataset: str | None = None
    categories: tuple[str, ...] = ()
    resize: int | None = None
    crop: int | None = None

    def apply(self, cfg: RunConfig) -> RunConfig:
        data: dict[str, Any] = {}
        if self.root is not None:
            if not Path(self.root).is_dir():
                raise ConfigError(f"data {self.root}: no such directory", arg="data")
            data = {"root": str(self.root), "sources": (), "categories": self.categories}  # e.g. zero-shot
        elif self.categories:
            data = {"categories": self.categories}
        if self.dataset is not None:
            data["dataset"] = self.dataset
        model = {k: v for k, v in (("resize", self.resize), ("crop", self.crop)) if v is not None}
        if model and cfg.model.keep_aspect:   # its input size is fixed at training: resize/crop would be ignored
            name = next(iter(model))
            raise ConfigError(f"{name} {model[name]}: the checkpoint keeps the aspect ratio, with images resized "
                              f"to {cfg.model.input_hw[0]}x{cfg.model.input_hw[1]} px (fixed when it was trained); "
                              f"leave out resize and crop", arg=name)
        if model and cfg.model.tile is not None:   # tiles are cut at the images' own resolution
            name = next(iter(model))
            raise ConfigError(f"{name} {model[name]}: the checkpoint is tiled (tile {cfg.model.tile} px, cut at the "
                              "images' own resolution), so resize and crop are unused; leave them out", arg=name)
        cfg = cfg.updated(model=model, data=data)
        if not cfg.data.root and not cfg.data.sources:
            raise ConfigError("data: the checkpoint does not say which data it was trained on; give the data root",
                              arg="data")
        return cfg


def single_class_checkpoints(run_dir: Path) -> dict[str, Path]:
    """``{category: checkpoint}`` of a single-class run directory (from each checkpoint's config)."""
    found = {}
    for path in sorted(Path(run_dir).rglob(CHECKPOINT_NAME)):
        if path.parent == Path(run_dir):
            continue
        categories = read_checkpoint(path)["config"]["data"].get("categories") or []
        if len(categories) == 1:
            found[categories[0]] = path
    return found


def evaluate_checkpoint(checkpoint: Path | str, data: DataOverride = DataOverride(),
                        evaluation: EvalConfig = EvalConfig(), out_dir: Path | None = None,
                        device: torch.device | str = "auto", encoder_weights: str | None = None,
                        allow_encoder_mismatch: bool = False, save_thresholds: bool = False,
                        report_samples: int | None = None, reporter: Reporter = SILENT,
                        overwrite: bool = False) -> Evaluation:
    """Evaluate a checkpoint file, a run directory (its ``checkpoint.pt``, or every category's of a
    single-class run) or the authors' ``model.pth``. Results go to ``out_dir`` (default: beside the
    checkpoint). The checkpoint is left byte for byte as it was unless ``save_thresholds``; the
    authors' file is never written. An evaluation of another scope already in the output folder
    is refused before anything runs, unless ``overwrite`` (:func:`check_evaluation_target`).

    ``save_thresholds`` merges the thresholds of the evaluated categories into the checkpoint
    (keeping the others') and, for a multi-category model, the category references that let
    ``predict`` and ``serve`` pick each image's category (:mod:`inp_former.categories`).

    Under ``torchrun`` (or in a process group the caller has joined) every process calls it with the
    same arguments; the images are split over the processes, rank 0 checks the output folder first
    and writes alone, and a failure on any process stops all of them (:mod:`inp_former.distributed`)."""
    with distributed.process_group(device) as (device, _), distributed.guard():
        checkpoint = Path(checkpoint)
        if checkpoint.is_dir():
            if (checkpoint / CHECKPOINT_NAME).is_file():
                checkpoint = checkpoint / CHECKPOINT_NAME
            else:
                return _evaluate_single_class_run(checkpoint, data, evaluation, out_dir, device, encoder_weights,
                                                  allow_encoder_mismatch, save_thresholds, reporter, overwrite)
        model, cfg, loaded = load_checkpoint(checkpoint, device, encoder_weights, allow_encoder_mismatch)
        authors = "imported_from" in loaded
        if authors and save_thresholds:
            raise ConfigError(f"save_thresholds: {checkpoint} is the authors' file, which is never modified; the "
                              f"thresholds are in the evaluation's {THRESHOLDS_FILE}", arg="save_thresholds")
        cfg = data.apply(cfg)
        categories, target = resolve_categories(cfg), Path(out_dir) if out_dir is not None else checkpoint.parent
        scope = evaluation_scope(cfg, categories, evaluation.inference, device)
        distributed.on_writer(lambda: check_evaluation_target(target, scope, overwrite))
        meta = {"checkpoint": str(checkpoint),
                **{key: loaded[key] for key in ("encoder_mismatch", "imported_from") if key in loaded}}
        outcome = evaluate_and_calibrate(model, cfg, device, evaluation, target, categories, meta=meta,
                                         store_in=checkpoint if save_thresholds else None,
                                         report_samples=report_samples, reporter=reporter)

        def add_references() -> list[str]:  # writes the checkpoint: rank 0 alone
            _add_missing_references(model, cfg, checkpoint, device, categories, str(evaluation.inference.map_mode),
                                    outcome, reporter)
            return outcome.stored_changes

        if save_thresholds and "encoder_mismatch" not in loaded:
            outcome.stored_changes = distributed.on_writer(add_references)
        return outcome


def _add_missing_references(model: INPFormer, cfg: RunConfig, checkpoint: Path, device: torch.device,
                            categories: list[str], map_mode: str, outcome: Evaluation, reporter: Reporter) -> None:
    """A multi-category checkpoint without the category references of some evaluated categories
    (one written before they existed) gets them: the fix the predictor's warning names."""
    from inp_former.categories import CategoryReferences

    meta = read_checkpoint(checkpoint).get("meta") or {}
    stored, references = read_calibration(meta, map_mode), CategoryReferences.from_meta(meta)
    missing = [c for c in categories if references is None or c not in references.vectors]
    if stored is None or len(stored.categories) < 2 or not missing:
        return
    try:
        written = store_category_references(model, cfg, checkpoint, device, missing)
        outcome.stored_changes.append(f"category references of {len(written)} categories stored")
    except DatasetError as exc:  # e.g. evaluated on data without a train split
        reporter.message(f"warning: category references not stored ({exc})")


def _evaluate_single_class_run(run_dir: Path, data: DataOverride, evaluation: EvalConfig, out_dir: Path | None,
                               device: torch.device, encoder_weights: str | None, allow_encoder_mismatch: bool,
                               save_thresholds: bool, reporter: Reporter, overwrite: bool) -> Evaluation:
    checkpoints = single_class_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(f"checkpoint {run_dir}: a directory without {CHECKPOINT_NAME} or per-category "
                              f"<category>/{CHECKPOINT_NAME} files (expected a run directory of inpctl train)",
                              arg="checkpoint")
    if data.categories:
        unknown = [c for c in data.categories if c not in checkpoints]
        if unknown:
            raise ConfigError(f"categories: {', '.join(unknown)} have no checkpoint in {run_dir} "
                              f"(available: {', '.join(checkpoints)})", arg="categories")
        checkpoints = {c: checkpoints[c] for c in data.categories}
    evaluations = {}
    names = {c: c.rsplit("/", 1)[-1] if data.root is not None else c for c in checkpoints}  # other data: plain
    scope = None
    for category, path in checkpoints.items():
        model, cfg, _ = load_checkpoint(path, device, encoder_weights, allow_encoder_mismatch)
        one = dataclasses.replace(data, categories=())
        cfg = one.apply(cfg)
        name = names[category]
        if scope is None:  # before the first evaluation runs
            scope = evaluation_scope(cfg, list(names.values()), evaluation.inference, device)
            distributed.on_writer(lambda: check_evaluation_target(Path(out_dir or run_dir), scope, overwrite))
        evaluations[name] = evaluate_and_calibrate(model, cfg, device, evaluation, None, [name],
                                                   meta={"setting": "single-class", "checkpoint": str(path)},
                                                   store_in=path if save_thresholds else None, reporter=reporter)
    meta = {"setting": "single-class", **_inference_meta(evaluation.inference, device), "device": str(device),
            **_runtime_meta(evaluations), "scope": scope, "checkpoints": {c: str(p) for c, p in checkpoints.items()}}
    combined = combine_evaluations(evaluations, Path(out_dir or run_dir), meta)
    combined.stored_changes = [f"{c}: {change}" for c, e in evaluations.items() for change in e.stored_changes]
    return combined


# --- training ---------------------------------------------------------------------------------

def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a run directory that already holds a run, unless ``overwrite``."""
    if overwrite:
        return
    for name in (CHECKPOINT_NAME, TRAINING_STATE):
        held = sorted(Path(run_dir).rglob(name)) if Path(run_dir).is_dir() else []
        if held:
            # never suggest what would refuse: a finished run is extended (iters N), an interrupted one continued
            onward = (f"extend it with resume {held[0].parent} and iters N (more than it has)"
                      if held[0].name == CHECKPOINT_NAME and finished_checkpoint(held[0].parent) is not None
                      else f"continue it with resume {held[0].parent}")
            raise ConfigError(f"run_dir {run_dir}: already holds a run ({held[0]}); choose another directory, pass "
                              f"overwrite, or {onward}", arg="run_dir", others=("overwrite", "resume", "iters"))


def train_run(cfg: RunConfig, run_dir: Path | str, device: torch.device | str = "auto",
              evaluation: EvalConfig | None = EvalConfig(), overwrite: bool = False, resume: bool = False,
              reporter: Reporter = SILENT) -> RunOutcome:
    """Train the run ``cfg`` describes into ``run_dir``, then evaluate it (unless ``evaluation`` is
    None) and store the calibrated thresholds in its checkpoint. The single-class setting trains one
    model per category into ``run_dir/<category>/``. Under ``torchrun`` every process calls this;
    only rank 0 writes and returns the evaluation, which every process computes a share of."""
    run_dir = Path(run_dir)
    if not resume:
        check_run_dir(run_dir, overwrite)
    if cfg.data.setting == Setting.SINGLE_CLASS and not resume:  # resuming: one category's run, trained as usual
        return _train_single_class(cfg, run_dir, device, evaluation, reporter)
    if evaluation is not None:  # a category without test images fails now, not after hours of training
        for category in resolve_categories(cfg):
            category_samples(cfg.data, category, "test")
    with distributed.process_group(device) as (device, rank):
        seed_everything(cfg.train.seed)  # the decoder's initialisation follows the seed (bit-for-bit reruns)
        model = INPFormer(cfg.model)
        if rank == 0:
            reporter.message(f"Encoder: {model.cfg.encoder} ({model.encoder.weights_source}); device {device}")
        with reporter.training("train") as on_step:
            trained = train(cfg, run_dir, device, on_step=on_step if rank == 0 else None, model=model, resume=resume,
                            on_notice=reporter.message)
        with distributed.guard():  # every process evaluates its share; a failure on one stops all
            if rank == 0:
                reporter.message(f"Trained {trained.iterations} iterations in {trained.seconds:.1f}s; checkpoint "
                                 f"{trained.checkpoint}")
            categories = resolve_categories(trained.config)
            if len(categories) > 1:  # the image rule of inp_former/categories.py; one category needs none
                distributed.on_writer(lambda: store_category_references(model, trained.config, trained.checkpoint,
                                                                        device, categories))
            outcome = None
            if evaluation is not None:
                outcome = evaluate_and_calibrate(model, trained.config, device, evaluation, run_dir,
                                                 meta={"checkpoint": str(trained.checkpoint)},
                                                 store_in=trained.checkpoint, reporter=reporter)
    return RunOutcome(run_dir, trained.config, {"": trained}, outcome if rank == 0 else None)


def store_category_references(model: INPFormer, cfg: RunConfig, checkpoint: Path, device: torch.device,
                              categories: list[str] | None = None) -> list[str]:
    """Store in ``checkpoint`` what the image rule of :mod:`inp_former.categories` needs: a few
    embeddings of the normal training images of each of ``categories`` (default: the config's)."""
    from inp_former.categories import store_references
    from inp_former.settings import compute_references

    return store_references(checkpoint, compute_references(model, cfg, categories or resolve_categories(cfg), device))


def finished_checkpoint(run_dir: Path | str) -> Path | None:
    """The checkpoint of a run that has finished (nothing left to resume), or None."""
    run_dir = Path(run_dir)
    done = run_dir / CHECKPOINT_NAME
    return done if done.is_file() and not (run_dir / TRAINING_STATE).is_file() else None


@dataclass(frozen=True)
class ResumePoint:
    """Where the run in a directory stands: its saved config (with its planned total in
    ``config.train.iters``), the iterations done, and whether it finished (``checkpoint.pt`` written,
    no ``last.pt``: only an extension to more iterations continues it)."""
    config: RunConfig
    iteration: int
    finished: bool


def resume_point(run_dir: Path | str) -> ResumePoint:
    """Read where the run in ``run_dir`` stands: from ``last.pt`` (an interrupted run), else from
    ``checkpoint.pt`` (a finished one); a ConfigError (``arg='resume'``) for anything else."""
    run_dir = Path(run_dir)
    state_path = run_dir / TRAINING_STATE
    if not run_dir.is_dir():
        raise ConfigError(f"resume {run_dir}: no such run directory", arg="resume")
    done = finished_checkpoint(run_dir)
    if done is not None:
        payload = read_checkpoint(done)
        source, raw, iteration = done, payload["config"], int(payload["meta"]["iterations"])
    elif state_path.is_file():
        state = load_training_state(state_path)
        source, raw, iteration = state_path, state["config"], int(state["iteration"])
    else:
        raise ConfigError(f"resume {run_dir}: no {TRAINING_STATE} there (nothing to resume; expected the directory "
                          f"of an interrupted or finished training run)", arg="resume")
    try:
        cfg = RunConfig.from_dict(raw, saved=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"resume {source}: its run config is not readable ({exc})", arg="resume") from exc
    return ResumePoint(cfg, iteration, done is not None)


def resume_run(run_dir: Path | str, device: torch.device | str = "auto",
               evaluation: EvalConfig | None = EvalConfig(), reporter: Reporter = SILENT,
               iters: int | None = None) -> RunOutcome:
    """Continue the run in ``run_dir`` from its ``last.pt`` with its saved config.

    ``iters`` above the run's planned total extends it to ``iters`` (config.json and the checkpoint
    record the new total). An interrupted run keeps its optimiser state, and its learning rate decays
    from where it stands to the final rate over the longer remainder; a finished run (``checkpoint.pt``,
    no ``last.pt``) continues from its weights with a new optimiser, whose rate warms up to the final
    one (:meth:`inp_former.optim.WarmCosineSchedule.extend`, docs/reliability.md)."""
    from inp_former.train import restart_warmup

    run_dir = Path(run_dir)
    point = resume_point(run_dir)
    cfg, planned = point.config, point.config.train.iters
    if iters is not None and iters <= planned:
        raise ConfigError(f"iters {iters}: the run in {run_dir} is planned for {planned} iterations (done: "
                          f"{point.iteration}); to extend it, give more than {planned}", arg="iters")
    if point.finished and iters is None:
        raise ConfigError(f"resume {run_dir}: the run is complete ({CHECKPOINT_NAME} is written after {planned} "
                          f"iterations, no {TRAINING_STATE} left); evaluate {run_dir / CHECKPOINT_NAME}, or extend "
                          f"it with iters above {planned}", arg="resume", others=("iters",))
    if iters is not None:
        cfg = cfg.updated(train={"iters": iters})
    if distributed.is_writer():
        tc = cfg.train
        if point.finished:
            reporter.message(f"Extending the finished run {run_dir} from {point.iteration} to {iters} iterations: "
                             f"its weights, a new optimiser (its state is not kept), the learning rate warming up "
                             f"over {restart_warmup(cfg, iters - point.iteration)} iterations to {tc.final_lr:g}")
        else:
            extended = f" (extended from {planned}; the learning rate decays from here to {tc.final_lr:g})"
            reporter.message(f"Resuming {run_dir} at iteration {point.iteration} of {tc.iters}"
                             + (extended if iters is not None else ""))
    return train_run(cfg, run_dir, device, evaluation, resume=True, reporter=reporter)


def _train_single_class(cfg: RunConfig, run_dir: Path, device: torch.device | str, evaluation: EvalConfig | None,
                        reporter: Reporter) -> RunOutcome:
    """One model per category, trained (and evaluated) one after the other; one table at the end."""
    if distributed.launched():
        raise ConfigError("setting single-class: not supported under torchrun; run one process per GPU with "
                          "a category each instead", arg="setting")
    device = resolve_device(device)
    categories = resolve_categories(cfg)
    cfg = cfg.updated(data={"categories": tuple(categories)})
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_json(run_dir / "config.json")
    encoder, resolved, trained, evaluations = None, None, {}, {}
    jobs = single_class_configs(cfg, categories)
    for number, (category, one) in enumerate(jobs, start=1):
        seed_everything(one.train.seed)  # each category's model starts from the same initialisation rule
        # every category's checkpoint records the encoder design actually built (stages, padding, ...)
        model = INPFormer(resolved or one.model, encoder=encoder)
        if encoder is None:
            encoder, resolved = model.encoder, model.cfg  # frozen: shared by every category's model
            reporter.message(f"Encoder: {model.cfg.encoder} ({encoder.weights_source}); device {device}; "
                             f"single-class: {len(jobs)} models")
        one = dataclasses.replace(one, model=resolved)
        sub = run_dir / category_dirname(category)
        with reporter.training(f"{category} ({number}/{len(jobs)})") as on_step:
            trained[category] = train(one, sub, device, on_step=on_step, model=model, on_notice=reporter.message)
        result = trained[category]
        reporter.message(f"{category}: trained {result.iterations} iterations in {result.seconds:.1f}s; checkpoint "
                         f"{result.checkpoint}")
        if evaluation is not None:
            evaluations[category] = evaluate_and_calibrate(
                model, result.config, device, evaluation, sub, [category],
                meta={"setting": "single-class", "checkpoint": str(result.checkpoint)}, store_in=result.checkpoint,
                reporter=reporter)
    combined = None
    if evaluation is not None:
        meta = {"setting": "single-class", **_inference_meta(evaluation.inference, device), "device": str(device),
                **_runtime_meta(evaluations), "dataset": cfg.data.dataset, "data_root": str(cfg.data.root),
                "encoder": cfg.model.encoder,
                "scope": evaluation_scope(cfg, categories, evaluation.inference, device),
                "checkpoints": {c: str(r.checkpoint) for c, r in trained.items()}}
        combined = combine_evaluations(evaluations, run_dir, meta)
    return RunOutcome(run_dir, cfg, trained, combined)


# --- prediction and export ----------------------------------------------------------------------

def default_output_dir(prefix: str) -> Path:
    return Path(f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")


@dataclass(frozen=True)
class PredictOptions:
    inference: InferenceConfig = InferenceConfig()
    threshold: float | None = None        # None: the checkpoint's stored one (of ``category`` if given)
    category: str | None = None
    overlays: bool = True
    save_maps: bool = False
    masks: bool = False                   # a binary mask per image at its resolution (needs a pixel threshold)
    max_megapixels: float = MAX_MEGAPIXELS   # larger images are skipped (read from the header), as in serve

    def __post_init__(self) -> None:
        if not self.max_megapixels > 0:
            raise ConfigError(f"max_megapixels {self.max_megapixels}: expected a positive number",
                              arg="max_megapixels")


def predict_images(checkpoint: Path | str, inputs: list[Path], out_dir: Path, options: PredictOptions = PredictOptions(),
                   device: torch.device | str = "auto", encoder_weights: str | None = None,
                   allow_encoder_mismatch: bool = False, reporter: Reporter = SILENT,
                   resume: bool = False) -> dict[str, Any]:
    """Score every image in ``inputs`` (files and folders) with a checkpoint; writes
    predictions.csv/.json, overlays and maps into ``out_dir`` (:mod:`inp_former.batch_predict`);
    returns the summary written to predictions.json. ``resume``: skip the images whose results an
    interrupted run into ``out_dir`` already wrote (with the same checkpoint and settings).
    ``options.masks`` without a stored pixel threshold is refused before anything is scored. One
    warning names the images far smaller than the model's input (``small_images``).

    Under ``torchrun`` (or in a process group the caller has joined) every process calls it with the
    same arguments: the batches are split over the processes, each writes its overlays and maps, and
    rank 0 writes predictions.csv/.json once all are done (:func:`inp_former.batch_predict.predict_files`)."""
    from inp_former.batch_predict import collect_inputs, predict_files
    from inp_former.data import IMAGE_EXTENSIONS
    from inp_former.errors import DatasetError
    from inp_former.predictor import Predictor

    with distributed.process_group(device) as (device, _), distributed.guard():
        files, missing = collect_inputs(inputs)
        if not files:
            if missing:
                raise DatasetError(f"{missing[0]['path']}: no such file or directory")
            raise DatasetError(f"{', '.join(map(str, inputs))}: no images found (extensions: "
                               f"{', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
        predictor = Predictor.from_checkpoint(checkpoint, device, options.inference, options.threshold,
                                              options.category, encoder_weights, allow_encoder_mismatch)
        if options.masks and not _pixel_threshold_stored(predictor):
            raise ConfigError(f"masks: {checkpoint} holds no pixel threshold to draw masks with; to store one, "
                              "evaluate it with save_thresholds", arg="masks", others=("save_thresholds",))
        for warning in (predictor.category_warning, predictor.precision_warning):
            if warning:
                reporter.message("warning: " + warning)
        if predictor.threshold is None:
            reporter.message(Notice("warning: no threshold: the checkpoint holds none and none was given, so images "
                                    "are scored but not labelled; to store one, evaluate it with save_thresholds",
                                    names=("save_thresholds",)))
        with reporter.counting("predict", len(files)) as on_progress:
            summary = predict_files(predictor, inputs, Path(out_dir), options.overlays, options.save_maps,
                                    checkpoint=str(checkpoint), on_progress=on_progress, resume=resume,
                                    masks=options.masks, max_megapixels=options.max_megapixels)
        if predictor.aspect_warning:   # keep-aspect: once for the run, however many
            reporter.message(predictor.aspect_warning)
        small = summary.get("small_images") or {}
        if small.get("images"):   # once for the run, however many
            first, (width, height) = small["images"][0], small["model_input"]
            reporter.message(f"warning: {len(small['images'])} image(s) far smaller than the model's input of "
                             f"{width} x {height} pixels (a side under half of it), e.g. {first['path']} "
                             f"({first['size'][0]} x {first['size'][1]}): enlarged that much, their scores and maps "
                             f"say little (listed in predictions.json small_images)")
    summary["threshold_source"] = predictor.threshold_source
    return summary


def _pixel_threshold_stored(predictor: Any) -> bool:
    """Whether some image can get a pixel threshold: the given category's, else the pooled or any category's."""
    calibration = predictor.calibration
    if predictor.pixel_threshold is not None or calibration is None or predictor.category is not None:
        return predictor.pixel_threshold is not None
    return any(entry.get("pixel_threshold") is not None for entry in calibration.categories.values())


def export_model(checkpoint: Path | str, target: Path | None = None, map_mode: MapMode = MapMode.DECODER,
                 exporter: str = "torchscript", opset: int = 17, check: bool = True,
                 encoder_weights: str | None = None, allow_encoder_mismatch: bool = False,
                 reporter: Reporter = SILENT, int8: bool = False, int8_calibration: Path | None = None,
                 check_data: DataOverride | None = None, force: bool = False) -> dict[str, Any]:
    """Export a checkpoint's whole inference graph as ONNX (:mod:`inp_former.export`) to ``target``
    (default: the checkpoint file with the suffix ``.onnx``, ``.int8.onnx`` with ``int8``); with
    ``check``, compare onnxruntime with torch. Returns what was written and the check's largest
    differences.

    ``int8``: the model statically quantised for CPUs (:mod:`inp_former.quantize`), calibrated on
    the normal images under ``int8_calibration`` (default: the checkpoint's training images) and
    checked against the fp32 export on the test split of ``check_data`` (default: the checkpoint's
    data); refused (nothing written) when its image AUROC drops by more than 1 point, unless
    ``force``. ``outcome["int8"]`` is that check."""
    from inp_former.categories import CategoryReferences
    from inp_former.checkpoint import resolve_checkpoint
    from inp_former.export import check_onnx, export_metadata, export_onnx, onnxruntime_available

    checkpoint = resolve_checkpoint(checkpoint)
    target = Path(target) if target is not None else checkpoint.with_suffix(".int8.onnx" if int8 else ".onnx")
    model, cfg, meta = load_checkpoint(checkpoint, "cpu", encoder_weights, allow_encoder_mismatch)
    calibration = read_calibration(meta, str(map_mode))
    metadata = export_metadata(cfg, str(map_mode), calibration.to_dict() if calibration else None, str(checkpoint),
                               CategoryReferences.from_meta(meta))
    reporter.message(f"Exporting to ONNX ({exporter} exporter, opset {opset})")
    fp32_path = target.with_name(f".{target.name}.fp32.onnx") if int8 else target
    info = export_onnx(model, cfg, fp32_path, str(map_mode), exporter, opset, metadata=metadata)
    outcome: dict[str, Any] = {"info": info, "config": cfg, "calibration": calibration, "check": None,
                               "checked": False, "int8": None}
    if check and onnxruntime_available():
        outcome["check"], outcome["checked"] = check_onnx(info.path, model, cfg, str(map_mode)), True
    if int8:
        try:
            outcome["int8"] = _quantize_export(info, cfg, target, metadata, int8_calibration, check_data, force,
                                               reporter)
        finally:
            for leftover in (fp32_path, fp32_path.with_name(fp32_path.name + ".json")):
                leftover.unlink(missing_ok=True)
        info.path, info.sidecar = target, target.with_name(target.name + ".json")
    return outcome


def _quantize_export(info: Any, cfg: RunConfig, target: Path, metadata: dict[str, Any], calibration_dir: Path | None,
                     check_data: DataOverride | None, force: bool, reporter: Reporter) -> Any:
    """The int8 model of the fp32 export ``info.path``, checked, then written to ``target``."""
    from inp_former.export import publish
    from inp_former.quantize import (MAX_AUROC_DROP, calibration_images, check_images, check_int8, quantize_onnx,
                                     refuse_if_worse)

    normal = calibration_images(cfg, calibration_dir)
    reporter.message(f"Quantising to int8, calibrated on {len(normal)} normal images")
    staged = target.with_name(f".{target.name}.int8.tmp")
    try:
        nodes = quantize_onnx(info.path, staged, normal)
        images, labels, categories = check_images((check_data or DataOverride()).apply(cfg))
        reporter.message(f"Checking the int8 model against fp32 on {len(images)} labelled images")
        result = check_int8(info.path, staged, images, labels, categories)
        refuse_if_worse(result, force, MAX_AUROC_DROP)
        publish(staged, target, {**metadata, "precision": "int8",
                                 "int8": {**result.as_dict(), "quantised_nodes": len(nodes),
                                          "calibration_images": len(normal), "max_auroc_drop": MAX_AUROC_DROP,
                                          "forced": bool(force and result.auroc_drop > MAX_AUROC_DROP)}})
    finally:
        staged.unlink(missing_ok=True)
    return result
