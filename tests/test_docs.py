"""The documentation site: `mkdocs build --strict` from this checkout, offline, with every page's code
blocks run by the README's runner (`tools/run_docs.py`, through `tools/docs_hooks.py`) and their
pictures published; a reference entry for every public name; no asset fetched from the network;
the generated pages (CLI, HTTP API, methods, protocols) complete; `camkit docs`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tools"))
import run_docs  # noqa: E402

PAGES = sorted(p for p in DOCS.rglob("*.md"))
PUBLIC = ["camkit", "camkit.targets", "camkit.metrics", "camkit.models", "camkit.viz", "camkit.bench", "camkit.compat"]


def test_every_block_of_every_page_runs_or_says_why_not():
    assert len(PAGES) >= 20
    found = [b for page in PAGES for b in run_docs.blocks(page)]
    assert [b.where() for b in found if b.kind == "python" and b.skip] == []  # Python always runs
    assert all(len(b.skip) >= 15 for b in found if b.skip)
    assert sum(b.kind == "python" for b in found) >= 25 and sum(b.kind == "shell" and not b.skip for b in found) >= 3


def test_generated_references_are_complete():
    pytest.importorskip("mkdocs")
    pytest.importorskip("fastapi")
    import docs_hooks

    import camkit
    from camkit.cli import build_parser

    cli = docs_hooks.cli_reference()
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"### camkit {name}\n" in cli
    assert "--max-maps" in cli and "usage: camkit explain" in cli
    methods = docs_hooks.methods_table()
    for name in camkit.list_methods():
        assert f"| `{name}` |" in methods
    api = docs_hooks.http_reference(docs_hooks.openapi())
    for route in ("`POST /explain`", "`GET /models`", "`GET /methods`"):
        assert route in api
    assert "| `image` | file | yes |" in api
    protocols = docs_hooks.protocols()
    assert "| `threshold` | `0.15` |" in protocols and "Petsiuk" in protocols


def _public_names(module_name: str) -> list[str]:
    import importlib

    module = importlib.import_module(module_name)
    return [f"{module_name}.{n}" for n in module.__all__ if n != "torchcam"]


def _documented(name: str, anchors: set[str]) -> bool:
    """``pkg.name`` has an entry as itself, or at its home module ``pkg.module.name`` (a name imported
    on first use, or shadowed by the module of the same name that holds it)."""
    package, short = name.rsplit(".", 1)
    return name in anchors or any(
        a.startswith(package + ".") and a.endswith("." + short)
        and re.fullmatch(r"[a-z_][a-z0-9_]*", a[len(package) + 1:-len(short) - 1] or "-") for a in anchors)


@pytest.mark.slow
def test_site_builds_strict_offline_with_every_public_name(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-8000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    # every page's code ran, and the pictures it saved are published beside the page
    ran = re.findall(r"camkit docs: ran (\S+)", done.stderr)
    assert len(ran) >= 15 and " failed " not in done.stderr
    for picture in ("home.png", "concepts-frame.png", "methods/gradient.png", "methods/perturbation-digits.png",
                    "tutorials/first-map.png", "tutorials/segmentation.png", "tutorials/detection.png",
                    "tutorials/which-map-iou.png", "tutorials/serving-answer.png"):
        assert (site / picture).stat().st_size > 5000, picture
    assert "baseline:uniform" in (site / "tutorials" / "which-map" / "index.html").read_text()  # the bench table
    # a reference entry (an anchor) for every public name
    html = "".join(p.read_text() for p in (site / "reference").rglob("index.html"))
    anchors = set(re.findall(r'id="(camkit[\w.]*)"', html))
    missing = [n for m in PUBLIC for n in _public_names(m) if not _documented(n, anchors)]
    assert missing == [], missing
    # offline: no web fonts, no script, stylesheet or image from another host
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page
        assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', text), page
    assert (site / "openapi.json").stat().st_size > 1000


def test_camkit_docs_prints_its_command_and_says_what_is_missing(capsys, tmp_path):
    from camkit.cli import main

    assert main(["docs", "--print"]) == 0
    out = capsys.readouterr().out
    assert "mkdocs serve" in out and "127.0.0.1:8000" in out and str(ROOT) in out
    assert main(["docs", "--print", "--build", str(tmp_path / "site")]) == 0
    assert "mkdocs build --strict" in capsys.readouterr().out
    assert main(["docs", "--config", str(tmp_path / "nowhere.yml")]) == 1
    assert 'no mkdocs.yml here' in capsys.readouterr().err
