"""The HTTP side of ``camkit serve``: a FastAPI app with the web page, the JSON API and its docs.

``GET /`` the page, ``GET /models``, ``GET /models/{name}/classes``, ``GET /methods``,
``GET /samples`` (+ ``/samples/{id}``), ``POST /explain``, ``GET /health``; OpenAPI docs at
``/docs`` (Swagger UI served from the installed ``fastapi-offline`` package: no CDN).

Bad input is answered with a 4xx and ``{"detail": message}``: 400 malformed form, 413 too large,
415 not an image, 422 unknown model / method / class or bad target; 503 with ``Retry-After`` when
the queue is full, 504 when a request runs past its timeout. Uploads are parsed in memory (the
body is bounded by the size limit), so the server writes no file.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Union

import torch
from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from torch import nn

from ..data.photos import sample_files
from ..errors import CamkitError
from ..methods import get, list_methods
from .batching import Batcher, QueueFull
from .service import (
    BadRequest, Explainer, MapResult, b64, class_name, decode_image, display_image, encode_maps, parse_target,
    top_classes,
)

STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields, beyond the image itself


class ModelInfo(BaseModel):
    name: str
    input_size: list[int]
    num_classes: Optional[int]
    default_layer: Optional[str]


class MethodInfo(BaseModel):
    name: str
    output: str = Field(description="'map' ([0, 1] heat map) or 'attribution' (signed RGB gradient image)")
    summary: str
    cost: str = Field(description="what one explanation costs, in passes of the model")


class ClassScore(BaseModel):
    index: int
    name: str
    score: float = Field(description="softmax probability")


class MapItem(BaseModel):
    class_: int = Field(alias="class", description="the explained class index")
    name: str
    png: str = Field(description="base64 PNG: the map blended over the image at alpha 0.5, at the image's size")
    heatmap: str = Field(description="base64 PNG: the coloured map alone, at the image's size")
    npy: str = Field(description="base64 .npy: the float32 map at the model's input size, as the library returns it")


class ExplainResponse(BaseModel):
    model: str
    classes: list[ClassScore]
    maps: dict[str, list[MapItem]]
    timings: dict[str, Any]
    image: dict[str, int]


EXPLAIN_FORM = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {
                "image": {"type": "string", "format": "binary", "description": "the image file (PNG, JPEG, ...)"},
                "model": {"type": "string", "description": "a served model (GET /models); default: the first"},
                "methods": {"type": "string", "description": "comma-separated method names (GET /methods); default gradcam"},
                "target": {"type": "string", "description": "top1 (default), topK (K <= 10) or a class index"},
            },
        }}},
    }
}


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, keeping file parts in memory (the body is already bounded)."""

    spool_max_size = 1 << 62


def api_output(output: str) -> str:
    """A method's ``output`` as the API names it: the library's ``"cam"`` is ``"map"`` here."""
    return "map" if output == "cam" else output


