"""The benchmark: methods x models x data -> records (resumable) -> tables, figures, HTML report.

Modules, one idea each: `.config` (what and how), `.sources` (models and data by name),
`.plan` (shards with stable keys), `.runner` (one shard -> records, pure),
`.store` (append-only JSONL), `.lock` (one writer per run directory),
`.engines` (where shards run; `.ray_engine` on a Ray cluster), `.report` (tables from records), `.stats` (bootstrap intervals and paired
tests), `.evidence` (how sure each number is: intervals, tests against the baselines),
`.verdict` (which map to trust: the rule applied to the tables' tests),
`.figures`, `.html`, `.session` (all of it end to end), `.demo`.
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
