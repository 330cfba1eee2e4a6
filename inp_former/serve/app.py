"""The HTTP API: ``create_app(predictor, config)`` -> an ASGI app (Starlette).

Routes: ``GET /`` (the web page), ``GET /healthz``, ``POST /predict``. Every answer is JSON except
the page; every error is ``{"error": "..."}`` with a 4xx/5xx status, and bad input is never a 500.
The contract is written out in docs/deployment.md.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime as _dt
import io
import json
import logging
import os
import sys
import time
from typing import Any, AsyncIterator, Callable

from inp_former.serve.batcher import MicroBatcher, QueueFull, ShuttingDown
from inp_former.serve.config import ServeConfig
from inp_former.serve.images import UploadError, decode_image
from inp_former.thresholds import LABEL_RULE

try:  # the web stack is an optional extra; inp_former.serve.require_web_stack says how to get it
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from inp_former.serve.config import MISSING_EXTRA

    raise ImportError(MISSING_EXTRA) from exc

ACCESS_LOG = logging.getLogger("inp_former.serve.access")
CLIENT_CLOSED = 499   # logged for a client that disconnected before its answer
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


class BodyTooLarge(Exception):
    pass


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


# --- model state ---------------------------------------------------------------------------------

class ModelState:
    """The one model of the process, its batcher and what /healthz tells; loaded in a thread."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.predictor: Any = None
        self.batcher: MicroBatcher | None = None
        self.info: dict[str, Any] = {}
        self.load_error: str | None = None

    def attach(self, predictor: Any) -> None:
        self.info = model_info(predictor, self.config)
        # The worker thread runs exactly what inpctl predict runs on a stacked batch: predict_tensor.
        # A tiled model takes one whole image at a time (of any size; its tiles form the batches).
        images = 1 if getattr(predictor, "tiled", False) else self.config.max_batch
        self.batcher = MicroBatcher(lambda batch: predictor.predict_tensor(batch), images,
                                    self.config.max_wait_ms / 1000.0, self.config.max_queue)
        self.predictor = predictor  # last: /healthz says ok only once everything is ready


def model_info(predictor: Any, config: ServeConfig) -> dict[str, Any]:
    """What clients may want to know about the model (in /healthz and every /predict answer)."""
    cfg, calibration = predictor.cfg, predictor.calibration
    categories = dict(calibration.categories) if calibration is not None else {}
    return {
        "checkpoint": str(config.checkpoint),
        "encoder": cfg.model.encoder,
        "categories": predictor.decision.categories,  # the valid values of ?category=
        "trained_categories": list(cfg.data.categories),
        "threshold": predictor.threshold,
        "threshold_source": predictor.threshold_source,
        "category_thresholds": {name: values.get("image_threshold") for name, values in sorted(categories.items())},
        "label_rule": LABEL_RULE,
        "map_mode": str(predictor.map_mode),
        "precision": str(predictor.precision),
        "precision_reason": predictor.inference.precision_reason(predictor.device),
        "runtime": predictor.runtime,               # torch or openvino, and why (inference.choose_runtime)
        "runtime_reason": predictor.runtime_reason,
        "input": {"resize": cfg.model.resize, "crop": cfg.model.crop, "map_size": cfg.model.map_size,
                  **({"keep_aspect": True, "input_size": list(cfg.model.input_hw), "map": list(cfg.model.map_hw)}
                     if cfg.model.keep_aspect else {}),
                  **({"tile": cfg.model.tile, "tile_overlap": cfg.model.tile_overlap, "map": "full resolution"}
                     if cfg.model.tile is not None else {})},
        "device": str(predictor.device),
        "max_batch": config.max_batch,
    }


# --- middleware (plain ASGI, so they also see what Starlette's own error handling answers) ----------

class UploadLimit:
    """413 for a body over ``max_bytes``, in a way ordinary HTTP clients receive.

    A client that sends ``Expect: 100-continue`` (curl does for large bodies) with a Content-Length
    over the limit is answered at once: it has not sent the body yet. Any other client is sending
    its body already, and closing on it makes the client see a reset connection instead of the
    answer; so the rest of its body is read and discarded (up to ``DRAIN_BYTES`` more, then the
    answer goes out anyway) before the 413.
    """

    DRAIN_BYTES = 256 * 2**20   # bounded: past this a client gets the 413 and the connection closes

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _message(self, size: str) -> str:
        return f"request body of {size}: more than the limit of {self.max_bytes / 2**20:g} MB (--max-upload-mb)"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            if b"100-continue" not in headers.get(b"expect", b"").lower():
                await _drain(receive, self.DRAIN_BYTES)
            return await error(413, self._message(f"{int(length)} bytes"))(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, self.DRAIN_BYTES)
                    raise BodyTooLarge(self._message(f"more than {self.max_bytes} bytes"))
            return message

        await self.app(scope, limited, send)