def _error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


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
) -> FastAPIOffline:
    """The app serving ``models`` (name -> model from :func:`camkit.models.load`).

    ``max_batch`` images per batched call (1: no dynamic batching), gathered for up to
    ``window_ms`` after the first; ``max_queue`` pending jobs (one per method of a request) before
    503; ``workers`` threads running batches (several run calls on a shared model at once);
    ``timeout`` seconds per request; uploads up to ``max_image_mb`` MB and ``max_megapixels``.
    """
    explainer = models if isinstance(models, Explainer) else Explainer(models, device)
    max_bytes = int(max_image_mb * 1024 * 1024)
    max_pixels = int(max_megapixels * 1e6)
    state: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state["batcher"] = Batcher(explainer.run, max_batch=max_batch, window=window_ms / 1000, max_queue=max_queue,
                                   workers=workers)
        try:
            yield
        finally:
            await run_in_threadpool(state["batcher"].close)

    app = FastAPIOffline(title="camkit serve", version="1", lifespan=lifespan,
                         description="Class Activation Maps of the served models: upload an image, get maps.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(BadRequest)
    async def bad_request(_r: Request, e: BadRequest) -> JSONResponse:
        return _error(e.status, str(e))

    @app.exception_handler(Exception)
    async def internal(_r: Request, e: Exception) -> JSONResponse:  # a bug: say what, keep serving
        return _error(500, f"internal error: {type(e).__name__}: {e}")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pending": state["batcher"].pending() if "batcher" in state else 0}

    @app.get("/models", response_model=list[ModelInfo])
    async def list_served_models() -> list[ModelInfo]:
        return [ModelInfo(name=n, input_size=list(getattr(m, "input_size", [])), num_classes=explainer.num_classes(n),
                          default_layer=getattr(m, "default_layer", None)) for n, m in explainer.models.items()]

    @app.get("/models/{name}/classes", response_model=list[str])
    async def classes(name: str) -> list[str]:
        n = explainer.num_classes(name)
        return [class_name(explainer.categories(name), i) for i in range(n or 0)]

    @app.get("/methods", response_model=list[MethodInfo])
    async def methods() -> list[MethodInfo]:
        return [MethodInfo(name=n, output=api_output(get(n).output), summary=(get(n).__doc__ or "").strip().split("\n")[0],
                           cost=get(n).cost) for n in list_methods()]

    @app.get("/samples")
    async def samples() -> list[dict[str, str]]:
        return [{"id": k, "url": f"/samples/{k}"} for k in sample_files()]

    @app.get("/samples/{sample_id}")
    async def sample(sample_id: str) -> FileResponse:
        files = sample_files()
        if sample_id not in files:
            raise BadRequest(404, f"unknown sample {sample_id!r}; known: {', '.join(files)}")
        return FileResponse(files[sample_id])

    async def read_form(request: Request) -> FormData:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise BadRequest(400, "POST /explain takes multipart/form-data: a file field 'image' and the text fields "
                                  f"model, methods, target (got content-type {ctype or 'none'!r})")
        too_big = BadRequest(413, f"the upload is larger than this server's limit of {max_image_mb:g} MB per image "
                                  "(camkit serve --max-image-mb)")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes + FORM_OVERHEAD:
                raise too_big

        async def stream() -> AsyncIterator[bytes]:
            yield bytes(body)

        try:
            return await _InMemoryParser(request.headers, stream(), max_files=4, max_fields=8,
                                         max_part_size=16 * 1024).parse()
        except MultiPartException as e:
            raise BadRequest(400, f"malformed multipart form: {e.message}") from e

    def text_field(form: FormData, name: str, default: str) -> str:
        value = form.get(name, default)
        if not isinstance(value, str):
            raise BadRequest(400, f"field {name!r} must be text, not a file")
        return value

    @app.post("/explain", response_model=ExplainResponse, openapi_extra=EXPLAIN_FORM,
              responses={400: {}, 413: {}, 415: {}, 422: {}, 503: {}, 504: {}})
    async def explain(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        form = await read_form(request)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest(400, "field 'image' must be an uploaded file (multipart file part), e.g. curl -F image=@cat.jpg")
        model = text_field(form, "model", next(iter(explainer.models)))
        explainer.model(model)  # unknown -> 422
        names = explainer.methods(text_field(form, "methods", "gradcam"))
        target = parse_target(text_field(form, "target", "top1"), explainer.num_classes(model))
        data = await upload.read()
        if len(data) > max_bytes:
            raise BadRequest(413, f"the image file is {len(data) / 2**20:.1f} MB; this server takes up to {max_image_mb:g} MB")
        image = await run_in_threadpool(decode_image, data, max_pixels)
        item = await run_in_threadpool(explainer.item, model, image, target)
        t_decoded = time.perf_counter()
        try:
            jobs = state["batcher"].submit([(explainer.job_key(model, m, target), item) for m in names], timeout)
        except QueueFull as e:
            return _error(503, str(e), {"Retry-After": str(e.retry_after)})
        remaining = timeout - (time.perf_counter() - t0)
        try:
            results: list[MapResult] = await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(j.future) for j in jobs)), max(0.0, remaining))
        except (asyncio.TimeoutError, TimeoutError):
            state["batcher"].cancel(jobs)
            return _error(504, f"the request took longer than this server's timeout of {timeout:g} s (camkit serve --timeout)")
        except CamkitError as e:
            return _error(422, f"cannot explain with this model and method: {e}")
        t_done = time.perf_counter()
        body = await run_in_threadpool(_response, explainer, model, image, names, results)
        t_end = time.perf_counter()
        body["timings"] = {
            "decode_ms": 1000 * (t_decoded - t0),
            "queue_ms": 1000 * max(j.started - j.arrived for j in jobs if j.started is not None),
            "explain_ms": {m: 1000 * r.seconds for m, r in zip(names, results)},
            "batch_size": {m: j.batch_size for m, j in zip(names, jobs)},
            "encode_ms": 1000 * (t_end - t_done),
            "total_ms": 1000 * (t_end - t0),
        }
        return JSONResponse(body)

    return app


def _response(explainer: Explainer, model: str, image: torch.Tensor, names: list[str],
              results: list[MapResult]) -> dict[str, Any]:
    """The JSON body of ``POST /explain`` (without timings)."""
    cats = explainer.categories(model)
    shown = display_image(image)
    k = max(len(results[0].classes), 5)
    maps: dict[str, list[dict[str, Any]]] = {}
    for name, r in zip(names, results):
        maps[name] = []
        for j, c in enumerate(r.classes):
            png, heat, npy = encode_maps(shown, r.maps[j], r.output == "attribution")
            maps[name].append({"class": c, "name": class_name(cats, c), "png": b64(png), "heatmap": b64(heat),
                               "npy": b64(npy)})
    return {"model": model, "classes": top_classes(results[0].logits, cats, k), "maps": maps,
            "image": {"width": int(image.shape[-1]), "height": int(image.shape[-2])}}
