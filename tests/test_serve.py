"""``inpctl serve`` (issue #15): the real server, started as ``python3 -m inpctl serve`` on 127.0.0.1,
driven over HTTP with httpx.

One tiny model (random ViT-S at 64 -> 56 px, 3 training steps, thresholds stored as inpctl eval
would) is made once for the module; one server is shared by most tests; the SIGTERM test starts
its own. Needs the serve extra (``pip install -e ".[serve]"``, also in ``.[dev]``).
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import csv
import io
import json
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from tests.datagen import make_mvtec_tree  # noqa: E402
from tests.helpers import tiny_config, tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("bottle", "cable")
STARTUP_S = 240  # importing torch and loading the model on a busy 2-core CI box is slow
# fp32, the reference path: scores then equal whatever batch an image shares (bf16 kernels vary with
# the batch size), so serve's scores can be compared with predict's to 1e-6
SERVER_FLAGS = ["--max-batch", "4", "--max-wait-ms", "20", "--max-queue", "6", "--max-upload-mb", "2",
                "--precision", "fp32"]


# --- the model, the images, the server ----------------------------------------------------------

@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """(checkpoint, folder of images to score): a tiny model trained for 3 steps with thresholds
    stored in its checkpoint, and images in every mode the loader converts."""
    from inp_former.checkpoint import save_checkpoint
    from inp_former.config import DataConfig, RunConfig
    from inp_former.data import image_transform, load_rgb
    from inp_former.losses import coherence_loss, soft_mining_loss
    from inp_former.predictor import Predictor
    from inp_former.thresholds import Calibration, store_calibration

    base = tmp_path_factory.mktemp("serve")
    root = make_mvtec_tree(base / "data", categories=CATEGORIES)
    cfg = RunConfig(model=tiny_config(), data=DataConfig(root=str(root), categories=CATEGORIES))
    model = tiny_model(seed=0)
    transform = image_transform(cfg.model.resize, cfg.model.crop)
    batch = torch.stack([transform(load_rgb(p)) for p in sorted(root.glob("*/train/good/*.png"))])
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    for _ in range(3):
        out = model(batch)
        loss = soft_mining_loss(out.encoder_groups, out.decoder_groups) + 0.2 * coherence_loss(out.prototype_distance)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ckpt = base / "checkpoint.pt"
    save_checkpoint(ckpt, model.eval(), cfg)

    inputs = base / "inputs"
    inputs.mkdir()
    for path in sorted(root.glob("*/test/*/*.png")):
        Image.open(path).save(inputs / f"{path.parts[-4]}_{path.parts[-2]}_{path.name}")
    rgb = np.asarray(Image.open(sorted(inputs.iterdir())[0]).convert("RGB"))
    Image.fromarray(rgb).convert("L").save(inputs / "gray.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(inputs / "gray16.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(inputs / "rgba.png")
    Image.fromarray(rgb).convert("P").save(inputs / "palette.png")
    Image.fromarray(rgb).save(inputs / "photo.jpg", quality=90)

    # thresholds as inpctl eval stores them: pooled and per category, between two scores
    predictor = Predictor.from_checkpoint(ckpt, "cpu")
    scores = {p.name: predictor.predict(p).score for p in sorted(inputs.iterdir())}
    values = sorted(scores.values())

    def between(vals):
        vals = sorted(vals)
        middle = len(vals) // 2
        return (vals[middle - 1] + vals[middle]) / 2

    categories = {c: {"image_threshold": between([s for n, s in scores.items() if n.startswith(c)])}
                  for c in CATEGORIES}
    store_calibration(ckpt, Calibration(image_threshold=between(values), categories=categories,
                                        score_range={"min": values[0], "max": values[-1]},
                                        map_range=[0.0, 2 * values[-1]]))
    return ckpt, inputs


class Server:
    def __init__(self, ckpt: Path, log: Path, *flags: str) -> None:
        self.log = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "inpctl", "serve", "--ckpt", str(ckpt), "--host",
                                      "127.0.0.1", "--port", "0", "--device", "cpu", *flags],
                                     stdout=self.handle, stderr=subprocess.STDOUT, cwd=REPO)
        self.url = self._wait_until_ready()

    def events(self) -> list[dict]:
        """The JSON lines of the server's log (access log and events)."""
        lines = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def _wait_until_ready(self) -> str:
        deadline = time.monotonic() + STARTUP_S
        url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"inpctl serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if url is None:
                url = next((e["url"] for e in self.events() if e.get("event") == "listening"), None)
            if url is not None:
                try:
                    response = httpx.get(url + "/healthz", timeout=5)
                    if response.status_code == 200:
                        return url
                    assert response.status_code == 503 and response.json()["status"] == "loading"
                except httpx.TransportError:
                    pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"inpctl serve not ready after {STARTUP_S} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    ckpt, _ = model_files
    srv = Server(ckpt, tmp_path_factory.mktemp("server") / "server.log", *SERVER_FLAGS)
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


