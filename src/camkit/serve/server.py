"""One app's serving state, shared by its routes: the `.service.Explainer` (the models),
two `.batching.Batcher` queues (while the app runs), the limits and the request timeout.

`Server` turns a parsed request into an answer's parts: `Server.prepare` decodes the
upload within the limits, `Server.explain` queues one job per method and waits for them
within the request's `Deadline`. Jobs of methods whose class declares ``expensive`` (Score-CAM:
one forward per channel) wait in a queue of their own with its own workers, so one of them never
holds the others' requests until they time out. Refusals are `.service.BadRequest` with
the HTTP status to answer: 413 / 415 for the upload, 503 (with ``Retry-After``) when a queue is
full, 504 past the deadline, 422 when the method cannot explain with the model. Decoding an
upload and encoding an answer hold an image's pixels: at most `PIXEL_STAGES` of them run at
once, so memory stays bounded however many requests arrive together.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Hashable, Optional

from starlette.concurrency import run_in_threadpool

from ..errors import CamkitError
from .batching import Batcher, Job, QueueFull
from .decoding import Decoded, decode_image
from .encoding import response_body
from .service import BadRequest, Explainer, Item, MapResult, Target


PIXEL_STAGES = 2  # decodings and encodings running at once (each holds an image's pixels, up to ~100 MB)


@dataclass(frozen=True)
class Limits:
    """Uploads up to ``max_image_mb`` MB and ``max_megapixels``; ``timeout`` seconds per request,
    from reading its body to building its answer; ``read_timeout`` seconds at most between
    two pieces of a request's body (a slow client is answered 408); answers up to ``max_response_mb``."""

    max_image_mb: float = 20.0
    max_megapixels: float = 16.0
    timeout: float = 120.0
    read_timeout: float = 30.0
    max_response_mb: float = 64.0

    @property
    def max_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * 1024 * 1024)


class Deadline:
    """A request's end, ``timeout`` seconds after it began: every stage (reading, decoding,
    explaining, encoding) checks it, and the first past it answers 504."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.perf_counter() + timeout

    def remaining(self) -> float:
        return self.end - time.perf_counter()

    def error(self) -> BadRequest:
        """The 504 to answer past the deadline."""
        return BadRequest(504, f"the request took longer than this server's timeout of {self.timeout:g} s "
                               "(camkit serve --timeout)")

    def check(self) -> None:
        """Raise `error` once the deadline has passed."""
        if self.remaining() <= 0:
            raise self.error()


@dataclass(frozen=True)
class Batching:
    """``max_batch`` images per batched call, gathered for up to ``window`` seconds after the first;
    ``max_queue`` pending jobs before 503; ``workers`` threads running batches. Jobs of expensive
    methods: ``max_expensive_queue`` pending and ``expensive_workers`` threads of their own."""

    max_batch: int = 16
    window: float = 0.005
    max_queue: int = 64
    workers: int = 1
    max_expensive_queue: int = 8
    expensive_workers: int = 1


class Server:
    """The explainer, limits and batching of one app; the two queues (cheap and expensive methods)
    run between `start` and `close` (the app's lifespan)."""

    def __init__(self, explainer: Explainer, limits: Limits = Limits(), batching: Batching = Batching()) -> None:
        self.explainer, self.limits, self.batching = explainer, limits, batching
        self.queues: dict[bool, Batcher] = {}  # expensive? -> its queue
        self._pixels: Optional[asyncio.Semaphore] = None

    def start(self) -> None:
        self._pixels = asyncio.Semaphore(PIXEL_STAGES)  # on the serving event loop
        b = self.batching
        self.queues = {
            False: Batcher(self.explainer.run, max_batch=b.max_batch, window=b.window, max_queue=b.max_queue,
                           workers=b.workers),
            True: Batcher(self.explainer.run, max_batch=b.max_batch, window=b.window, max_queue=b.max_expensive_queue,
                          workers=b.expensive_workers, name="camkit-expensive"),
        }

    def close(self) -> None:
        for q in self.queues.values():
            q.close()

    def pending(self) -> int:
        """Jobs waiting in the queues (0 before the app starts)."""
        return sum(q.pending() for q in self.queues.values())

    async def prepare(self, model: str, data: bytes, target: Target) -> tuple[Decoded, Item]:
        """The uploaded file ``data`` decoded (at most `.decoding.MAX_SIDE` pixels per side)
        and as ``model``'s input."""
        limits = self.limits
        if len(data) > limits.max_bytes:
            raise BadRequest(413, f"the image file is {len(data) / 2**20:.1f} MB; this server takes up to "
                                  f"{limits.max_image_mb:g} MB")
        assert self._pixels is not None, "the app is not running (use it within its lifespan)"
        async with self._pixels:
            decoded = await run_in_threadpool(decode_image, data, limits.max_pixels)
            item = await run_in_threadpool(lambda: self.explainer.item(model, decoded.image, target))
        return decoded, item

    async def explain(self, model: str, names: list[str], item: Item,
                      deadline: Deadline) -> tuple[list[Job], list[MapResult]]:
        """Queue ``item`` once per method of ``names`` (all or none), each in its method's queue,
        and wait for the answers until the ``deadline``."""
        assert self.queues, "the app is not running (use it within its lifespan)"
        jobs = self._submit([(self.explainer.job_key(model, m, item.target), item) for m in names],
                            [self.explainer.expensive(m) for m in names], deadline.remaining())
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(j.future) for j in jobs)), max(0.0, deadline.remaining()))
        except (asyncio.TimeoutError, TimeoutError):
            for q in self.queues.values():
                q.cancel(jobs)
            raise deadline.error() from None
        except CamkitError as e:
            raise BadRequest(422, f"cannot explain with this model and method: {e}") from e
        return jobs, list(results)

    async def encode(self, model: str, decoded: Decoded, names: list[str], results: list[MapResult], fmt: str,
                     deadline: Deadline) -> dict[str, Any]:
        """The answer's JSON body (`.encoding.response_body`) within the answer cap and the ``deadline``."""
        assert self._pixels is not None, "the app is not running (use it within its lifespan)"
        async with self._pixels:
            return await run_in_threadpool(response_body, model, self.explainer.categories(model), decoded.image,
                                           (decoded.width, decoded.height), names, results, fmt,
                                           self.limits.max_response_bytes, deadline.check)

    def _submit(self, items: list[tuple[Hashable, Item]], expensive: list[bool], timeout: float) -> list[Job]:
        """Submit each item to its queue, all or none (503 when a queue is full)."""
        jobs: dict[int, Job] = {}
        try:
            for which in (False, True):
                picked = [i for i, e in enumerate(expensive) if e == which]
                if picked:
                    jobs.update(zip(picked, self.queues[which].submit([items[i] for i in picked], timeout)))
        except QueueFull as e:
            self.queues[False].cancel(list(jobs.values()))
            raise BadRequest(503, str(e), {"Retry-After": str(e.retry_after)}) from e
        return [jobs[i] for i in range(len(items))]
