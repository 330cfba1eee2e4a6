"""Several jobs, one after the other, in each process of one torchrun launch.

    torchrun --nproc-per-node 2 --standalone tests/torchrun_jobs.py JOBS.json

A launch costs about 9 s of CPU before any work (torchrun and two processes importing torch and
timm), so the tests that compare torchrun's files with one process's share one launch
(tests/test_sharded_scoring.py). Each job is an ``inpctl`` command line, run through the CLI's own
entry point as ``python -m inpctl`` runs it, or the library called under a process group of the
caller's (:func:`library_in_callers_group`). Running them in one process also checks that a
process joins a new process group for each job.

JOBS.json: ``{"logs": FOLDER, "jobs": [{"name": ..., "inpctl": [args...], "expect": 0} | {"name":
..., "library": [args...]}]}``. Each job's output goes to ``FOLDER/NAME.rankR.log``, and its exit
status and duration to ``FOLDER/NAME.rankR.json`` (``{"status": 0, "seconds": 1.2}``), so a test
reads what each process printed for its job alone. A job that ends with another status than it
expects (0 unless ``expect`` says otherwise) ends the process with that status at once: torchrun
then stops the other process, which would otherwise wait for it in a collective for half an hour.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path


def inpctl(args: list[str]) -> int:
    """``python -m inpctl ARGS`` in this process: its exit status."""
    from inpctl.cli import main

    sys.argv = ["inpctl", *args]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


# What torchrun tells its processes. The caller's-group job hides them: a Python user's own launcher
# (torch.multiprocessing, a cluster's scheduler) need not set them, and the library must then go by
# the group alone.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def without_torchrun_variables():
    hidden = {key: value for key, value in os.environ.items()
              if key in TORCHRUN_VARIABLES or key.startswith("TORCHELASTIC_")}
    for key in hidden:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(hidden)


def library_in_callers_group(folder: str, checkpoint: str, port: int) -> int:
    """The library in a process group this script made as ``torch.multiprocessing.spawn`` users make
    theirs (a TCP store held by rank 0 on ``port``), with none of torchrun's variables in sight: an
    evaluation, gather/on_writer, a stalled peer and a failing peer. Writes rankR.json."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    Path(folder).mkdir(parents=True, exist_ok=True)
    with without_torchrun_variables():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
        try:
            _library_jobs(folder, checkpoint)
            dist.barrier()   # rank 0 holds the store: it stays until rank 1 is done with it
        finally:
            dist.destroy_process_group()
    return 0


def _library_jobs(folder: str, checkpoint: str) -> None:
    import torch.distributed as dist

    from inp_former import distributed
    from inp_former.errors import DistributedError
    from inp_former.workflow import evaluate_checkpoint

    rank = dist.get_rank()
    report: dict = {}
    outcome = evaluate_checkpoint(checkpoint, out_dir=Path(folder) / "eval", device="cpu")
    report["mean"] = outcome.result.mean
    report["rows"] = len(outcome.result.rows)
    report["gathered"] = distributed.gather(rank * 10)
    report["given"] = distributed.on_writer(lambda: "from rank 0")

    job = distributed.Job("stall")   # rank 1 is late: rank 0 gives up after 1 s without progress
    start = time.monotonic()
    try:
        if rank == 1:
            time.sleep(3)
        job.wait(stall_seconds=1)
    except DistributedError as exc:
        report["stall"] = {"message": str(exc), "seconds": time.monotonic() - start}

    job = distributed.Job("failure")   # rank 1 fails: rank 0, waiting, reports it
    start = time.monotonic()
    try:
        with distributed.guard():
            if rank == 1:
                raise OSError("disk full")
            job.wait()
    except DistributedError as exc:
        report["failure"] = {"message": str(exc), "rank": exc.rank, "reported_elsewhere": exc.reported_elsewhere,
                             "seconds": time.monotonic() - start}
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(report))


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    logs, rank = Path(spec["logs"]), os.environ["RANK"]
    logs.mkdir(parents=True, exist_ok=True)
    for job in spec["jobs"]:
        name, start = job["name"], time.monotonic()
        with (logs / f"{name}.rank{rank}.log").open("w") as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                status = inpctl(job["inpctl"]) if "inpctl" in job else library_in_callers_group(*job["library"])
            except BaseException:   # recorded for the job's test
                traceback.print_exc()
                status = 1
        outcome = {"status": status, "seconds": time.monotonic() - start}
        (logs / f"{name}.rank{rank}.json").write_text(json.dumps(outcome))
        if status != job.get("expect", 0):
            os._exit(status or 1)


if __name__ == "__main__":
    main(sys.argv[1])