def post(url: str, files: list[tuple[str, bytes]], params: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(url + "/predict", files=[("files", (name, data)) for name, data in files], params=params,
                      timeout=60, **kwargs)


def read(path: Path) -> tuple[str, bytes]:
    return path.name, path.read_bytes()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def assert_json_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


# --- the contract ---------------------------------------------------------------------------------

def test_healthz_describes_the_model(server, model_files):
    response = httpx.get(server.url + "/healthz", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    model = body["model"]
    assert model["encoder"] == "small"
    assert model["categories"] == list(CATEGORIES)
    assert model["threshold"] > 0 and model["threshold_source"] == "checkpoint"
    assert set(model["category_thresholds"]) == set(CATEGORIES)
    assert "score >= threshold" in model["label_rule"]  # one rule on every surface


def test_scores_equal_inpctl_predict(server, model_files, tmp_path):
    """Same checkpoint, same files: serve's scores are predict's (same preprocessing), for RGB,
    grayscale, 16-bit, RGBA, palette and JPEG files; labels follow score >= threshold."""
    from typer.testing import CliRunner

    from inpctl.cli import app

    ckpt, inputs = model_files
    out = tmp_path / "predict"   # in this process: what is compared is predict's scores, not its start-up
    result = CliRunner().invoke(app, ["predict", str(inputs), "--ckpt", str(ckpt), "--out", str(out), "--device",
                                      "cpu", "--no-overlays", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    expected = {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader((out / "predictions.csv").open())}
    files = sorted(inputs.iterdir())
    assert len(expected) == len(files) == 13

    predictions = []
    for start in range(0, len(files), 6):  # --max-queue 6: at most 6 images per request
        response = post(server.url, [read(p) for p in files[start:start + 6]])
        assert response.status_code == 200, response.text
        body = response.json()
        predictions += body["predictions"]
    assert [p["filename"] for p in predictions] == [p.name for p in files]  # one per file, in order
    threshold = body["model"]["threshold"]
    for p in predictions:
        assert p["score"] == pytest.approx(expected[p["filename"]], abs=1e-6), p["filename"]
        assert p["threshold"] == threshold and p["category"] is None
        assert p["label"] == int(p["score"] >= threshold)
        assert "overlay" not in p and "error" not in p
    assert {p["label"] for p in predictions} == {0, 1}  # the threshold splits them: labels are tested

    # one file per request (other batch compositions) gives the same scores
    single = post(server.url, [read(files[3])]).json()["predictions"][0]
    assert single["score"] == pytest.approx(expected[files[3].name], abs=1e-6)


def test_category_threshold_and_overlays(server, model_files):
    _, inputs = model_files
    files = sorted(inputs.glob("cable_*.png"))
    response = post(server.url, [read(p) for p in files], params={"category": "cable", "maps": "1"})
    assert response.status_code == 200, response.text
    body = response.json()
    threshold = body["model"]["category_thresholds"]["cable"]
    assert threshold != body["model"]["threshold"]
    for p in body["predictions"]:
        assert p["category"] == "cable" and p["threshold"] == threshold
        assert p["category_source"] == "given" and p["threshold_source"] == "checkpoint"
        assert p["label"] == int(p["score"] >= threshold)
        overlay = Image.open(io.BytesIO(base64.b64decode(p["overlay"])))
        assert overlay.format == "PNG" and overlay.size == (56, 56)  # the crop the model sees
    assert {p["label"] for p in body["predictions"]} == {0, 1}


def test_unknown_category_lists_the_known_ones(server, model_files):
    _, inputs = model_files
    body = assert_json_error(post(server.url, [read(sorted(inputs.iterdir())[0])], params={"category": "carpet"}), 400)
    assert "carpet" in body["error"] and "bottle, cable" in body["error"]
    assert body["categories"] == list(CATEGORIES)


def test_corrupt_file_among_good_ones(server, model_files):
    """Bad files are named, each with its own error; the good ones are still scored, in order."""
    _, inputs = model_files
    good = [read(p) for p in sorted(inputs.glob("bottle_*.png"))[:2]]
    truncated = ("truncated.png", good[0][1][: len(good[0][1]) // 2])
    files = [good[0], ("notes.png", b"this is not an image"), good[1], truncated, ("empty.png", b"")]
    body = assert_json_error(post(server.url, files), 400)
    assert "3 of 5" in body["error"]
    for name in ("notes.png", "truncated.png", "empty.png"):
        assert name in body["error"]
    predictions = body["predictions"]
    assert [p["filename"] for p in predictions] == [name for name, _ in files]
    alone = post(server.url, good).json()["predictions"]
    for index, expected in ((0, alone[0]), (2, alone[1])):
        assert predictions[index]["score"] == pytest.approx(expected["score"], abs=1e-6)
        assert "error" not in predictions[index]
    for index in (1, 3, 4):
        assert predictions[index]["score"] is None and predictions[index]["label"] is None
        assert predictions[index]["error"]
    assert "not a readable image" in predictions[1]["error"]


def test_bad_requests_are_json_4xx(server):
    assert_json_error(httpx.post(server.url + "/predict", timeout=30), 400)                        # no body
    assert_json_error(httpx.post(server.url + "/predict", data={"files": "x"}, timeout=30), 400)    # not a file
    assert_json_error(post(server.url, [("a.png", b"x")], params={"maps": "maybe"}), 400)
    assert_json_error(httpx.get(server.url + "/predict", timeout=30), 405)
    assert_json_error(httpx.get(server.url + "/nowhere", timeout=30), 404)
    body = assert_json_error(post(server.url, [(f"{i}.png", b"x") for i in range(7)]), 413)     # > --max-queue
    assert "--max-queue" in body["error"]


def test_too_large_uploads_are_413(server):
    big = b"\0" * (3 * 1024 * 1024)  # --max-upload-mb 2
    body = assert_json_error(post(server.url, [("big.png", big)]), 413)
    assert "--max-upload-mb" in body["error"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(6):
            yield b"\0" * (512 * 1024)
        yield b"\r\n--b--\r\n"

    response = httpx.post(server.url + "/predict", content=chunks(), timeout=60,
                          headers={"content-type": "multipart/form-data; boundary=b"})
    assert_json_error(response, 413)


def test_decompression_bombs_are_refused_before_decoding(server, model_files):
    _, inputs = model_files
    for width, height in ((50_000, 50_000), (7_000, 7_000)):  # Pillow's own limit; ours (40 MP)
        bomb = ("bomb.png", png_header(width, height))
        assert len(bomb[1]) < 2000
        started = time.monotonic()
        body = assert_json_error(post(server.url, [bomb, read(sorted(inputs.iterdir())[0])]), 413)
        assert time.monotonic() - started < 20  # not decoded (7.5 GB for the first)
        assert "bomb.png" in body["error"]
        assert body["predictions"][0]["error"] and body["predictions"][1]["score"] is not None
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200


def test_web_page_is_self_contained(server):
    response = httpx.get(server.url + "/", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    text = response.text
    for needed in ('type="file"', 'type="range"', "/predict?maps=1", "/healthz"):
        assert needed in text
    assert "http://" not in text and "https://" not in text and "src=\"//" not in text  # nothing fetched


def test_concurrent_load_gets_only_200_and_503(server, model_files):
    """100 requests from 24 clients against --max-queue 6: some wait, some are told to come back;
    none fails otherwise; images of concurrent requests share forward passes; the server lives."""
    _, inputs = model_files
    image = read(sorted(inputs.iterdir())[0])
    before = httpx.get(server.url + "/healthz", timeout=30).json()["queue"]
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=24)) as client:
        def one(_: int) -> httpx.Response:
            return client.post(server.url + "/predict", files=[("files", image)])

        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            responses = list(pool.map(one, range(100)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]
        else:
            assert r.json()["predictions"][0]["score"] is not None
    after = httpx.get(server.url + "/healthz", timeout=30).json()["queue"]
    images, batches = after["images"] - before["images"], after["batches"] - before["batches"]
    assert images == statuses.count(200)
    assert batches < images  # micro-batching: several requests per forward pass


def test_upload_folder_in_the_file_name_picks_the_category(server, model_files):
    """A browser that sends a folder with the file (``cable/000.png``) gets that category's threshold."""
    _, inputs = model_files
    name, data = read(sorted(inputs.glob("cable_*.png"))[0])
    body = post(server.url, [("cable/" + name, data), (name, data)]).json()
    by_folder, plain = body["predictions"]
    assert by_folder["category"] == "cable" and by_folder["category_source"] == "path"
    assert by_folder["threshold"] == body["model"]["category_thresholds"]["cable"]
    assert plain["category"] is None and plain["category_source"] == "pooled"   # no references stored here
    assert plain["threshold"] == body["model"]["threshold"]


def _raw_request(url: str, head: bytes, body: bytes, read_answer: bool = True,
                 status_line_only: bool = False) -> bytes:
    """Send ``head`` and ``body`` on a plain socket; the answer's bytes (b"" if the server reset), up to the
    server's close, or with ``status_line_only`` up to the end of the status line (not waiting for the
    server to close a kept-alive connection)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + body)
        if not read_answer:
            return b""
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if status_line_only and b"\r\n" in b"".join(chunks):
                    break
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def test_over_limit_uploads_get_their_413_in_ordinary_clients(server):
    """urllib (no Expect header, the whole body on its way) and a client that asks with
    ``Expect: 100-continue`` (as curl does) both read the 413, not a reset connection."""
    import urllib.error
    import urllib.request

    big = b"\0" * (3 * 1024 * 1024)  # --max-upload-mb 2
    request = urllib.request.Request(server.url + "/predict", data=big, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=b"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413 and "--max-upload-mb" in json.loads(caught.value.read())["error"]

    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(big))
    # the body is never sent: the answer comes first
    answer = _raw_request(server.url, head, b"", status_line_only=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_client_that_leaves_mid_upload_is_a_499_not_a_500(server):
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n")
    _raw_request(server.url, head, b"--b\r\nContent-Disposition: form-data; name=\"files\"; "
                                   b"filename=\"a.png\"\r\n\r\n" + b"\0" * 1000, read_answer=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = [e["status"] for e in server.events() if e.get("path") == "/predict" and "status" in e]
        if 499 in statuses:
            break
        time.sleep(0.2)
    assert 499 in statuses
    log = server.log.read_text()
    assert "Traceback" not in log and '"status": 500' not in log


def test_nothing_a_client_sends_is_a_500(server):
    """Odd but possible requests: each gets a 4xx JSON answer (or 200), never a 500."""
    odd = [
        (b"Content-Type: text/plain", b"hello"),
        (b"Content-Type: multipart/form-data", b"--x\r\n"),                            # no boundary
        (b"Content-Type: multipart/form-data; boundary=b", b"garbage without parts"),
        (b"Content-Type: multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n"),
        (b"Content-Type: application/x-www-form-urlencoded", b"files=%ZZ&&="),
        (b"Content-Type: multipart/form-data; boundary=b",
         b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"\xff\xfe.png\"\r\n\r\nx\r\n--b--\r\n"),
    ]
    for header, body in odd:
        head = b"POST /predict?category= HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nContent-Length: %d\r\n" \
            b"Connection: close\r\n\r\n" % len(body)
        answer = _raw_request(server.url, head, body)
        status = int(answer.split(b" ", 2)[1])
        assert 200 <= status < 500, (header, body, answer[:300])
    assert '"status": 500' not in server.log.read_text()


def test_access_log_is_one_json_line_per_request(server, model_files):
    _, inputs = model_files
    post(server.url, [read(p) for p in sorted(inputs.iterdir())[:3]])
    time.sleep(0.5)
    lines = [e for e in server.events() if "status" in e]
    last = [e for e in lines if e["path"] == "/predict"][-1]
    assert last["status"] == 200 and last["images"] == 3 and last["method"] == "POST"
    assert last["latency_ms"] > 0 and "time" in last


# --- shutdown --------------------------------------------------------------------------------------

def test_sigterm_finishes_in_flight_requests_and_exits_0(model_files, tmp_path):
    """Requests admitted before SIGTERM complete with 200; then the process exits with 0."""
    ckpt, inputs = model_files
    srv = Server(ckpt, tmp_path / "server.log", "--max-batch", "16", "--max-wait-ms", "8000")
    files = [read(p) for p in sorted(inputs.iterdir())[:2]]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(post, srv.url, files) for _ in range(4)]
            deadline = time.monotonic() + 60  # all 8 images admitted: they wait for the batch to fill
            while httpx.get(srv.url + "/healthz", timeout=30).json()["queue"]["waiting"] < 8:
                assert time.monotonic() < deadline, "the requests never reached the queue"
                time.sleep(0.05)
            srv.proc.send_signal(signal.SIGTERM)
            responses = [f.result(timeout=120) for f in futures]
        assert [r.status_code for r in responses] == [200] * 4
        assert all(p["score"] is not None for r in responses for p in r.json()["predictions"])
        assert srv.proc.wait(120) == 0, srv.log.read_text()
        events = [e.get("event") for e in srv.events()]
        assert "shutting_down" in events and events[-1] == "stopped"
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(srv.url + "/healthz", timeout=5)
    finally:
        srv.stop()


# --- in-process: the batcher, timeouts, the missing extra ----------------------------------------

def test_batcher_batches_bounds_and_drops_cancelled():
    from inp_former.serve.batcher import MicroBatcher, QueueFull

    sizes: list[int] = []
    release = threading.Event()
    entered = threading.Event()

    def run_batch(batch: torch.Tensor) -> list[float]:
        entered.set()
        release.wait(10)
        sizes.append(len(batch))
        return batch[:, 0].tolist()

    batcher = MicroBatcher(run_batch, max_batch=4, max_wait_s=0.05, max_queue=3)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit([torch.tensor([1.0])]))
        await asyncio.sleep(0)
        assert await asyncio.to_thread(entered.wait, 10)            # in the model: no longer waiting
        queued = asyncio.ensure_future(batcher.submit([torch.tensor([2.0]), torch.tensor([3.0])]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):                               # 2 waiting + 2 > 3: all or nothing
            await batcher.submit([torch.tensor([4.0]), torch.tensor([5.0])])
        gone = asyncio.ensure_future(batcher.submit([torch.tensor([6.0])]))
        await asyncio.sleep(0)
        gone.cancel()                                                # a request that timed out
        release.set()
        assert await first == [1.0]
        assert await queued == [2.0, 3.0]
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(scenario())
    batcher.close(10)
    assert sizes == [1, 2]  # 2 and 3 shared one pass; the cancelled 6 was never run

def test_a_draining_batcher_runs_what_is_queued_without_waiting_for_a_fuller_batch():
    """Shutting down, no more requests will come: an image waiting for company (max_wait_s of a
    minute here) runs as soon as drain() is called."""
    from inp_former.serve.batcher import MicroBatcher

    batcher = MicroBatcher(lambda batch: batch[:, 0].tolist(), max_batch=8, max_wait_s=60.0)

    async def scenario() -> list[float]:
        waiting = asyncio.ensure_future(batcher.submit([torch.tensor([7.0])]))
        for _ in range(200):                     # until the image is queued (bounded: 2 s)
            if batcher.waiting:
                break
            await asyncio.sleep(0.01)
        assert batcher.waiting == 1 and not waiting.done()
        batcher.drain()
        return await asyncio.wait_for(waiting, timeout=30)   # far under the 60 s it would wait

    assert asyncio.run(scenario()) == [7.0]
    batcher.close(10)



def test_request_timeout_is_504(model_files):
    from starlette.testclient import TestClient

    from inp_former.predictor import Predictor
    from inp_former.serve import ServeConfig, create_app

    ckpt, inputs = model_files
    predictor = Predictor.from_checkpoint(ckpt, "cpu")
    real = predictor.predict_tensor

    def slow(batch, paths=None):
        time.sleep(1.0)
        return real(batch, paths)

    predictor.predict_tensor = slow
    app = create_app(predictor, ServeConfig(ckpt, request_timeout_s=0.3))
    with TestClient(app) as client:
        response = client.post("/predict", files=[("files", read(sorted(inputs.iterdir())[0]))])
        assert_json_error(response, 504)
        assert client.get("/healthz").status_code == 200


def test_missing_extra_is_one_clear_line(monkeypatch):
    import importlib.util

    import inp_former.serve as serve_pkg

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'inpctl\[serve\]'"):
        serve_pkg.require_web_stack()
