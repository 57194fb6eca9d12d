"""The form of ``POST /explain``: read in memory within the size limit, then its fields checked.

Checked in this order, the first fault answered: the content type (400), the body's size (413)
and pace (408 when nothing arrives for the read timeout, 504 past the request's deadline), the
multipart syntax (400), the ``image`` file part (400), then the text fields ``model`` (422
unknown), ``methods`` (422 unknown, empty or not served), ``target`` (422) and ``format`` (422);
a field sent as a file is a 400. The image itself is decoded later
(`camkit.serve.server.Server.prepare`).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .encoding import MAP_FORMATS
from .server import Deadline, Limits
from .service import BadRequest, Explainer, Target, parse_target

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields, beyond the image itself


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, keeping file parts in memory (the body is already bounded)."""

    spool_max_size = 1 << 62


@dataclass
class ExplainForm:
    """A checked request: the uploaded file, a served ``model``, canonical method names, the target
    and the maps' ``format`` (one of `.encoding.MAP_FORMATS`)."""

    upload: UploadFile
    model: str
    methods: list[str]
    target: Target
    format: str = "all"


async def read_form(request: Request, limits: Limits, deadline: Deadline) -> FormData:
    """The request's multipart form, its body read into memory up to the size limit, in time."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise BadRequest(400, "POST /explain takes multipart/form-data: a file field 'image' and the text fields "
                              f"model, methods, target (got content-type {ctype or 'none'!r})")
    body = await _read_body(request, limits, deadline)

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        return await _InMemoryParser(request.headers, stream(), max_files=4, max_fields=8,
                                     max_part_size=16 * 1024).parse()
    except MultiPartException as e:
        raise BadRequest(400, f"malformed multipart form: {e.message}") from e


async def _read_body(request: Request, limits: Limits, deadline: Deadline) -> bytes:
    """The body, refused (413) as soon as its declared or read length passes the limit, and (408)
    as soon as no byte of it arrives for ``limits.read_timeout`` seconds (504 past the deadline)."""
    bound = limits.max_bytes + FORM_OVERHEAD
    too_big = BadRequest(413, f"the upload is larger than this server's limit of {limits.max_image_mb:g} MB per image "
                              "(camkit serve --max-image-mb)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > bound:
        raise too_big
    body = bytearray()
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, min(limits.read_timeout, deadline.remaining())))
        except StopAsyncIteration:
            return bytes(body)
        except (asyncio.TimeoutError, TimeoutError):
            deadline.check()
            raise BadRequest(408, f"the request's body stopped arriving: nothing for {limits.read_timeout:g} s after "
                                  f"{len(body)} bytes (camkit serve --read-timeout)", {"Connection": "close"}) from None
        body += chunk
        if len(body) > bound:
            raise too_big


def text_field(form: FormData, name: str, default: str) -> str:
    value = form.get(name, default)
    if not isinstance(value, str):
        raise BadRequest(400, f"field {name!r} must be text, not a file")
    return value


def explain_form(form: FormData, explainer: Explainer) -> ExplainForm:
    """``form``'s fields checked against the served models and the known methods."""
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise BadRequest(400, "field 'image' must be an uploaded file (multipart file part), e.g. curl -F image=@cat.jpg")
    model = text_field(form, "model", next(iter(explainer.models)))
    explainer.model(model)  # unknown -> 422
    names = explainer.methods(text_field(form, "methods", "gradcam"))
    target = parse_target(text_field(form, "target", "top1"), explainer.num_classes(model), explainer.categories(model))
    fmt = text_field(form, "format", "all").strip().lower()
    if fmt not in MAP_FORMATS:
        raise BadRequest(422, f"format must be one of {', '.join(MAP_FORMATS)}, got {fmt!r}")
    return ExplainForm(upload, model, names, target, fmt)
