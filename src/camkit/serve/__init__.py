"""``camkit serve``: a local web page and JSON API that explain uploaded images (extra ``camkit[serve]``).

>>> from camkit.serve import create_app          # an ASGI app, e.g. for uvicorn or a test client
>>> app = create_app({"efficientnet_lite0": camkit.models.load("efficientnet_lite0")})

`run` is what the command runs: it loads the models, binds 127.0.0.1 (by default), prints
the address and serves until interrupted. Everything it writes goes to one temporary directory,
removed on exit (uploads are held in memory).

Modules, one idea each: `.app` (``create_app``: assembles the app, nothing more),
`.guard` (around every request: Host / Origin checks, security headers, one log line per
failure), `.routes` (the route handlers and error answers), `.schemas` (the API's JSON
shapes), `.forms` (``POST /explain``'s form, read within the size limit and in time, and
checked), `.server` (the state routes share: explainer, limits, the request deadline, the
two queues' life), `.service` (models and methods apart from HTTP: targets, the served
methods, batched explain calls), `.decoding` (the upload decoded within bounds: five
formats, a pixel cap, at most 1024 px per side), `.batching` (dynamic batching with a
bounded queue and deadlines), `.encoding` (maps to PNG / ``.npy`` and the answer's JSON body
within a size cap), `.command` (``run``), ``static/`` (the page and its icon).
"""
from __future__ import annotations

from typing import Any

from .command import run

__all__ = ["create_app", "run"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See `camkit.serve.app.create_app` (imported on call: ``import camkit.serve`` needs no FastAPI)."""
    from .app import create_app as make

    return make(*args, **kwargs)
