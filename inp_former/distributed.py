"""Processes launched by ``torchrun``: the process group, rank, world size and who writes; and how
the processes of one job split the work, count their progress and stop together.

The only module that reads torchrun's environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``). Before a process group exists (argument parsing, messages printed while the
model loads) the environment answers; once :func:`process_group` has joined one, the group does.

Sharded jobs (evaluation and prediction over several processes) use four things here:

* :func:`share`: this process's contiguous block of a job's batches. Blocks follow rank order,
  so per-process results concatenated in rank order are in the one-process order.
* :class:`Job`: counters of the items done by all processes (for progress), and :meth:`Job.wait`,
  which returns once every process has reached the same point.
* :func:`guard`: every process succeeds or all stop. A failure is published in the process group's
  key-value store (torchrun's rendezvous store); the others see it at their next batch or while
  waiting, and raise :class:`~inp_former.errors.DistributedError` naming the rank and the cause.
* :func:`gather` and :func:`on_writer`: the shares to rank 0, and rank 0's result (or failure) to all.

Alone (no group, or a group of one) all of them reduce to the one-process behaviour.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from inp_former.errors import DistributedError, InpFormerError

T = TypeVar("T")

# A failed process waits this long for rank 0 to take over reporting its failure (rank 0 notices
# it after its current batch); without that answer it reports the failure itself.
ACK_SECONDS = 10.0
# A wait in which no process finishes an item or arrives for this long is a failure (torch's own
# default collective timeout): a process that hangs or vanished without a word stops the job.
STALL_SECONDS = 1800.0
POLL_SECONDS = (0.01, 0.5)   # the store is polled from the first value, doubling up to the second


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched() -> bool:
    """True when this process is one of several started by ``torchrun`` (WORLD_SIZE > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: the group's when joined, else torchrun's ``RANK`` (0 alone)."""
    return dist.get_rank() if initialized() else _env_int("RANK", 0)


def world_size() -> int:
    """How many processes share the job: the group's when joined, else ``WORLD_SIZE`` (1 alone)."""
    return dist.get_world_size() if initialized() else _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``): which GPU it takes."""
    return _env_int("LOCAL_RANK", 0)


def is_writer() -> bool:
    """True on the one process that writes shared files and prints results (rank 0)."""
    return rank() == 0


def sharded() -> bool:
    """True inside a process group of several processes: jobs split their work over them."""
    return initialized() and world_size() > 1


def processes() -> int:
    """How many processes a job started now splits its work over (1 outside a group)."""
    return world_size() if sharded() else 1


_GROUPS_JOINED = itertools.count()   # groups this process has joined: the same sequence on every rank


@contextlib.contextmanager
def process_group(device: torch.device | str = "auto") -> Iterator[tuple[torch.device, int]]:
    """Join torchrun's process group for the block; yields (this process's device, rank).

    Alone (no torchrun, or a group joined already by the caller): no group is made or destroyed
    and the device is ``device`` resolved. Under torchrun: NCCL with ``cuda:LOCAL_RANK`` when CUDA
    is there and ``device`` is not ``cpu``, else gloo on the CPU.

    A process may join several groups one after the other (a script that evaluates, then
    predicts): each keeps its keys under its own prefix of torchrun's store (and each restart of
    the job, ``--max-restarts``, its own). With torch's default prefix the second group read the
    first one's addresses and failed to connect.
    """
    from inp_former.config import resolve_device

    if not launched() or initialized():
        yield resolve_device(device), rank()
        return
    use_cuda = torch.cuda.is_available() and str(device) != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    backend = "nccl" if use_cuda else "gloo"
    # torchrun's store, joined as init_process_group joins it (its timeout: torch's for the backend)
    timeout = dist.distributed_c10d._get_default_timeout(backend)
    store, group_rank, world = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    # a restarted job (--max-restarts) finds the keys of the attempt that died in the same store
    prefix = f"inp_former/{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}/group{next(_GROUPS_JOINED)}"
    dist.init_process_group(backend=backend, rank=group_rank, world_size=world, timeout=timeout,
                            store=dist.PrefixStore(prefix, store))
    try:
        yield (torch.device("cuda", local_rank()) if use_cuda else torch.device("cpu")), dist.get_rank()
    finally:
        dist.destroy_process_group()


# --- sharded jobs ------------------------------------------------------------------------------

def block(count: int, rank: int, world: int) -> range:
    """Rank ``rank`` of ``world``'s contiguous block of ``count`` items: ``[count * rank // world,
    count * (rank + 1) // world)``. The blocks in rank order are ``range(count)``; their sizes differ
    by at most one, and some are empty when there are fewer items than processes."""
    return range(count * rank // world, count * (rank + 1) // world)


def share(count: int) -> range:
    """This process's :func:`block` of ``count`` items (all of them alone)."""
    return block(count, rank(), world_size()) if sharded() else range(count)


