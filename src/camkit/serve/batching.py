"""Dynamic batching: jobs that may share one batched call are collected for a few milliseconds.

A worker thread takes the oldest pending job, waits until ``window`` seconds after that job
arrived for more jobs with the same key (up to ``max_batch``), and runs ``run(key, payloads)``
on all of them at once. Under load the queue fills while the workers are busy, so batches form
without any wait. The queue is bounded (`QueueFull` when full) and every job has a
deadline: a job that cannot start before it is answered with `TimeoutError` and skipped,
and a job whose caller gave up (its future cancelled) is skipped too.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs; ``retry_after`` is the estimated seconds until there is room."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy (queue full); retry in about {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    key: Hashable
    payload: Any
    arrived: float
    deadline: float
    future: Future = field(default_factory=Future)
    started: Optional[float] = None
    batch_size: int = 0


class Batcher:
    """Runs ``run(key, payloads) -> results`` (one result per payload, in order) on batches of jobs."""

    def __init__(self, run: Callable[[Hashable, list[Any]], Sequence[Any]], *, max_batch: int = 16,
                 window: float = 0.005, max_queue: int = 64, workers: int = 1, name: str = "camkit-batch") -> None:
        if max_batch < 1 or max_queue < 1 or workers < 1 or window < 0:
            raise ValueError("max_batch, max_queue and workers must be >= 1 and window >= 0")
        self.run, self.max_batch, self.window, self.max_queue = run, max_batch, window, max_queue
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._batch_seconds = 0.0  # moving average of one batch's run time, for Retry-After
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, items: Sequence[tuple[Hashable, Any]], timeout: float) -> list[Job]:
        """Queue all ``(key, payload)`` items or none (`QueueFull`)."""
        now = time.monotonic()
        jobs = [Job(key, payload, now, now + timeout) for key, payload in items]
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull(self._retry_after())
            self._pending.extend(jobs)
            self._cond.notify_all()
        return jobs

    def cancel(self, jobs: Sequence[Job]) -> None:
        """Give up on ``jobs``: pending ones leave the queue at once, running ones finish unseen."""
        with self._cond:
            for job in jobs:
                if job.future.cancel() and job in self._pending:
                    self._pending.remove(job)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        """Stop the workers after the batches in flight; pending jobs are cancelled."""
        with self._cond:
            self._closed = True
            for job in self._pending:
                job.future.cancel()
            self._pending.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=60)

    def _retry_after(self) -> int:
        batches = math.ceil(len(self._pending) / self.max_batch) / len(self._threads)
        return max(1, math.ceil(batches * self._batch_seconds))

    def _take(self) -> Optional[list[Job]]:
        """The next batch (None when closed): the oldest job and later ones with its key."""
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                first = self._pending[0]
                wait = first.arrived + self.window - time.monotonic()
                same = sum(1 for j in self._pending if j.key == first.key)
                if wait > 0 and same < self.max_batch:
                    self._cond.wait(wait)  # more may come; re-check (another worker may take it)
                    continue
                batch = [j for j in self._pending if j.key == first.key][: self.max_batch]
                for j in batch:
                    self._pending.remove(j)
                return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            now = time.monotonic()
            live = []
            for job in batch:
                if not job.future.set_running_or_notify_cancel():
                    continue  # the caller gave up
                if now > job.deadline:
                    job.future.set_exception(TimeoutError("the request waited in the queue past its timeout"))
                    continue
                job.started, job.batch_size = now, len(batch)
                live.append(job)
            if not live:
                continue
            for job in live:
                job.batch_size = len(live)
            try:
                results = self.run(live[0].key, [j.payload for j in live])
            except BaseException as e:  # noqa: BLE001 - handed to every caller of the batch
                for job in live:
                    job.future.set_exception(e)
            else:
                for job, result in zip(live, results):
                    job.future.set_result(result)
            took = time.monotonic() - now
            self._batch_seconds = took if self._batch_seconds == 0 else 0.8 * self._batch_seconds + 0.2 * took
