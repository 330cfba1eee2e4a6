"""Load test of ``inpctl serve``: K concurrent clients for T seconds over loopback.

Reports requests/s, images/s, p50/p95/p99 latency, errors by status and the server's RSS at start
and end, and compares images/s with the model's own batch throughput (``Predictor.predict_tensor``
at batch 16, what ``inpctl predict`` runs) measured in the same run on the same machine.

    # a small random-weights model (speed does not depend on weight values), then the load test:
    python3 -m bench.studies.serve_load --make-ckpt /tmp/vits224.pt --clients 8 --seconds 30 \
        --out bench/results/serve-cpu-$(date +%F)
    # or against a server already running (pass its pid for the RSS):
    python3 -m bench.studies.serve_load --url http://127.0.0.1:8000 --pid 1234 --ckpt ckpt.pt

Run from the repository root. Loopback only: the script refuses a --url that is not
127.0.0.1/localhost. Every loop is bounded in time (``--seconds``) and the client count is fixed
(``--clients``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import http.client
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_checkpoint(path: Path, encoder: str, resize: int, crop: int) -> None:
    """A checkpoint of an untrained INP-Former on a random-weights DINOv2 encoder."""
    import torch

    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import DataConfig, ModelConfig, RunConfig
    from inp_former.model import INPFormer

    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder=encoder, encoder_weights="random", resize=resize, crop=crop,
                                      map_size=min(256, crop)),
                    data=DataConfig(categories=("bench",)))
    save_checkpoint(path, INPFormer(cfg.model), cfg, meta={"note": "random weights, for speed benchmarks only"})


def sample_image(size: int = 256) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = "inpctl-bench-boundary"
    parts = []
    for index, data in enumerate(images):
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{index}.png\"\r\n"
                     "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(ckpt: Path, flags: list[str], log: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    handle = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "inpctl", "serve", "--ckpt", str(ckpt), "--host", "127.0.0.1",
                             "--port", "0", *flags], stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    deadline, url = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"inpctl serve exited with {proc.returncode}:\n{log.read_text()}")
        for line in log.read_text().splitlines():
            if line.startswith("{") and '"listening"' in line:
                url = json.loads(line)["url"]
        if url and health(url) == 200:
            return proc, url
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"inpctl serve not ready after {timeout:g} s:\n{log.read_text()}")


def health(url: str) -> int | None:
    parts = urllib.parse.urlsplit(url)
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def load(url: str, clients: int, seconds: float, body: bytes, content_type: str, images_per_request: int,
         warmup_s: float) -> dict:
    """``clients`` threads, each with its own keep-alive connection, posting back to back."""
    parts = urllib.parse.urlsplit(url)
    stop_at = time.monotonic() + warmup_s + seconds
    measure_from = time.monotonic() + warmup_s
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        while time.monotonic() < stop_at:
            start = time.monotonic()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
            end = time.monotonic()
            if start >= measure_from and end <= stop_at:
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == "200":
                        latencies.append(end - start)
            if status == "503":
                time.sleep(0.05)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + warmup_s + 180)
    ok = statuses.get("200", 0)

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(1000 * statistics.quantiles(latencies, n=100, method="inclusive")[int(q) - 1], 1)

    return {"clients": clients, "seconds": seconds, "warmup_s": warmup_s, "images_per_request": images_per_request,
            "requests_ok": ok, "requests_per_s": round(ok / seconds, 2),
            "images_per_s": round(ok * images_per_request / seconds, 2),
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                           "mean": round(1000 * statistics.fmean(latencies), 1) if latencies else None},
            "statuses": statuses, "errors": sum(n for s, n in statuses.items() if s != "200")}


def batch_throughput(ckpt: Path, image: bytes, batch: int = 16, repeats: int = 5) -> dict:
    """Images/s of Predictor.predict_tensor on preprocessed batches of ``batch``: inpctl predict's path."""
    import torch
    from PIL import Image

    from inp_former.predictor import Predictor

    try:
        from inp_former.runtime import configure_cpu_threads

        configure_cpu_threads()
    except ImportError:
        pass
    predictor = Predictor.from_checkpoint(ckpt, "cpu")
    tensor = predictor.transform(Image.open(io.BytesIO(image)).convert("RGB"))
    stacked = torch.stack([tensor] * batch)
    predictor.predict_tensor(stacked)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_tensor(stacked)
        times.append(time.perf_counter() - start)
    best, median = min(times), statistics.median(times)
    return {"batch": batch, "repeats": repeats, "seconds_per_batch_median": round(median, 3),
            "images_per_s_median": round(batch / median, 2), "images_per_s_best": round(batch / best, 2),
            "torch_threads": torch.get_num_threads()}


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "starlette", "uvicorn", "python-multipart", "pillow", "inpctl"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def markdown(result: dict) -> str:
    load_, batch, cfg = result["load"], result["batch_throughput"], result["model"]
    lat = load_["latency_ms"]
    ratio = f"{100 * load_['images_per_s'] / batch['images_per_s_median']:.0f}%" if batch else "—"
    lines = [
        f"# inpctl serve load test, CPU, {result['date']}",
        "",
        f"- machine: {result['machine']}",
        f"- model: {cfg}",
        "- encoder weights: random (speed does not depend on weight values)",
        f"- command: `{result['command']}`",
        f"- server flags: `{' '.join(result['server_flags']) or '(defaults)'}`",
        f"- versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| clients x duration | {load_['clients']} x {load_['seconds']:g} s (after {load_['warmup_s']:g} s warm-up) |",
        f"| images per request | {load_['images_per_request']} |",
        f"| requests/s | {load_['requests_per_s']} |",
        f"| images/s (served) | {load_['images_per_s']} |",
        f"| latency p50 / p95 / p99 | {lat['p50']} / {lat['p95']} / {lat['p99']} ms |",
        f"| errors | {load_['errors']} ({load_['statuses']}) |",
        f"| server RSS start / end | {result['server_rss_mb']['start']} / {result['server_rss_mb']['end']} MB |",
        f"| batch throughput, predict_tensor at batch 16 | {batch['images_per_s_median'] if batch else '—'} images/s "
        f"(mean of before/after the load: {batch['images_per_s_before_load'] if batch else '—'} / "
        f"{batch['images_per_s_after_load'] if batch else '—'}; each a median of {batch['repeats'] if batch else 0}"
        " batches) |",
        f"| served / batch throughput | {ratio} |",
        "",
        result.get("note", ""),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    try:  # the same CPU thread settings as the inpctl CLI (and so the server), for a fair comparison
        from inp_former.runtime import apply_env_defaults

        apply_env_defaults()  # before torch is imported
    except ImportError:
        pass
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (loopback only); default: start one")
    parser.add_argument("--pid", type=int, help="the running server's pid, for its RSS")
    parser.add_argument("--ckpt", type=Path, help="checkpoint to serve / to measure the batch throughput of")
    parser.add_argument("--make-ckpt", type=Path, help="write a random-weights checkpoint here first and use it")
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--server-flags", default="--device cpu --max-batch 16 --max-wait-ms 5")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    if args.make_ckpt:
        make_checkpoint(args.make_ckpt, args.encoder, args.resize, args.crop)
        args.ckpt = args.make_ckpt
    image = sample_image()
    body, content_type = multipart([image] * args.images_per_request)
    server_flags = args.server_flags.split()
    proc = None
    if args.url:
        if urllib.parse.urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--url: loopback only (127.0.0.1/localhost)")
        url, pid = args.url.rstrip("/"), args.pid
    else:
        if args.ckpt is None:
            raise SystemExit("give --ckpt or --make-ckpt (or --url of a running server)")
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-load-{os.getpid()}.log"
        proc, url = start_server(args.ckpt, server_flags, log)
        pid = proc.pid
    try:
        # the model's own batch throughput, with the server idle, in this process; before and after
        # the load, as other work on a shared machine changes what a core gives
        before = batch_throughput(args.ckpt, image) if args.ckpt else None
        rss_start = rss_mb(pid)
        result_load = load(url, args.clients, args.seconds, body, content_type, args.images_per_request, args.warmup)
        rss_end = rss_mb(pid)
        after = batch_throughput(args.ckpt, image) if args.ckpt else None
        batch = None
        if before and after:
            batch = {**after, "images_per_s_before_load": before["images_per_s_median"],
                     "images_per_s_after_load": after["images_per_s_median"],
                     "images_per_s_median": round((before["images_per_s_median"]
                                                   + after["images_per_s_median"]) / 2, 2)}
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    model = None
    if args.ckpt:
        from inp_former.checkpoint import read_checkpoint

        m = read_checkpoint(args.ckpt)["config"]["model"]
        model = f"{m['encoder']} ({m['encoder_weights']} weights), resize {m['resize']}, crop {m['crop']}, " \
                f"map {m['map_size']}"
    result = {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other work), "
                   f"{platform.system()} {platform.release()}",
        "command": " ".join(["python3 -m bench.studies.serve_load", *sys.argv[1:]]),
        "server_flags": server_flags, "model": model, "versions": versions(),
        "load": result_load, "server_rss_mb": {"start": rss_start and round(rss_start, 1),
                                               "end": rss_end and round(rss_end, 1)},
        "batch_throughput": batch, "note": args.note,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
