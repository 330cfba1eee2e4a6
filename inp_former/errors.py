"""The library's errors: typed, one line each, speaking of arguments and files.

A message starts with the argument at fault and its value (``checkpoint runs/x.pt: no such
file``); ``arg`` names that argument, so a front end can say it its own way: the command line
renders ``checkpoint`` as ``--ckpt`` (:meth:`InpFormerError.render`).
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping


class InpFormerError(Exception):
    """Base class of every expected error (bad input, not a bug)."""

    def __init__(self, message: str, arg: str | None = None, others: tuple[str, ...] = ()) -> None:
        message = str(message)
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            # re-raised by a DataLoader worker: the message is the worker's traceback; keep the error's own
            message = message.rsplit(marker, 1)[1]
        super().__init__(" ".join(message.split()))  # one line, whatever the parts held
        self.arg = arg
        self.others = others     # other arguments the message names (as words)

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with the argument names replaced by the front end's names for them
        (``flags[name]``, else ``--name-with-dashes``)."""
        text = str(self)
        if self.arg and text.startswith(self.arg):
            text = front_end_name(self.arg, flags) + text[len(self.arg):]
        return render_names(text, self.others, flags)


def front_end_name(name: str, flags: Mapping[str, str] | None = None) -> str:
    """How a front end spells the argument ``name``: ``flags[name]``, else ``--name-with-dashes``."""
    return (flags or {}).get(name) or "--" + name.replace("_", "-")


def render_names(text: str, names: Iterable[str], flags: Mapping[str, str] | None = None) -> str:
    """``text`` with each of ``names`` (its first occurrence as a whole word after a space) spelled
    as the front end spells it (:func:`front_end_name`): how errors and the workflow's notices
    (:class:`inp_former.workflow.Notice`) reach the command line in terms of its flags."""
    for name in names:
        text = re.sub(rf"(?<= ){re.escape(name)}\b", lambda _, name=name: front_end_name(name, flags), text, count=1)
    return text


class ConfigError(InpFormerError, ValueError):
    """A setting has a value outside what is allowed."""


class DatasetError(InpFormerError, ValueError):
    """A dataset folder or file does not match its layout (the message names it)."""


class CheckpointError(InpFormerError, ValueError):
    """A file is not a usable checkpoint, or does not fit the encoder loaded now."""


class EncoderWeightsError(InpFormerError, RuntimeError):
    """Pretrained encoder weights were asked for but cannot be found or do not fit."""


class TrainingError(InpFormerError, RuntimeError):
    """Training cannot go on (non-finite loss, nothing to resume, ...)."""


class DistributedError(InpFormerError, RuntimeError):
    """A process of a ``torchrun`` job failed (or made no progress for too long): every process stops.

    The message names the rank and the cause: ``rank 1: <that process's error>``. ``reported_elsewhere``
    is True where another process (rank 0) reports it, so that a job prints the line once."""

    def __init__(self, rank: int, cause: str, cause_arg: str | None = None, cause_others: tuple[str, ...] = (),
                 reported_elsewhere: bool = False) -> None:
        super().__init__(f"rank {rank}: {cause}")
        self.rank, self.cause, self.reported_elsewhere = rank, cause, reported_elsewhere
        self.cause_arg, self.cause_others = cause_arg, tuple(cause_others)

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """``rank N:`` and the cause in the front end's terms (its argument names rendered as flags)."""
        return f"rank {self.rank}: " + InpFormerError(self.cause, self.cause_arg, self.cause_others).render(flags)


class TrainingInterrupted(InpFormerError):
    """SIGINT/SIGTERM stopped training at an iteration boundary; a resumable state was saved."""

    def __init__(self, message: str, signal_number: int, state_path: str) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.state_path = state_path
