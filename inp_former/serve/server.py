"""``serve(config)``: load the model, listen, serve until SIGTERM/SIGINT, drain, return."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator

from inp_former.serve.config import require_web_stack
from inp_former.serve.config import ServeConfig


def log_event(event: str, **fields: Any) -> None:
    """A server event as one JSON line on stderr, like the access log lines."""
    line = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
    print(json.dumps(line, default=str), file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port fails before anything loads and port 0
    (any free port) is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig, predictor: Any = None) -> None:
    """Serve ``predictor`` (default: the checkpoint of ``config``, loaded while already listening)
    until SIGTERM or SIGINT; then stop accepting, let in-flight requests finish and return.

    Raises ImportError without the serve extra, OSError when the port cannot be bound and the
    loading error when the model cannot be loaded.
    """
    require_web_stack()
    import uvicorn

    from inp_former.serve.app import create_app

    started = time.perf_counter()

    def load() -> Any:
        from inp_former.predictor import Predictor

        loaded = Predictor.from_checkpoint(config.checkpoint, config.device, config.inference, config.threshold,
                                           encoder_weights=config.encoder_weights,
                                           allow_encoder_mismatch=config.allow_encoder_mismatch, latency=True)
        log_event("ready", seconds=round(time.perf_counter() - started, 2), device=str(loaded.device),
                  threshold=loaded.threshold)
        for warning in (loaded.category_warning, loaded.precision_warning):
            if warning:
                log_event("warning", message=warning)
        return loaded

    failures: list[BaseException] = []

    def on_load_error(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = create_app(predictor if predictor is not None else load, config, on_load_error)
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    def drain() -> None:   # in-flight images run now, not after --max-wait-ms
        batcher = app.model_state.batcher
        if batcher is not None:
            batcher.drain()

    server = _graceful_server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                    timeout_graceful_shutdown=int(config.shutdown_timeout_s + 0.999)), drain)
    log_event("listening", url=f"http://{host if ':' not in host else f'[{host}]'}:{port}",
              checkpoint=str(config.checkpoint))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failures:
        raise failures[0]
    log_event("stopped", signal=server.signal_name)


def _graceful_server(config: Any, on_shutdown: Callable[[], None]) -> Any:
    """uvicorn's Server, but a signal ends it with a normal return instead of being re-raised
    afterwards (uvicorn re-raises it, so a drained SIGTERM'd server would not exit 0); ``on_shutdown``
    runs when it stops accepting."""
    import uvicorn

    class Server(uvicorn.Server):
        signal_name: str | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self._on_signal) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def _on_signal(self, sig: int, frame: Any) -> None:
            # no printing here: a signal handler may interrupt a write to the same stream
            self.signal_name = self.signal_name or signal.Signals(sig).name
            self.handle_exit(sig, frame)  # a second SIGINT forces the exit, as in uvicorn

        async def shutdown(self, sockets: Any = None) -> None:
            log_event("shutting_down", signal=self.signal_name,
                      note="not accepting new connections; finishing in-flight requests")
            on_shutdown()
            await super().shutdown(sockets)

    return Server(config)
