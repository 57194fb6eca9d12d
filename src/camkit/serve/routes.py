"""The routes of ``camkit serve``, on one `router`; each handler finds the app's
`.server.Server` in ``app.state.server`` (the `current` dependency).

``GET /`` the page, ``GET /favicon.ico``, ``GET /health``, ``GET /models``,
``GET /models/{name}/classes``, ``GET /methods`` (the served ones), ``GET /samples``
(+ ``/samples/{id}``), ``POST /explain``. Refusals raised as `.service.BadRequest` are
answered by `bad_request`; anything else by the guard (`.guard`: 500, one log line).
``POST /explain`` runs within one `.server.Deadline`: reading, decoding, explaining and
encoding together take at most the server's timeout.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse

from ..data.photos import sample_files
from ..methods import get
from .batching import Job
from .encoding import class_name
from .forms import explain_form, read_form
from .schemas import EXPLAIN_FORM, EXPLAIN_RESPONSES, ExplainResponse, MethodInfo, ModelInfo, api_output, plain_text
from .server import Deadline, Server
from .service import BadRequest, MapResult

STATIC = Path(__file__).parent / "static"

router = APIRouter()


def current(request: Request) -> Server:
    """The app's `Server` (set by `camkit.serve.app.create_app`)."""
    return request.app.state.server


def error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


async def bad_request(_r: Request, e: BadRequest) -> JSONResponse:
    return error(e.status, str(e), e.headers)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")


@router.get("/health")
async def health(server: Server = Depends(current)) -> dict[str, Any]:
    return {"status": "ok", "pending": server.pending()}


@router.get("/models", response_model=list[ModelInfo])
async def list_served_models(server: Server = Depends(current)) -> list[ModelInfo]:
    ex = server.explainer
    return [ModelInfo(name=n, input_size=list(getattr(m, "input_size", [])), num_classes=ex.num_classes(n),
                      default_layer=getattr(m, "default_layer", None)) for n, m in ex.models.items()]


@router.get("/models/{name}/classes", response_model=list[str])
async def classes(name: str, server: Server = Depends(current)) -> list[str]:
    n = server.explainer.num_classes(name)
    return [class_name(server.explainer.categories(name), i) for i in range(n or 0)]


@router.get("/methods", response_model=list[MethodInfo])
async def methods(server: Server = Depends(current)) -> list[MethodInfo]:
    return [MethodInfo(name=n, output=api_output(get(n).output), summary=plain_text(get(n).__doc__ or ""),
                       cost=get(n).cost, expensive=bool(get(n).expensive)) for n in server.explainer.served]


@router.get("/samples")
async def samples() -> list[dict[str, str]]:
    return [{"id": k, "url": f"/samples/{k}"} for k in sample_files()]


@router.get("/samples/{sample_id}")
async def sample(sample_id: str) -> FileResponse:
    files = sample_files()
    if sample_id not in files:
        raise BadRequest(404, f"unknown sample {sample_id!r}; known: {', '.join(files)}")
    return FileResponse(files[sample_id])


@router.post("/explain", response_model=ExplainResponse, openapi_extra=EXPLAIN_FORM,
             responses=EXPLAIN_RESPONSES)
async def explain(request: Request, server: Server = Depends(current)) -> JSONResponse:
    t0 = time.perf_counter()
    deadline = Deadline(server.limits.timeout)
    form = explain_form(await read_form(request, server.limits, deadline), server.explainer)
    decoded, item = await server.prepare(form.model, await form.upload.read(), form.target)
    deadline.check()
    t_decoded = time.perf_counter()
    jobs, results = await server.explain(form.model, form.methods, item, deadline)
    t_done = time.perf_counter()
    body = await server.encode(form.model, decoded, form.methods, results, form.format, deadline)
    t_end = time.perf_counter()
    body["timings"] = timings(form.methods, jobs, results, (t0, t_decoded, t_done, t_end))
    return JSONResponse(body)


def timings(names: list[str], jobs: list[Job], results: list[MapResult],
            clock: tuple[float, float, float, float]) -> dict[str, Any]:
    """``POST /explain``'s timings from its ``clock``: start, decoded, explained, encoded."""
    t0, t_decoded, t_done, t_end = clock
    return {
        "decode_ms": 1000 * (t_decoded - t0),
        "queue_ms": 1000 * max(j.started - j.arrived for j in jobs if j.started is not None),
        "explain_ms": {m: 1000 * r.seconds for m, r in zip(names, results)},
        "batch_size": {m: j.batch_size for m, j in zip(names, jobs)},
        "encode_ms": 1000 * (t_end - t_done),
        "total_ms": 1000 * (t_end - t0),
    }
