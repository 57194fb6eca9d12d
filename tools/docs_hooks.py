"""MkDocs hooks of camkit's site (``mkdocs.yml``: ``hooks: [tools/docs_hooks.py]``).

- Every page's code blocks run while the site builds, with the README's runner
  (``tools/run_docs.py --work DIR``, one subprocess per page, offline); a failing block fails the
  build, and the pictures a page's blocks save (``.png``, ``.jpg``, ``.svg``, ``.gif``) are
  published beside the page, so ``![...](gradient.png)`` under the block that saved it shows what
  that code drew on this build. A page's run is kept for the life of the process while its text is
  unchanged (``mkdocs serve`` rebuilds in seconds).
- ``<!-- generated: cli -->`` in a page becomes the ``--help`` of every ``camkit`` subcommand, read
  from the argparse parsers (``camkit.cli.build_parser``).
- ``<!-- generated: methods -->`` becomes the table of every registered method: its family page,
  class, ``output``, ``cost`` and ``expensive``, read from the classes (`camkit.list_methods`).
- ``<!-- generated: protocols -->`` becomes every metric's `Protocol`: its name, its fields with
  their defaults (each a convention a published number depends on) and its references.
- ``<!-- generated: http-api -->`` becomes the routes and schemas of ``camkit serve``'s OpenAPI
  (``camkit.serve.create_app(...).openapi()``), also published as ``openapi.json``.
"""
from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the references describe the camkit beside this file, not another installed one
RUNNER = ROOT / "tools" / "run_docs.py"
PICTURES = (".png", ".jpg", ".jpeg", ".svg", ".gif")
READER_FILES = {"cat.jpg"}  # what the runner puts in the directory as the reader's own files
_RUNS: dict[str, Path] = {}  # hash of a page's text -> the directory its blocks ran in (this process)
_PAGES: dict[str, Path] = {}  # a page's src_uri -> the directory its blocks ran in (this build)
_TMP = Path(tempfile.mkdtemp(prefix="camkit-site-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
_OUTPUT = re.compile(r"<!--\s*output:\s*([\w.-]+)\s*-->")


def _has_code(text: str) -> bool:
    sys.path.insert(0, str(RUNNER.parent))
    import run_docs

    return any(b.kind != "other" and not b.skip for b in run_docs.blocks_of_text(text))


def run_page(path: Path, threads: Optional[int] = None) -> Path:
    """Run the code blocks of page ``path`` in a directory of their own (torch limited to ``threads``
    threads when given); return it. Raises `PluginError` with the runner's report when a block failed."""
    text = path.read_text(encoding="utf-8")
    key = hashlib.sha256(f"{path}\n{text}".encode()).hexdigest()[:16]
    if key in _RUNS:
        return _RUNS[key]
    work = _TMP / key
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, str(RUNNER), str(path), "--work", str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    summary = done.stdout[done.stdout.rfind("summary:"):]
    print(f"camkit docs: ran {path.relative_to(ROOT)}\n{summary}", file=sys.stderr, flush=True)
    if done.returncode != 0:
        raise PluginError(f"a code block of {path} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    _RUNS[key] = work
    return work


def on_files(files: Files, config: Any) -> Files:
    """Run each page's blocks (``CAMKIT_DOCS_JOBS`` pages at once, default: up to 2, each with one
    torch thread); publish their pictures beside the page; add ``openapi.json``."""
    pages = [page for page in files.documentation_pages()
             if _has_code(Path(page.abs_src_path).read_text(encoding="utf-8"))]
    jobs = max(1, int(os.environ.get("CAMKIT_DOCS_JOBS", min(2, os.cpu_count() or 1))))
    with ThreadPoolExecutor(jobs) as pool:
        works = list(pool.map(lambda page: run_page(Path(page.abs_src_path), threads=1 if jobs > 1 else None), pages))
    for page, work in zip(pages, works):
        _PAGES[page.src_uri] = work
        for out in sorted(work.iterdir()):
            if out.suffix.lower() not in PICTURES or out.name in READER_FILES:
                continue
            uri = posixpath.join(posixpath.dirname(page.src_uri), out.name)
            if files.get_file_from_path(uri) is not None:
                raise PluginError(f"{page.src_uri}'s blocks wrote {out.name}, which another page or file already "
                                  f"publishes as {uri}: give it a name of its own")
            files.append(File.generated(config, uri, abs_src_path=str(out)))
    files.append(File.generated(config, "openapi.json", content=json.dumps(openapi(), indent=1)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fill the ``<!-- generated: ... -->`` markers, and each ``<!-- output: NAME -->`` with the
    Markdown file NAME that the page's own blocks wrote (a table a block computed, say)."""
    def output(m: re.Match) -> str:
        work = _PAGES.get(page.file.src_uri)
        found = work / m.group(1) if work is not None else None
        if found is None or not found.is_file():
            raise PluginError(f"{page.file.src_uri}: <!-- output: {m.group(1)} --> names a file its code blocks did not write")
        return re.sub(r"^(#+) ", r"\1## ", found.read_text(encoding="utf-8"), flags=re.M)  # its headings under the page's

    markdown = _OUTPUT.sub(output, markdown)
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    if "<!-- generated: methods -->" in markdown:
        markdown = markdown.replace("<!-- generated: methods -->", methods_table())
    if "<!-- generated: protocols -->" in markdown:
        markdown = markdown.replace("<!-- generated: protocols -->", protocols())
    if "<!-- generated: http-api -->" in markdown:
        markdown = markdown.replace("<!-- generated: http-api -->", http_reference(openapi()))
    return markdown


# ---------------------------------------------------------------------------------------------- CLI
def cli_reference() -> str:
    """Markdown: the ``camkit`` parser's help, then each subcommand's, as argparse prints them."""
    from camkit.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: the same page everywhere
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parts = ["### camkit\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
        for name, p in sub.choices.items():
            parts += [f"### camkit {name}\n", "```text\n" + p.format_help().rstrip() + "\n```\n"]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------- methods
#: the module a method class lives in -> its family page (methods/*.md)
FAMILIES = {"gradient": "gradient", "shapley": "gradient", "scorecam": "perturbation", "ablation": "perturbation",
            "eigen": "components", "eigengrad": "components", "kpca": "components", "fem": "components",
            "randomcam": "components", "dff": "dff", "fullgrad": "pixel", "guided": "pixel", "meta": "meta",
            "sess": "meta", "legrad": "legrad"}


def methods_table() -> str:
    """Markdown: one row per registered method, read from its class's declarations."""
    import camkit
    from camkit.methods import get

    rows = ["| name | class | family | output | cost | expensive |", "|---|---|---|---|---|---|"]
    for name in camkit.list_methods():
        cls = get(name)
        family = cls.__module__.split(".")[2]
        page = FAMILIES.get(family)
        if page is None:
            raise PluginError(f"method {name!r} lives in camkit.methods.{family}, which has no family page: "
                              "add it to FAMILIES in tools/docs_hooks.py and describe it on that page")
        rows.append(f"| `{name}` | `camkit.{cls.__name__}` | [{page}]({page}.md) | `{cls.output}` | "
                    f"{_cell(cls.cost)} | {'yes' if cls.expensive else 'no'} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------- protocols
def protocols() -> str:
    """Markdown: per metric family, the default `Protocol` record as a table of its conventions."""
    import dataclasses

    from camkit import metrics

    out: list[str] = []
    families = [getattr(metrics, n) for n in metrics.__all__ if n.endswith("Protocol") and n != "Protocol"]
    for cls in families:
        record = cls()
        out += [f"### {cls.NAME}\n", f"`camkit.metrics.{cls.__name__}`; references: {cls.REFERENCE}\n",
                "| convention | default |", "|---|---|"]
        out += [f"| `{f.name}` | `{_cell(repr(getattr(record, f.name)))}` |" for f in dataclasses.fields(record)]
        out += ["", f"One line, as reports print it: `{_cell(record.describe())}`", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- HTTP API
_OPENAPI: dict[str, Any] = {}


def openapi() -> dict[str, Any]:
    """``camkit serve``'s OpenAPI document (the app built on the bundled digits ResNet; the routes
    and schemas do not depend on the models served)."""
    if not _OPENAPI:
        import camkit
        from camkit.serve import create_app

        app = create_app({"digits_resnet": camkit.models.load("digits_resnet")})
        _OPENAPI.update(app.openapi())
    return _OPENAPI


def _type(schema: Any, spec: dict[str, Any]) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s, spec) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}), spec)}"
    if schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'], spec)}"
    return "file" if schema.get("format") == "binary" else schema.get("type", "any")


def _cell(text: Any) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _properties(schema: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", ()))
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        default = f" (default `{prop['default']}`)" if "default" in prop else ""
        rows.append(f"| `{name}` | {_type(prop, spec)} | {'yes' if name in required else 'no'} | "
                    f"{_cell(prop.get('description', prop.get('title', '')))}{default} |")
    return rows


def http_reference(spec: dict[str, Any]) -> str:
    """Markdown: each route (method, path, summary, form fields, answers), then each schema."""
    out: list[str] = [f"OpenAPI {spec.get('openapi', '')}, {spec['info']['title']} {spec['info'].get('version', '')}; "
                      "the document itself: [openapi.json](openapi.json).\n"]
    schemas = spec.get("components", {}).get("schemas", {})
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append(f"### `{method.upper()} {path}`\n")
            if op.get("summary"):
                out.append(f"**{op['summary']}**\n")
            if op.get("description"):
                out.append(op["description"].strip() + "\n")
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
                out += [f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}), spec)} | "
                        f"{'yes' if p.get('required') else 'no'} | {_cell(p.get('description'))} |" for p in params]
                out.append("")
            body = op.get("requestBody", {}).get("content", {})
            for ctype, media in body.items():
                schema = media.get("schema", {})
                if "$ref" in schema:
                    schema = schemas.get(schema["$ref"].rsplit("/", 1)[-1], {})
                out.append(f"Request body: `{ctype}`\n")
                out += _properties(schema, spec) + [""]
            out += ["| status | answer |", "|---|---|"]
            for code, resp in op.get("responses", {}).items():
                media = resp.get("content", {}).get("application/json", {})
                kind = f" ({_type(media['schema'], spec)})" if media.get("schema") else ""
                out.append(f"| {code} | {_cell(resp.get('description'))}{kind} |")
            out.append("")
    out.append("### Schemas\n")
    for name, schema in schemas.items():
        out.append(f"### {name}\n")
        if schema.get("description"):
            out.append(schema["description"].strip() + "\n")
        out += _properties(schema, spec) + [""]
    return "\n".join(out)
