"""The HTTP side of ``camkit serve``: a FastAPI app with the web page, the JSON API and its docs.

``GET /`` the page, ``GET /models``, ``GET /models/{name}/classes``, ``GET /methods``,
``GET /samples`` (+ ``/samples/{id}``), ``POST /explain``, ``GET /health``; OpenAPI docs at
``/docs`` (Swagger UI served from the installed ``fastapi-offline`` package: no CDN).

Bad input is answered with a 4xx and ``{"detail": message}``: 400 malformed form, 403 a Host
that is not this server's or another site's page, 408 a body that stopped arriving, 413 too large
(upload, pixels or answer), 415 not a PNG / JPEG / WebP / BMP / TIFF, 422 unknown model / method /
class or bad target; 503 with ``Retry-After`` when a queue is full, 504 when a request runs past
its timeout. Uploads are parsed in memory (the body is bounded by the size limit), so the server
writes no file.

`create_app` only assembles: the `.server.Server` (models, limits, batching) in
``app.state.server``, the routes of `.routes`, the static files, the refusal handler and the
`.guard.Guard` around it all.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional, Sequence, Union

import torch
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from torch import nn

from .guard import Guard
from .routes import STATIC, bad_request, router
from .server import Batching, Limits, Server
from .service import BadRequest, Explainer


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The batcher's life is the app's: started on startup, closed (pending jobs cancelled) on shutdown."""
    server: Server = app.state.server
    server.start()
    try:
        yield
    finally:
        await run_in_threadpool(server.close)


def create_app(
    models: Union[dict[str, nn.Module], Explainer],
    *,
    max_batch: int = 16,
    window_ms: float = 5.0,
    max_queue: int = 64,
    workers: int = 1,
    timeout: float = 120.0,
    max_image_mb: float = 20.0,
    max_megapixels: float = 16.0,
    device: Union[str, torch.device] = "cpu",
    methods: Optional[Sequence[str]] = None,
    max_expensive_queue: int = 8,
    expensive_workers: int = 1,
    read_timeout: float = 30.0,
    max_response_mb: float = 64.0,
    allowed_hosts: Optional[Sequence[str]] = None,
) -> FastAPIOffline:
    """The app serving ``models`` (name -> model from `camkit.models.load`).

    ``max_batch`` images per batched call (1: no dynamic batching), gathered for up to
    ``window_ms`` after the first; ``max_queue`` pending jobs (one per method of a request) before
    503; ``workers`` threads running batches (several run calls on a shared model at once);
    ``methods`` the served methods (None: all); jobs of expensive methods (their class's
    ``expensive``) wait in their own queue of ``max_expensive_queue`` run by ``expensive_workers``
    threads. ``timeout`` seconds per request, all of it; ``read_timeout`` seconds at most between
    two pieces of its body; uploads up to ``max_image_mb`` MB and ``max_megapixels``; answers up to
    ``max_response_mb``. ``allowed_hosts``: the names the server answers to (None: the loopback
    names; ``["*"]``: any), see `.guard`.
    """
    explainer = models if isinstance(models, Explainer) else Explainer(models, device, methods)
    app = FastAPIOffline(title="camkit serve", version="1", lifespan=lifespan,
                         description="Class Activation Maps of the served models: upload an image, get maps.")
    app.state.server = Server(explainer, Limits(max_image_mb, max_megapixels, timeout, read_timeout, max_response_mb),
                              Batching(max_batch, window_ms / 1000, max_queue, workers, max_expensive_queue,
                                       expensive_workers))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(BadRequest, bad_request)
    app.include_router(router)
    app.add_middleware(Guard, allowed_hosts=allowed_hosts)  # FastAPIOffline's docs: /docs and /redoc
    return app
