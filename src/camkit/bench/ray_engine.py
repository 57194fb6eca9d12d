"""Run benchmark shards on a Ray cluster (``camkit bench --engine ray``; needs ``camkit[ray]``).

Each shard becomes one Ray task that calls `camkit.bench.runner.run_shard` and returns the
shard's records. Ray reuses worker processes, and models and datasets are cached per process
(`.sources`), so a worker loads each model once. Records come back to the driver as tasks
finish and are written there, into the same ``results.jsonl`` as the local engine, so resume works
the same way: a finished shard is not redone, a shard that was in flight is redone from scratch
(its units were never written, so nothing is duplicated). A worker that dies mid-shard costs a
retry of that shard only (``max_retries``).

``address``: ``None`` starts a fresh local Ray instance (``num_cpus`` CPUs; Ray's ``"local"``, so a
cluster recorded on the machine by an earlier ``ray start`` is not joined), ``"auto"`` joins the
cluster this machine belongs to, ``"HOST:6379"`` a cluster's head, ``"ray://host:10001"`` a remote
one through Ray Client. Ray 2.60 turns token authentication on by default (``ray.init`` creates
``~/.ray/auth_token``, ``ray start --head`` uses it when present), but a node joining with ``ray start
--address`` and a driver given an explicit address only send the token when ``RAY_AUTH_MODE=token``
is set: set it, with the same token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH``), on every node and for ``camkit bench`` (README: Running on a Ray cluster).
``num_workers``: shards in flight at
once (default: the cluster's CPUs). ``gpus_per_worker``: GPUs each task reserves (use with
``--device cuda``).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

from ..errors import CamkitError
from .config import BenchConfig
from .plan import Shard
from .runner import Record, run_shard


def _shard_records(shard: Shard, config: BenchConfig) -> list[Record]:
    return list(run_shard(shard, config))


class RayEngine:
    """Shards as Ray tasks, at most ``num_workers`` in flight; records yielded as tasks finish."""

    def __init__(
        self,
        address: Optional[str] = None,
        num_workers: Optional[int] = None,
        gpus_per_worker: float = 0.0,
        max_retries: int = 3,
        num_cpus: Optional[int] = None,
        shard_fn: Callable[[Shard, BenchConfig], list[Record]] = _shard_records,
        **_options: Any,
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise CamkitError("--engine ray needs Ray: pip install 'camkit[ray]'") from e
        if num_workers is not None and num_workers < 1:
            raise CamkitError(f"num_workers must be >= 1, got {num_workers}")
        if gpus_per_worker < 0:
            raise CamkitError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
        self.address, self.num_workers, self.gpus = address, num_workers, gpus_per_worker
        self.max_retries, self.num_cpus, self.shard_fn = max_retries, num_cpus, shard_fn

    def _connect(self) -> Any:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None and self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            try:  # "local": a fresh instance, never a cluster Ray recorded on this machine earlier
                ray.init(address=self.address or "local", **kwargs)
            except ConnectionError as e:
                raise CamkitError(f"cannot reach the Ray cluster at {self.address!r}: {e}") from e
        return ray

    def run(self, shards: Iterable[Shard], config: BenchConfig) -> Iterator[Record]:
        ray = self._connect()
        task = ray.remote(num_cpus=1, num_gpus=self.gpus, max_retries=self.max_retries)(self.shard_fn)
        todo = list(shards)
        limit = self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        config_ref = ray.put(config)
        in_flight: dict[Any, Shard] = {}
        while todo or in_flight:
            while todo and len(in_flight) < limit:
                shard = todo.pop(0)
                in_flight[task.remote(shard, config_ref)] = shard
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                shard = in_flight.pop(ref)
                try:
                    records = ray.get(ref)
                except Exception as e:  # retries exhausted: stop, what finished is already written
                    for r in in_flight:
                        ray.cancel(r, force=True)
                    raise CamkitError(f"shard {shard.key} failed on Ray after {self.max_retries} retries: {e}") from e
                yield from records