def _store() -> dist.Store:
    return dist.distributed_c10d._get_default_store()


def _key(name: str) -> str:
    # torchrun restarts a failed job (--max-restarts) with the same store: each attempt its own keys
    return f"inp_former/{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}/{name}"


def _describe(exc: BaseException) -> dict[str, Any]:
    """A failure as the other processes get it: this rank, one line, and the argument it names."""
    if isinstance(exc, InpFormerError):
        return {"rank": rank(), "message": str(exc), "arg": exc.arg, "others": list(exc.others)}
    text = str(exc)
    marker = f"{type(exc).__name__}: "
    if "Original Traceback" in text and marker in text:   # re-raised by a DataLoader worker
        text = text.rsplit(marker, 1)[1]
    lines = text.strip().splitlines()
    return {"rank": rank(), "message": f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__,
            "arg": None, "others": []}


def _stop(failure: dict[str, Any], reported_elsewhere: bool) -> DistributedError:
    return DistributedError(failure["rank"], failure["message"], failure.get("arg"), tuple(failure.get("others") or ()),
                            reported_elsewhere)


def _acknowledge() -> None:
    """Rank 0 reports the failure: the process that failed need not."""
    with contextlib.suppress(RuntimeError):
        _store().set(_key("acknowledged"), "1")


def _first_failure() -> dict[str, Any] | None:
    store = _store()
    if store.add(_key("failures"), 0) == 0:
        return None
    return json.loads(store.get(_key("failure")))  # set right after the first failing process counted itself


def check_peers() -> None:
    """Raise :class:`DistributedError` if a process of the group has failed (nothing alone)."""
    if not sharded():
        return
    failure = _first_failure()
    if failure is not None:
        if is_writer():
            _acknowledge()
        raise _stop(failure, reported_elsewhere=not is_writer())


