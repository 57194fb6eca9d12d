"""``camkit serve``: a local web page and JSON API that explain uploaded images (extra ``camkit[serve]``).

>>> from camkit.serve import create_app          # an ASGI app, e.g. for uvicorn or a test client
>>> app = create_app({"efficientnet_lite0": camkit.models.load("efficientnet_lite0")})

:func:`run` is what the command runs: it loads the models, binds 127.0.0.1 (by default), prints
the address and serves until interrupted. Everything it writes goes to one temporary directory,
removed on exit (uploads are held in memory).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
from typing import Any, Sequence

__all__ = ["create_app", "run"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`camkit.serve.app.create_app`."""
    from .app import create_app as make

    return make(*args, **kwargs)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def run(model_specs: Sequence[str], host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
        log_level: str = "warning", **options: Any) -> None:
    """Load ``model_specs`` (``name`` or ``name=weights``), then serve them on ``host:port``
    (port 0: any free port); ``options`` go to :func:`create_app`."""
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="camkit-serve-") as tmp:
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, "matplotlib"))  # its cache, not in $HOME
        tempfile.tempdir = tmp  # anything using tempfile stays in here
        try:
            import uvicorn

            from ..bench.sources import load_model, parse_model_spec

            models = {parse_model_spec(s)[0]: load_model(s, device) for s in model_specs}
            app = create_app(models, device=device, **options)
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)  # connections wait in the backlog from now on, not refused before uvicorn starts
            bound = sock.getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            print(f"camkit serve: http://{shown}:{bound}/ (models: {', '.join(models)}; API docs at /docs; "
                  "Ctrl-C stops)", flush=True)
            server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
            on_term = signal.getsignal(signal.SIGTERM)
            if threading.current_thread() is threading.main_thread():  # SIGTERM too cleans up on the way out
                signal.signal(signal.SIGTERM, _interrupt)
            try:
                server.run(sockets=[sock])
            except KeyboardInterrupt:  # uvicorn stopped gracefully, then re-raised the signal
                pass
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, on_term)
            print("camkit serve: stopped", flush=True)
        finally:
            tempfile.tempdir = previous
            sys.stdout.flush()
