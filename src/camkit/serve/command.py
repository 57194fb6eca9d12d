"""What ``camkit serve`` runs: :func:`run` loads the models, binds 127.0.0.1 (by default), prints
the address and serves until interrupted (Ctrl-C or SIGTERM). Everything it writes goes to one
temporary directory, removed on exit (uploads are held in memory).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence


def run(model_specs: Sequence[str], host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
        log_level: str = "warning", **options: Any) -> None:
    """Load ``model_specs`` (``name`` or ``name=weights``), then serve them on ``host:port``
    (port 0: any free port); ``options`` go to :func:`camkit.serve.create_app`."""
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="camkit-serve-") as tmp:
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, "matplotlib"))  # its cache, not in $HOME
        tempfile.tempdir = tmp  # anything using tempfile stays in here
        try:
            _serve(model_specs, host, port, device, log_level, options)
        finally:
            tempfile.tempdir = previous
            sys.stdout.flush()


def _serve(model_specs: Sequence[str], host: str, port: int, device: str, log_level: str,
           options: dict[str, Any]) -> None:
    import uvicorn

    from ..bench.sources import load_model, parse_model_spec
    from .app import create_app

    models = {parse_model_spec(s)[0]: load_model(s, device) for s in model_specs}
    app = create_app(models, device=device, **options)
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"camkit serve: http://{shown}:{sock.getsockname()[1]}/ (models: {', '.join(models)}; API docs at /docs; "
          "Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    with _sigterm_interrupts():
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn stopped gracefully, then re-raised the signal
            pass
    print("camkit serve: stopped", flush=True)


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening: connections wait in its backlog from now on,
    not refused before uvicorn starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt within (main thread only), so it too cleans up on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    on_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, on_term)
