"""The benchmark: methods x models x data -> records (resumable) -> tables, figures, HTML report.

Modules, one idea each: :mod:`.config` (what and how), :mod:`.sources` (models and data by name),
:mod:`.plan` (shards with stable keys), :mod:`.runner` (one shard -> records, pure),
:mod:`.store` (append-only JSONL), :mod:`.lock` (one writer per run directory),
:mod:`.engines` (where shards run; :mod:`.ray_engine` on a Ray cluster), :mod:`.report` (tables from records), :mod:`.stats` (bootstrap intervals and paired
tests), :mod:`.evidence` (how sure each number is: intervals, tests against the baselines),
:mod:`.verdict` (which map to trust: the rule applied to the tables' tests),
:mod:`.figures`, :mod:`.html`, :mod:`.session` (all of it end to end), :mod:`.demo`.
"""
from .config import BASELINES, TARGET_KINDS, BenchConfig, Protocol
from .engines import LocalEngine, get_engine, list_engines, register_engine
from .plan import Shard, make_plan, resolve_methods
from .runner import run_shard
from .session import BenchResult, run_bench, summary_text, write_report
from .sources import DATASETS, load_model, load_source
from .store import ResultStore, read_records

__all__ = [
    "BASELINES", "TARGET_KINDS", "BenchConfig", "Protocol", "LocalEngine", "get_engine", "list_engines",
    "register_engine", "Shard", "make_plan", "resolve_methods", "run_shard", "BenchResult", "run_bench",
    "summary_text", "write_report", "DATASETS", "load_model", "load_source", "ResultStore", "read_records",
]
