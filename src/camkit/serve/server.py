"""One app's serving state, shared by its routes: the :class:`~.service.Explainer` (the models),
the :class:`~.batching.Batcher` (while the app runs), the upload limits and the request timeout.

:class:`Server` turns a parsed request into an answer's parts: :meth:`Server.prepare` decodes the
upload within the limits, :meth:`Server.explain` queues one job per method and waits for them
within the timeout. Refusals are :class:`~.service.BadRequest` with the HTTP status to answer:
413 / 415 for the upload, 503 (with ``Retry-After``) when the queue is full, 504 past the timeout,
422 when the method cannot explain with the model.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Optional

import torch
from starlette.concurrency import run_in_threadpool

from ..errors import CamkitError
from .batching import Batcher, Job, QueueFull
from .service import BadRequest, Explainer, Item, MapResult, Target, decode_image


@dataclass(frozen=True)
class Limits:
    """Uploads up to ``max_image_mb`` MB and ``max_megapixels``; ``timeout`` seconds per request."""

    max_image_mb: float = 20.0
    max_megapixels: float = 16.0
    timeout: float = 120.0

    @property
    def max_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)


@dataclass(frozen=True)
class Batching:
    """``max_batch`` images per batched call, gathered for up to ``window`` seconds after the first;
    ``max_queue`` pending jobs before 503; ``workers`` threads running batches."""

    max_batch: int = 16
    window: float = 0.005
    max_queue: int = 64
    workers: int = 1


class Server:
    """The explainer, limits and batching of one app; the batcher runs between :meth:`start` and
    :meth:`close` (the app's lifespan)."""

    def __init__(self, explainer: Explainer, limits: Limits = Limits(), batching: Batching = Batching()) -> None:
        self.explainer, self.limits, self.batching = explainer, limits, batching
        self.batcher: Optional[Batcher] = None

    def start(self) -> None:
        b = self.batching
        self.batcher = Batcher(self.explainer.run, max_batch=b.max_batch, window=b.window, max_queue=b.max_queue,
                               workers=b.workers)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def pending(self) -> int:
        """Jobs waiting in the queue (0 before the app starts)."""
        return self.batcher.pending() if self.batcher is not None else 0

    async def prepare(self, model: str, data: bytes, target: Target) -> tuple[torch.Tensor, Item]:
        """The uploaded file ``data`` decoded (``(3, H, W)`` in [0, 1]) and as ``model``'s input."""
        limits = self.limits
        if len(data) > limits.max_bytes:
            raise BadRequest(413, f"the image file is {len(data) / 2**20:.1f} MB; this server takes up to "
                                  f"{limits.max_image_mb:g} MB")
        image = await run_in_threadpool(decode_image, data, limits.max_pixels)
        item = await run_in_threadpool(self.explainer.item, model, image, target)
        return image, item

    async def explain(self, model: str, names: list[str], item: Item,
                      since: float) -> tuple[list[Job], list[MapResult]]:
        """Queue ``item`` once per method of ``names`` (all or none) and wait for the answers until
        the timeout after ``since`` (a :func:`time.perf_counter` reading)."""
        assert self.batcher is not None, "the app is not running (use it within its lifespan)"
        timeout = self.limits.timeout
        try:
            jobs = self.batcher.submit([(self.explainer.job_key(model, m, item.target), item) for m in names], timeout)
        except QueueFull as e:
            raise BadRequest(503, str(e), {"Retry-After": str(e.retry_after)}) from e
        remaining = timeout - (time.perf_counter() - since)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(j.future) for j in jobs)), max(0.0, remaining))
        except (asyncio.TimeoutError, TimeoutError):
            self.batcher.cancel(jobs)
            raise BadRequest(504, f"the request took longer than this server's timeout of {timeout:g} s "
                                  "(camkit serve --timeout)") from None
        except CamkitError as e:
            raise BadRequest(422, f"cannot explain with this model and method: {e}") from e
        return jobs, list(results)