def _wait_for_acknowledgement() -> bool:
    deadline, delay = time.monotonic() + ACK_SECONDS, POLL_SECONDS[0]
    while time.monotonic() < deadline:
        try:
            if _store().check([_key("acknowledged")]):
                return True
        except RuntimeError:  # the store went with rank 0 (a group of the caller's): say it here
            return False
        time.sleep(delay)
        delay = min(2 * delay, POLL_SECONDS[1])
    return False


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Every process succeeds or all stop, within a bounded time (nothing alone).

    An exception in the block is published to the others (the first one wins). Rank 0 re-raises its
    own error as it is, or raises :class:`DistributedError` for an earlier failure of another rank;
    another rank raises :class:`DistributedError` (its ``reported_elsewhere`` True once rank 0 has
    taken over reporting it, after at most :data:`ACK_SECONDS`). The others stop at their next
    :meth:`Job.advance` or during :meth:`Job.wait`. Reentrant: an inner guard's error passes through.
    """
    if not sharded():
        yield
        return
    try:
        yield
    except DistributedError:
        raise
    except BaseException as exc:  # Ctrl-C and SystemExit stop the others too
        own = _describe(exc)
        try:
            store = _store()
            if store.add(_key("failures"), 1) == 1:
                store.set(_key("failure"), json.dumps(own))
                first = own
            else:
                first = json.loads(store.get(_key("failure")))
        except (RuntimeError, ValueError):  # the store is gone with rank 0: say it here
            raise _stop(own, reported_elsewhere=False) from exc
        if is_writer():
            _acknowledge()
            if first["rank"] == own["rank"]:
                raise
            raise _stop(first, reported_elsewhere=False) from exc  # the cause, not its echo here
        if first["rank"] != own["rank"]:
            raise _stop(first, reported_elsewhere=True) from exc
        raise _stop(own, reported_elsewhere=_wait_for_acknowledgement()) from exc


class Job:
    """The progress of one sharded job: how many items all processes have done, phase by phase.

    Every process must create the same jobs in the same order (their keys in the store are
    numbered), and call :meth:`wait` the same number of times. Alone, the counts are this process's.
    """

    _numbers = itertools.count()

    def __init__(self, name: str = "job") -> None:
        self.name = f"{name}{next(Job._numbers)}"
        self.phase = 0
        self.done = 0   # by this process, in this phase

    def _key(self, what: str) -> str:
        return _key(f"{self.name}/{self.phase}/{what}")

    def advance(self, count: int) -> int:
        """``count`` more items done here; returns the count of all processes in this phase. Raises
        :class:`DistributedError` first if another process has failed."""
        self.done += count
        if not sharded():
            return self.done
        check_peers()
        return _store().add(self._key("done"), count)

    def wait(self, on_count: Callable[[int], None] | None = None, stall_seconds: float = STALL_SECONDS) -> int:
        """Return once every process has called it (ending the phase), with the phase's count of
        all processes; ``on_count`` sees that count as it grows while waiting.

        Raises :class:`DistributedError` when a process failed, or when no process did an item or
        arrived for ``stall_seconds`` (then naming a rank that has not arrived)."""
        if not sharded():
            count, self.phase, self.done = self.done, self.phase + 1, 0
            return count
        store, world = _store(), world_size()
        store.set(self._key(f"arrived/{rank()}"), "1")
        arrived = store.add(self._key("arrived"), 1)
        seen, since, delay = None, time.monotonic(), POLL_SECONDS[0]
        while True:
            check_peers()
            count = store.add(self._key("done"), 0)
            if on_count is not None:
                on_count(count)
            if arrived >= world:
                break
            if (arrived, count) != seen:
                seen, since = (arrived, count), time.monotonic()
            elif time.monotonic() - since > stall_seconds:
                missing = [r for r in range(world) if not store.check([self._key(f"arrived/{r}")])]
                raise _stop({"rank": missing[0] if missing else -1,
                             "message": f"no progress for {stall_seconds:.0f} s (hung, or ended without a word)"},
                            reported_elsewhere=not is_writer())
            time.sleep(delay)
            delay = min(2 * delay, POLL_SECONDS[1])
            arrived = store.add(self._key("arrived"), 0)
        self.phase, self.done = self.phase + 1, 0
        return count


def gather(obj: T) -> list[T] | None:
    """Every process's ``obj`` in rank order on rank 0, None on the others; ``[obj]`` alone."""
    if not sharded():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_writer() else None
    dist.gather_object(obj, out, dst=0)
    return out


def on_writer(fn: Callable[[], T], give: Callable[[T], Any] | None = None) -> T:
    """``fn()`` run on rank 0 alone (writing files, printing), its result given to every process.

    ``give(result)``: what the other processes receive instead of the whole result (e.g. without
    per-image lists). A failure on rank 0 raises there and, as :class:`DistributedError`, on the
    others. Alone: ``fn()``."""
    if not sharded():
        return fn()
    if is_writer():
        try:
            result = fn()
        except BaseException as exc:
            dist.broadcast_object_list([("failed", _describe(exc))], src=0)
            raise
        dist.broadcast_object_list([("done", give(result) if give is not None else result)], src=0)
        return result
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "failed":
        raise _stop(value, reported_elsewhere=True)
    return value


__all__ = ["launched", "initialized", "rank", "world_size", "local_rank", "is_writer", "sharded", "processes",
           "process_group", "block", "share", "check_peers", "guard", "Job", "gather", "on_writer"]
