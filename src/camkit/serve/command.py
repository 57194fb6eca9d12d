"""What ``camkit serve`` runs: `run` loads the models, binds 127.0.0.1 (by default), prints
the address and serves until interrupted (Ctrl-C or SIGTERM). Everything it writes goes to one
temporary directory, removed on exit (uploads are held in memory).

Bound to an address that is not loopback, it prints a loud warning (`exposure_warning`) and,
unless told the names to answer to (``allowed_hosts``), answers to any ``Host``. Failed requests
are logged one line each on stderr (``camkit serve: POST /explain -> 413: ...``).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence


def run(model_specs: Sequence[str], host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
        log_level: str = "warning", **options: Any) -> None:
    """Load ``model_specs`` (``name`` or ``name=weights``), then serve them on ``host:port``
    (port 0: any free port); ``options`` go to `camkit.serve.create_app`."""
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

    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
        if options.get("allowed_hosts") is None:
            options["allowed_hosts"] = ["*"]
    _log_to_stderr(log_level)
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def exposure_warning(host: str) -> Optional[str]:
    """The warning to print when ``host`` is not a loopback address (None when it is)."""
    if is_loopback(host):
        return None
    bar = "!" * 100
    return (f"{bar}\n!! WARNING: camkit serve listens on {host}, not on 127.0.0.1: every machine that can reach this "
            "address can\n!! use it, with no login and no TLS, and each request runs the models on this machine. "
            "Serve on\n!! 127.0.0.1 (the default) unless that is what you want; --allowed-hosts NAME,... limits the "
            f"Host names\n!! it answers to (by default here: any).\n{bar}")


def _log_to_stderr(level: str) -> None:
    """One line per failed request on stderr (the ``camkit.serve`` logger, from `.guard`)."""
    log = logging.getLogger("camkit.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("camkit serve: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(getattr(logging, level.upper(), logging.DEBUG))  # uvicorn's "trace": everything


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
