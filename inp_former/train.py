"""One training loop for every setting: the config says which data and how long.

Also: resumable training states (``last.pt``: model, optimiser, schedule, RNG, data position,
written atomically every ``checkpoint_every`` iterations, removed once ``checkpoint.pt`` is written)
and multi-process training with PyTorch's DistributedDataParallel when launched by ``torchrun``
(the batch size is the global batch, split evenly over the processes; docs/reliability.md).
A resumed run on CPU ends with exactly the weights of an uninterrupted one; a run can be extended
to more iterations, a finished one too (:func:`train`). SIGINT/SIGTERM stop a run at the next
iteration boundary with a resumable state saved (:class:`StopOnSignal`). Every step is logged to
``train_log.csv`` (and TensorBoard, optionally: :class:`TrainingLog`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from inp_former import distributed
from inp_former.checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from inp_former.config import Precision, RunConfig
from inp_former.errors import ConfigError, TrainingError, TrainingInterrupted
from inp_former.inference import autocast, choose_precision
from inp_former.io import atomic_torch_save, atomic_write_text
from inp_former.losses import coherence_loss, soft_mining_loss
from inp_former.model import INPFormer
from inp_former.optim import StableAdamW, WarmCosineSchedule

TRAINING_STATE = "last.pt"   # resumable state inside the run directory
TRAIN_LOG = "train_log.csv"  # one row per step: LOG_COLUMNS
LOG_COLUMNS = ("iteration", "loss", "lr", "seconds")
TENSORBOARD_DIR = "tensorboard"  # event files, with TrainConfig.tensorboard


@dataclass
class StepInfo:
    iteration: int     # 1-based, after the step
    total: int
    loss: float
    mining: float
    coherence: float
    lr: float
    images: int = 0    # images per step (the global batch)


@dataclass
class TrainResult:
    config: RunConfig          # the run's config as resolved (categories, iterations, encoder design)
    model: INPFormer
    checkpoint: Path
    iterations: int
    seconds: float
    final_loss: float
    skipped_steps: int = 0
    losses: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_precision(precision: Precision | str | None, device: torch.device | str) -> tuple[Precision, str]:
    """(the precision a run trains with on ``device``, why). ``fp32``/``bf16``: as given. ``auto``
    (the default): on a CPU, :func:`inp_former.inference.choose_precision`'s rule (bf16 autocast
    where the CPU has native bf16 units: image AUROC held within a point of fp32 on the demo and
    KolektorSDD, docs/performance.md); on CUDA fp32, the authors' recipe (bf16 training is not
    measured there)."""
    precision = Precision.AUTO if precision is None else Precision(precision)
    if precision != Precision.AUTO:
        return precision, "given"
    if torch.device(device).type == "cuda":
        return Precision.FP32, "auto: fp32 on CUDA (the authors' recipe)"
    return choose_precision(Precision.AUTO, device)


def resolve_categories(cfg: RunConfig) -> list[str]:
    from inp_former.settings import resolve_categories as resolve  # several datasets: "<name>/<category>"

    return resolve(cfg.data)


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose order depends only on (seed, epoch), so a run can resume mid-epoch.

    Each epoch is a fresh permutation from ``seed + epoch``; the global batch of ``batch_size``
    images is split evenly over ``world`` processes (rank r takes its contiguous slice), so a
    run on W processes sees exactly the batches of a one-process run.
    """

    def __init__(self, size: int, batch_size: int, seed: int, world: int = 1, rank: int = 0) -> None:
        if batch_size % world:
            raise ConfigError(f"batch_size {batch_size}: must be divisible by the {world} processes", arg="batch_size")
        self.size, self.batch_size, self.seed, self.world, self.rank = size, batch_size, seed, world, rank
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return self.size // self.batch_size - self.start_batch

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        local = self.batch_size // self.world
        for b in range(self.start_batch, self.size // self.batch_size):  # drop_last
            start = b * self.batch_size + self.rank * local
            yield order[start:start + local]


def _rng_state() -> dict[str, Any]:
    # tensors and plain Python values only, so that the state loads with weights_only=True
    numpy_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
             "numpy_pos": int(numpy_state[2]), "numpy_gauss": [int(numpy_state[3]), float(numpy_state[4])],
             "python": repr(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         *state.get("numpy_gauss", [0, 0.0])))
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _global_loss(loss: torch.Tensor, world: int) -> float:
    """The loss of the global batch: the mean over processes (nan/inf anywhere reaches all)."""
    if world > 1:
        loss = loss.float().clone()
        dist.all_reduce(loss)
        loss = loss / world
    return float(loss)