async def _drain(receive: Callable, limit: int) -> None:
    """Read and drop the rest of a request body, at most ``limit`` bytes (and until the client leaves)."""
    dropped = 0
    while dropped <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class AccessLog:
    """One JSON line per request: time, method, path, status, images, latency_ms, client.

    A client that went away before its answer is logged with status 499 (nginx's "client closed
    request"), whatever the app was about to answer: it is not the server's fault."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        started = gone = False

        async def watch() -> dict:
            nonlocal gone
            message = await receive()
            gone = gone or (message["type"] == "http.disconnect" and not started)
            return message

        async def record(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                status[0], started = message["status"], True
            await send(message)

        try:
            await self.app(scope, watch, record)
        except ClientDisconnect:
            gone = True
        finally:
            if gone:
                status[0] = CLIENT_CLOSED
            client = scope.get("client")
            ACCESS_LOG.info(json.dumps({
                "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                "method": scope.get("method"), "path": scope.get("path"), "status": status[0],
                "images": scope.get("inpctl.images", 0),
                "latency_ms": round(1000 * (time.perf_counter() - start), 2),
                "client": client[0] if client else None}))


def _ensure_log_handler() -> None:
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.setLevel(logging.INFO)
        ACCESS_LOG.propagate = False


# --- the app -------------------------------------------------------------------------------------

def create_app(predictor: Any, config: ServeConfig,
               on_load_error: Callable[[BaseException], None] | None = None) -> Callable:
    """The ASGI app serving ``predictor`` (an :class:`inp_former.predictor.Predictor`).

    ``predictor`` may also be a zero-argument callable returning one: it is then loaded in a thread
    at startup while the server already answers (/healthz 503 until it is ready), and a failure is
    handed to ``on_load_error``. Run the app with any ASGI server, e.g. ``uvicorn.run(app)``; or use
    :func:`inp_former.serve.serve`, which does that with graceful shutdown.
    """
    state = ModelState(config)
    # Decoding, preprocessing and overlays run here: off the event loop, and few at a time, so that
    # at most this many full-size decoded images are in memory at once.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                 thread_name_prefix="inpctl-serve-decode")

    async def load() -> None:
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(pool, predictor)
            state.attach(loaded)
        except Exception as exc:  # noqa: BLE001 - reported on /healthz and to the caller
            state.load_error = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if on_load_error is not None:
                on_load_error(exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = None
        if hasattr(predictor, "predict_tensor"):
            state.attach(predictor)
        else:
            task = asyncio.create_task(load())
        yield
        # Shutdown: the ASGI server has already stopped accepting and let in-flight requests finish.
        if task is not None and not task.done():
            task.cancel()
        if state.batcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, state.batcher.close, config.shutdown_timeout_s)
        pool.shutdown(wait=False, cancel_futures=True)

    async def page(request: Request) -> Response:
        from inp_former.serve.page import PAGE

        return HTMLResponse(PAGE)

    async def healthz(request: Request) -> Response:
        if state.load_error is not None:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        if state.predictor is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        batcher = state.batcher
        return JSONResponse({"status": "ok", "model": state.info,
                             "queue": {"waiting": batcher.waiting, "max": config.max_queue,
                                       "batches": batcher.batches, "images": batcher.images}})

    async def predict(request: Request) -> Response:
        if state.predictor is None:
            return error(503, state.load_error or "the model is still loading", headers={"Retry-After": "2"})
        try:
            return await asyncio.wait_for(_predict(request), config.request_timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"the request took longer than {config.request_timeout_s:g} s")

    async def _predict(request: Request) -> Response:
        category = request.query_params.get("category") or None
        if category is not None and category not in state.info["categories"]:
            known = state.info["categories"]
            return error(400, f"unknown category {category!r}: known categories: {', '.join(known) or 'none'} "
                              "(the categories with a threshold stored in the checkpoint)", categories=known)
        maps_flag = request.query_params.get("maps", "").lower()
        if maps_flag not in _TRUE | _FALSE:
            return error(400, f"maps={maps_flag!r}: expected 1 or 0")
        with_maps = maps_flag in _TRUE

        try:
            form = await request.form(max_files=config.max_queue, max_fields=config.max_queue)
        except BodyTooLarge as exc:
            return error(413, str(exc))
        except HTTPException as exc:  # a malformed multipart body, or too many parts
            too_many = "Too many" in str(exc.detail)
            return error(413 if too_many else 400, f"{exc.detail}" + (f" (--max-queue {config.max_queue})"
                                                                     if too_many else ""))
        try:
            uploads = form.getlist("files")
            if not uploads:
                return error(400, "no images: send multipart/form-data with one or more fields named 'files'")
            request.scope["inpctl.images"] = len(uploads)
            loop = asyncio.get_running_loop()
            # Preprocess one file at a time: a timed-out request stops between files.
            entries: list[dict[str, Any]] = []
            for index, upload in enumerate(uploads):
                if isinstance(upload, str):  # a part without a filename is a plain text field
                    entries.append({"filename": f"files[{index}]", "status": 400,
                                    "error": "not a file upload (the part has no filename)"})
                    continue
                name = upload.filename or f"files[{index}]"
                data = await upload.read()
                try:
                    tensor, view = await loop.run_in_executor(pool, _prepare, state.predictor, data,
                                                              config.max_pixels, with_maps)
                    entries.append({"filename": name, "tensor": tensor, "view": view})
                except UploadError as exc:
                    entries.append({"filename": name, "status": exc.status, "error": str(exc)})
        finally:
            await form.close()

        good = [entry for entry in entries if "tensor" in entry]
        try:
            results = await state.batcher.submit([entry.pop("tensor") for entry in good]) if good else []
        except QueueFull as exc:
            return error(503, f"{exc}; retry later", headers={"Retry-After": "1"})
        except ShuttingDown as exc:
            return error(503, str(exc), headers={"Retry-After": "5"})

        for entry, prediction in zip(good, results):
            entry["score"] = float(prediction.score)
            # the one rule of every surface: the category asked for, else the upload's folder (when the
            # client sent one in the file name), else the image's look (inp_former/categories.py)
            entry["decision"] = state.predictor.decide(prediction.score, category, path=entry["filename"],
                                                       embedding=prediction.embedding)
            if with_maps:
                entry["overlay"] = await loop.run_in_executor(pool, _overlay_png, state.predictor,
                                                              entry["view"], prediction, entry["decision"].category)
        predictions = []
        for entry in entries:
            decision = entry.get("decision")
            item = {"filename": entry["filename"], "score": entry.get("score"),
                    **(decision.fields() if decision is not None else
                       {"label": None, "threshold": None, "threshold_source": None, "category": category,
                        "category_source": None})}
            if "error" in entry:
                item["error"] = entry["error"]
            elif with_maps:
                item["overlay"] = entry["overlay"]
            predictions.append(item)
        body: dict[str, Any] = {"predictions": predictions, "model": state.info}
        failed = [entry for entry in entries if "error" in entry]
        if not failed:
            return JSONResponse(body)
        # Still a 4xx, naming the files; the readable files are scored all the same.
        status = 413 if any(entry["status"] == 413 for entry in failed) else 400
        body = {"error": f"{len(failed)} of {len(entries)} files could not be scored: "
                         + "; ".join(f"{entry['filename']}: {entry['error']}" for entry in failed), **body}
        return JSONResponse(body, status_code=status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # nobody is left to answer; AccessLog logs 499 (never a 500 with a traceback)
        return Response(status_code=CLIENT_CLOSED)

    async def internal_error(request: Request, exc: Exception) -> Response:
        logging.getLogger("inp_former.serve").exception("internal error")
        return error(500, f"internal error ({exc.__class__.__name__}); see the server's log")

    _ensure_log_handler()
    app = Starlette(routes=[Route("/", page, methods=["GET"]), Route("/healthz", healthz, methods=["GET"]),
                            Route("/predict", predict, methods=["POST"])],
                    exception_handlers={HTTPException: http_error, ClientDisconnect: client_gone,
                                        Exception: internal_error},
                    lifespan=lifespan)
    app.state.model = state  # for tests and embedding
    outer = AccessLog(UploadLimit(app, config.max_upload_bytes))
    outer.model_state = state   # the server drains its batcher when a signal ends it
    return outer


def _prepare(predictor: Any, data: bytes, max_pixels: int, with_view: bool) -> tuple[Any, Any]:
    """Bytes -> the model's input tensor (as inpctl predict: load as RGB, then predictor.transform)
    and, for overlays, the small crop the model sees (the full-size image is not kept; a tiled
    model's input and picture are the whole image)."""
    image = decode_image(data, max_pixels)
    return predictor.preprocess(image), predictor.view(image) if with_view else None


def _overlay_png(predictor: Any, view: Any, prediction: Any, category: str | None) -> str:
    """The heat-map overlay on the checkpoint's fixed colour scale, as base64 PNG."""
    from inp_former.visualize import overlay

    picture = overlay(view, prediction.map, predictor.default_range(prediction.map),
                      pixel_threshold=predictor.decision.pixel_threshold(category))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
