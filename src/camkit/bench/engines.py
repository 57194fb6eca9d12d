"""Engines run shards and stream their records back: ``get_engine(name).run(shards, config)``.

An engine only decides *where* `camkit.bench.runner.run_shard` runs. The local engine calls
it in this process, shard after shard. Another engine (e.g. Ray: one task per shard, records
gathered as tasks finish) registers itself with `register_engine` and needs no change to the
runner, the store or the report -- records carry their artifacts inline and are written by the
caller, so workers never touch the run directory.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable, Protocol

from ..errors import CamkitError
from .config import BenchConfig
from .plan import Shard
from .runner import Record, run_shard


class Engine(Protocol):
    """Runs shards; yields every record of every shard (order within a shard kept)."""

    def run(self, shards: Iterable[Shard], config: BenchConfig) -> Iterator[Record]: ...


class LocalEngine:
    """Runs each shard in this process, in plan order."""

    def __init__(self, **_options: Any) -> None:
        pass

    def run(self, shards: Iterable[Shard], config: BenchConfig) -> Iterator[Record]:
        for shard in shards:
            yield from run_shard(shard, config)


def _ray_engine(**options: Any) -> Engine:
    from .ray_engine import RayEngine  # Ray is imported only when asked for

    return RayEngine(**options)


_ENGINES: dict[str, Callable[..., Engine]] = {"local": LocalEngine, "ray": _ray_engine}


def register_engine(name: str, factory: Callable[..., Engine]) -> None:
    """Make ``factory(**options)`` available as ``--engine name``."""
    _ENGINES[name] = factory


def list_engines() -> list[str]:
    """The names of the registered engines: `local`, `ray` (needs the ray extra) and any added by `register_engine`."""
    return list(_ENGINES)


def get_engine(name: str, **options: Any) -> Engine:
    """The engine registered as ``name``."""
    if name not in _ENGINES:
        raise CamkitError(f"unknown engine {name!r}; available: {', '.join(_ENGINES)}")
    return _ENGINES[name](**options)