def _nonfinite_message(what: str, iteration: int, state_path: Path) -> str:
    if state_path.is_file():
        try:
            kept = f"iteration {torch.load(state_path, map_location='cpu', weights_only=True, mmap=True)['iteration']}"
        except Exception:  # noqa: BLE001 - only for the message
            kept = "its last save"
        saved = f"the last good state {state_path} ({kept}) is kept"
    else:
        saved = "no training state was saved yet (see checkpoint_every)"
    return (f"{what} at iteration {iteration}: training stopped; {saved}. Try eps 1e-6 (a known fix) or "
            f"on_nonfinite skip")


def save_training_state(path: Path, model: INPFormer, optimizer: torch.optim.Optimizer, schedule: Any,
                        cfg: RunConfig, iteration: int, epoch: int, batch_in_epoch: int, skipped: int) -> None:
    """Everything needed to continue exactly where we are (atomic write)."""
    atomic_torch_save({
        "format": "inpctl-training-state", "config": cfg.to_dict(), "iteration": iteration, "epoch": epoch,
        "batch_in_epoch": batch_in_epoch, "skipped": skipped,
        "model": {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()},
        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": _rng_state(),
    }, path)


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"resume: {path} is not a readable training state ({exc.__class__.__name__})",
                            arg="resume") from exc
    if not isinstance(state, dict) or state.get("format") != "inpctl-training-state":
        raise TrainingError(f"resume: {path} is not an inpctl training state", arg="resume")
    return state


class StopOnSignal:
    """SIGINT/SIGTERM during training ask for a stop at the next iteration boundary (where a
    resumable state is written) instead of killing the run; a second signal aborts at once.

    Installed only in the main thread (Python delivers signals there); elsewhere it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is not None:  # the second one: the user means it
            raise KeyboardInterrupt
        self.received = number

    def stop_requested(self, world: int) -> bool:
        """Whether any process got a signal (all processes stop at the same iteration)."""
        flag = self.received is not None
        if world > 1:
            value = torch.tensor([float(flag)])
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            flag = bool(value.item())
        return flag


def require_tensorboard() -> type:
    """TensorBoard's ``SummaryWriter`` (torch's), or a ConfigError naming the install command: the
    tensorboard package is optional, not a dependency of inpctl."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard: the tensorboard package is not installed; install it with: "
                          "pip install tensorboard", arg="tensorboard") from None
    return SummaryWriter


