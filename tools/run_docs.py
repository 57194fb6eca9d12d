"""Run the code blocks of Markdown files as a reader would, offline, and say which failed.

    python3 tools/run_docs.py README.md [docs/*.md ...] [--list] [--work DIR]

Per file, in a fresh temporary directory:

- every ```` ```python ```` block runs in order in one namespace, so a block may use the names an
  earlier block of the same file defined (as a reader pasting them into one session would);
  tracebacks point at the Markdown file's own line numbers;
- every ```` ```bash ```` / ```` ```sh ```` block runs with ``bash -e -o pipefail``;
- a block preceded by ``<!-- skip: REASON -->`` (blank lines between allowed) is not run and
  REASON is printed: for blocks that need what is not bundled (ImageNet, your own weights, a
  network, a cluster) or that run for minutes;
- other fences (``text``, none) are not code and are left alone.

The directory holds the files the docs use as a reader's own: ``cat.jpg`` (the bundled photo of
a cat, scikit-image's ``chelsea``). ``camkit`` and ``python3`` on the blocks' ``PATH`` run the
camkit this script imports (this checkout's ``src`` first), so the docs are checked against the
code beside them; Hugging Face is set offline and matplotlib to a non-interactive backend.

With ``--work DIR`` (one file) the blocks run in DIR and what they write stays there: the docs build
(``tools/docs_hooks.py``) publishes the pictures a page's blocks save beside that page.

Exit status 1 when a block failed. `run_file` returns one `Block` per code block.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SRC = Path(__file__).resolve().parents[1] / "src"
PYTHON = ("python", "py", "python3")
SHELL = ("bash", "sh", "shell")
_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
_SKIP = re.compile(r"^\s*<!--\s*skip:\s*(.+?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block: where it starts (the line after its fence), its language and code;
    after a run, ``status`` ("ran", "skipped", "failed"), the seconds it took and what went wrong."""

    path: Path
    line: int
    lang: str
    code: str
    skip: Optional[str] = None
    status: str = "pending"
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds, this process's and its children's (the wall time depends on the machine's load)
    error: str = ""

    @property
    def kind(self) -> str:
        return "python" if self.lang in PYTHON else "shell" if self.lang in SHELL else "other"

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of Markdown file ``path``, each with the skip reason written before it."""
    return blocks_of_text(Path(path).read_text(encoding="utf-8"), Path(path))


def blocks_of_text(text: str, path: Path = Path("<text>")) -> list[Block]:
    """The fenced code blocks of Markdown ``text`` (read from ``path``), as `blocks` finds them."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not re.match(rf"^{indent}```\s*$", lines[j]):
            j += 1
        code = "\n".join(ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j])
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        skip = _SKIP.match(lines[k]) if k >= 0 else None
        out.append(Block(Path(path), i + 2, lang, code + "\n", skip.group(1) if skip else None))
        i = j + 1
    return out


def _camkit_root() -> Path:
    """The directory holding the camkit package this script runs (this checkout's ``src`` first)."""
    sys.path.insert(0, str(SRC))
    import camkit

    return Path(camkit.__file__).resolve().parents[1]


def prepare(work: Path) -> dict[str, str]:
    """Fill ``work`` with the reader's files and commands; returns the environment the blocks run in."""
    root = str(_camkit_root())
    from PIL import Image

    from camkit.data.photos import sample_files

    Image.open(sample_files()["chelsea"]).convert("RGB").save(work / "cat.jpg", quality=92)
    bin_dir = work / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for name, command in (("camkit", f'"{sys.executable}" -m camkit'), ("python3", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}


def _run_python(block: Block, namespace: dict) -> None:
    code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")  # the file's line numbers
    exec(code, namespace)


def _run_shell(block: Block, env: dict[str, str], work: Path, timeout: float) -> None:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode}: {done.stderr.strip()[-2000:]}")


def run_file(path: Path, work: Optional[Path] = None, timeout: float = 600.0, kinds: tuple[str, ...] = ("python", "shell")
             ) -> list[Block]:
    """Run the code blocks of ``path`` (module doc) in ``work`` (default: a fresh temporary directory);
    blocks of other ``kinds`` are marked "not run"."""
    found = blocks(path)
    for b in found:
        if b.kind not in kinds and b.kind != "other":
            b.status = "not run"
    with tempfile.TemporaryDirectory(prefix="camkit-docs-") as tmp:
        work = Path(work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        path = Path(path).resolve()
        env = prepare(work)
        namespace: dict = {"__name__": "__docs__"}
        here, saved_env = os.getcwd(), dict(os.environ)
        os.chdir(work)
        os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MPLBACKEND")})
        try:
            for b in found:
                _run_one(b, namespace, env, work, timeout)
        finally:
            os.chdir(here)
            os.environ.clear()
            os.environ.update(saved_env)
    return found


def _run_one(b: Block, namespace: dict, env: dict[str, str], work: Path, timeout: float) -> None:
    if b.kind == "other":
        b.status = "not code"
        return
    if b.status == "not run":
        return
    if b.skip:
        b.status = "skipped"
        print(f"--- {b.where()} ({b.kind}): skipped: {b.skip}", flush=True)
        return
    print(f"--- {b.where()} ({b.kind})", flush=True)
    start, cpu = time.perf_counter(), _cpu()
    try:
        _run_python(b, namespace) if b.kind == "python" else _run_shell(b, env, work, timeout)
        b.status = "ran"
    except Exception as exc:  # a failing block is the report, not a crash of the runner
        b.status = "failed"
        b.error = "".join(traceback.format_exception(exc)) if b.kind == "python" else str(exc)
        print(f"FAILED {b.where()}:\n{b.error}", file=sys.stderr, flush=True)
    b.seconds, b.cpu = time.perf_counter() - start, _cpu() - cpu


def _cpu() -> float:
    """CPU seconds used so far by this process (all threads) and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--list", action="store_true", help="list the blocks and their skip reasons, run nothing")
    parser.add_argument("--kind", choices=("python", "shell"), default=None, help="run only the blocks of this kind")
    parser.add_argument("--work", type=Path, default=None,
                        help="run in this directory and keep what the blocks write (one file only)")
    args = parser.parse_args(argv)
    if args.work is not None and len(args.files) != 1:
        parser.error("--work takes one file: each file's blocks run in a directory of their own")
    kinds = (args.kind,) if args.kind else ("python", "shell")
    results = []
    for path in args.files:
        results += blocks(path) if args.list else run_file(path, work=args.work, kinds=kinds)
    print("\nsummary:")
    for b in results:
        if b.kind != "other":
            took = "" if args.list else f"{b.status:<8} {b.seconds:6.1f}s wall {b.cpu:6.1f}s cpu  "
            print(f"  {b.where():<20} {b.kind:<7} {took}{'skip: ' + b.skip if b.skip else ''}")
    return 1 if any(b.status == "failed" for b in results) else 0


if __name__ == "__main__":
    sys.exit(main())