def read_train_log(path: Path | str) -> list[dict[str, float]]:
    """The rows of a ``train_log.csv`` as numbers, ``{column: value}``; [] without the file. A row
    that does not parse (one a crash cut short) is left out."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    if not lines or tuple(lines[0].split(",")) != LOG_COLUMNS:
        return []
    rows = []
    for line in lines[1:]:
        fields = line.split(",")
        try:
            values = [float(field) for field in fields]
        except ValueError:
            continue
        if len(values) == len(LOG_COLUMNS):
            rows.append(dict(zip(LOG_COLUMNS, values)))
    return rows


class TrainingLog:
    """What a person plots: ``RUN_DIR/train_log.csv`` (``LOG_COLUMNS``, one row per step, flushed as
    it is written, so a crash leaves every row written so far) and, with ``tensorboard``, TensorBoard
    event files in ``RUN_DIR/tensorboard``.

    ``resumed_at``: the iteration a resumed run continues from. Rows after it (steps done after the
    saved state, which the run does again) are dropped first, and ``seconds`` carries on from the
    last row kept: training time summed over the run's sessions. None: a new run starts a new log.
    """

    def __init__(self, run_dir: Path, resumed_at: int | None = None, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / TRAIN_LOG
        rows = read_train_log(self.path) if resumed_at is not None else []
        kept = [row for row in rows if row["iteration"] <= resumed_at]
        atomic_write_text(self.path, ",".join(LOG_COLUMNS) + "\n" + "".join(
            self._line(int(row["iteration"]), row["loss"], row["lr"], row["seconds"]) for row in kept))
        self.offset = kept[-1]["seconds"] if kept else 0.0
        self._file: TextIO = open(self.path, "a", encoding="utf-8")
        self._events = None
        if tensorboard:  # purge_step: TensorBoard hides what an earlier attempt logged from that step on
            writer = require_tensorboard()
            self._events = writer(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=(resumed_at or 0) + 1)

    @staticmethod
    def _line(iteration: int, loss: float, lr: float, seconds: float) -> str:
        return f"{iteration},{float(loss)!r},{float(lr)!r},{seconds:.3f}\n"   # repr: exact, 'nan' for a bad step

    def write(self, step: StepInfo, seconds: float) -> None:
        """The row of ``step``, done ``seconds`` after this session started."""
        self._file.write(self._line(step.iteration, step.loss, step.lr, self.offset + seconds))
        self._file.flush()
        if self._events is not None:
            for name in ("loss", "mining", "coherence", "lr"):
                self._events.add_scalar(f"train/{name}", getattr(step, name), step.iteration)
            self._events.flush()

    def close(self) -> None:
        self._file.close()
        if self._events is not None:
            self._events.close()

    def __enter__(self) -> "TrainingLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C (the terminal sends it to them too): the main process
    decides, finishes the iteration with their batches, and saves the state."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def prepare_run(cfg: RunConfig, on_notice: Callable[[str], None] | None = None) -> tuple[RunConfig, Dataset]:
    """The config with what the data decides resolved (categories, iterations, a keep-aspect input
    size), and the training set; checks the setting and the batch size first. ``on_notice`` hears
    what a person should know once (the keep-aspect size chosen, images stretched to it)."""
    from inp_former.settings import check_setting, resolve_input_size, training_dataset  # the setting picks the images

    check_setting(cfg.data)
    categories = resolve_categories(cfg)
    cfg, notes = resolve_input_size(cfg, categories)
    for note in notes if on_notice is not None else ():
        on_notice(note)
    dataset = training_dataset(cfg, categories)
    tc = cfg.train
    if len(dataset) < tc.batch_size:
        items = "tiles" if cfg.model.tile is not None else "images"   # a tiled run's items (data/tiles.py)
        raise ConfigError(f"batch_size {tc.batch_size}: larger than the {len(dataset)} training {items}",
                          arg="batch_size")
    total = tc.iters if tc.iters is not None else tc.epochs * (len(dataset) // tc.batch_size)
    if total < 1:
        raise ConfigError("iters: training needs at least one iteration", arg="iters")
    return cfg.updated(data={"categories": tuple(categories)}, train={"iters": total}), dataset


def restart_warmup(cfg: RunConfig, extra: int) -> int:
    """The warm-up of a finished run extended by ``extra`` iterations, whose optimiser restarts: the
    run's own warm-up, at most a tenth of the extension (the rule of a short run's warm-up)."""
    return min(cfg.train.warmup_iters, extra // 10)


def _saved_state(run_dir: Path, batches_per_epoch: int) -> dict[str, Any]:
    """What a resumed run continues from: ``last.pt`` (an interrupted run: everything, so it goes on
    exactly), else the weights of ``checkpoint.pt`` (a finished run, being extended: no optimiser,
    schedule or RNG state; the data position follows from its iteration count)."""
    state_path = run_dir / TRAINING_STATE
    if state_path.is_file():
        return load_training_state(state_path)
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise TrainingError(f"resume {run_dir}: no {TRAINING_STATE} to resume from", arg="resume")
    payload = read_checkpoint(run_dir / CHECKPOINT_NAME)
    done = int(payload["meta"]["iterations"])
    return {"config": payload["config"], "model": payload["state_dict"], "iteration": done,
            "epoch": done // batches_per_epoch, "batch_in_epoch": done % batches_per_epoch,
            "skipped": int(payload["meta"].get("skipped_steps", 0))}


def train(cfg: RunConfig, run_dir: Path, device: torch.device | str | None = None,
          on_step: Callable[[StepInfo], None] | None = None,
          model: INPFormer | None = None, resume: bool = False,
          on_notice: Callable[[str], None] | None = None) -> TrainResult:
    """Train one model on the configured data.

    Writes ``run_dir/config.json``, ``run_dir/last.pt`` every ``checkpoint_every`` iterations and
    ``run_dir/checkpoint.pt`` at the end, and a row per step to ``run_dir/train_log.csv``
    (:class:`TrainingLog`; rank 0 only). ``resume=True`` continues from ``last.pt``; with more
    iterations in ``cfg`` than the run was planned for, the schedule is extended
    (:meth:`WarmCosineSchedule.extend`), and a finished run (``checkpoint.pt``, no ``last.pt``)
    continues from its weights with a new optimiser (warm-up: :func:`restart_warmup`).
    SIGINT/SIGTERM write ``last.pt`` at the next iteration boundary and raise
    :class:`inp_former.errors.TrainingInterrupted`. ``on_notice`` hears the run's one-time notices
    (:func:`prepare_run`; lines starting ``warning: `` are warnings).
    """
    from inp_former.runtime import loader_kwargs
    from inp_former.settings import training_meta

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = distributed.rank(), distributed.world_size()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    cfg, dataset = prepare_run(cfg, on_notice if rank == 0 else None)
    precision, why = training_precision(cfg.train.precision, device)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))   # config.json says which
    if on_notice is not None and rank == 0:
        on_notice(f"Training precision: {precision} ({why})")
    tc = cfg.train
    categories = list(cfg.data.categories)
    sampler = EpochBatchSampler(len(dataset), tc.batch_size, tc.seed, world, rank)
    loader = DataLoader(dataset, batch_sampler=sampler, worker_init_fn=_ignore_interrupts,
                        **loader_kwargs(device, tc.num_workers))
    batches_per_epoch = len(dataset) // tc.batch_size
    total = tc.iters

    model = (model or INPFormer(cfg.model)).to(device)
    # the model's config (saved with its weights) gets the data's input size (prepare_run); the run's
    # gets the encoder's own choices (a CNN's stages)
    model.cfg = dataclasses.replace(model.cfg, input_size=cfg.model.input_size)
    cfg = dataclasses.replace(cfg, model=model.cfg)
    params = model.trainable_parameters()
    if tc.tensorboard and distributed.is_writer():
        require_tensorboard()  # before the first step, not after it
    state = _saved_state(run_dir, batches_per_epoch) if resume else None
    planned = state["config"]["train"]["iters"] if state is not None else total  # the schedule as saved
    optimizer = StableAdamW(params, lr=tc.lr, betas=tc.betas, eps=tc.eps, weight_decay=tc.weight_decay, amsgrad=True)
    schedule = WarmCosineSchedule(optimizer, tc.lr, tc.final_lr, planned, warmup=tc.warmup_iters)
    iteration, epoch, skipped, losses = 0, 0, 0, []
    state_path = run_dir / TRAINING_STATE
    if rank == 0:  # half-written files of a killed run (the atomic writes' temporaries) are garbage
        for name in (TRAINING_STATE, CHECKPOINT_NAME):
            for stale in run_dir.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
    if state is not None:
        model.load_trainable_state_dict(state["model"])
        restarted = "optimizer" not in state   # a finished run: its optimiser state is gone
        if not restarted:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            _set_rng_state(state["rng"])
        iteration, epoch, skipped = state["iteration"], state["epoch"], state["skipped"]
        sampler.set_position(epoch, state["batch_in_epoch"])
        if total != planned or restarted:  # extended: the new total is the run's from now on
            if total <= iteration:
                raise ConfigError(f"iters {total}: the run has done {iteration} iterations already; extending it "
                                  "needs more", arg="iters")
            schedule.extend(total, at=iteration, warmup=restart_warmup(cfg, total - iteration) if restarted else 0)
            if rank == 0:
                cfg.save_json(run_dir / "config.json")
        del state
    elif rank == 0:
        cfg.save_json(run_dir / "config.json")
        state_path.unlink(missing_ok=True)  # a stale state of an overwritten run must never be resumed

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    started = time.perf_counter()
    log = TrainingLog(run_dir, iteration if resume else None, tc.tensorboard) if distributed.is_writer() else None
    with StopOnSignal() as stop, log or contextlib.nullcontext():
        while iteration < total:
            batch_in_epoch = sampler.start_batch
            for batch in loader:
                batch_in_epoch += 1
                images = batch["image"].to(device, non_blocking=True)
                with autocast(device, tc.precision):
                    out = net(images)
                    mining = soft_mining_loss(out.encoder_groups, out.decoder_groups, tc.mining_gamma)
                    coherence = coherence_loss(out.prototype_distance)
                    loss = mining + tc.coherence_weight * coherence
                optimizer.zero_grad(set_to_none=True)
                value = _global_loss(loss.detach(), world)  # every process takes the same skip/stop decision
                bad = None if math.isfinite(value) else f"loss is {value}"
                if bad is None:
                    loss.backward()
                    norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip))  # same on every process
                    if math.isfinite(norm):
                        optimizer.step()
                        losses.append(value)
                    else:
                        bad = f"gradient norm is {norm}"
                        optimizer.zero_grad(set_to_none=True)
                if bad is not None:
                    if tc.on_nonfinite != "skip":
                        raise TrainingError(_nonfinite_message(bad, iteration + 1, state_path),
                                            others=("eps", "on_nonfinite", "checkpoint_every"))
                    skipped += 1  # the step is dropped (weights and optimiser untouched), the schedule moves on
                step = StepInfo(iteration + 1, total, value, float(mining.detach()), float(coherence.detach()),
                                optimizer.param_groups[0]["lr"], tc.batch_size)   # the rate this step used
                schedule.step()
                iteration += 1
                if log is not None:
                    log.write(step, time.perf_counter() - started)
                if on_step is not None and rank == 0:
                    on_step(step)
                at_epoch_end = batch_in_epoch == batches_per_epoch
                position = (epoch + at_epoch_end, 0 if at_epoch_end else batch_in_epoch)
                interrupted = iteration < total and stop.stop_requested(world)
                periodic = tc.checkpoint_every and iteration % tc.checkpoint_every == 0 and iteration < total
                if (periodic or interrupted) and rank == 0:
                    save_training_state(state_path, model, optimizer, schedule, cfg, iteration, *position, skipped)
                if interrupted:
                    raise TrainingInterrupted(
                        f"interrupted at iteration {iteration} of {total}: the training state is saved in "
                        f"{state_path}", stop.received or signal.SIGINT, str(state_path))
                if iteration >= total:
                    break
            else:
                epoch += 1
                sampler.set_position(epoch, 0)
    seconds = time.perf_counter() - started
    checkpoint = run_dir / CHECKPOINT_NAME
    if rank == 0:
        save_checkpoint(checkpoint, model, cfg, meta={
            "iterations": iteration, "train_seconds": round(seconds, 2), "dataset": cfg.data.dataset,
            "data_root": str(cfg.data.root), "categories": categories, "train_images": len(dataset),
            "device": str(device), "world_size": world, "skipped_steps": skipped,
            "train_precision": str(precision), "train_precision_reason": why, **training_meta(cfg, dataset),
        })
        state_path.unlink(missing_ok=True)  # complete: checkpoint.pt holds the result, nothing left to resume
    return TrainResult(cfg, model, checkpoint, iteration, seconds, losses[-1] if losses else float("nan"), skipped,
                       losses)
