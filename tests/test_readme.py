"""The README's code runs (``tools/run_docs.py``): its Python blocks in order in one namespace, its shell
blocks with bash, offline, on the bundled weights and photos; a block that needs what is not bundled is
marked ``<!-- skip: REASON -->`` and skipped with its reason. The runner itself is tested on a small file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "tools"))
import run_docs  # noqa: E402


def test_every_python_block_runs_and_every_skip_says_why():
    found = run_docs.blocks(README)
    assert [b.where() for b in found if b.kind == "python" and b.skip] == []
    assert sum(b.kind == "python" for b in found) >= 1 and sum(b.kind == "shell" and not b.skip for b in found) >= 1
    assert all(len(b.skip) >= 15 for b in found if b.skip)


@pytest.mark.slow
def test_readme_runs():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "run_docs.py"), str(README)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    summary = done.stdout[done.stdout.rindex("summary:"):]
    assert " failed " not in summary and summary.count(" ran ") >= 2, summary


def test_runner_shares_a_namespace_points_at_the_file_and_skips_with_reasons(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# A page\n\n```python\nx = 2\n```\n\nText.\n\n"            # lines 3-5
        "```python\ny = x + 1\nraise ValueError(y)\n```\n\n"         # lines 9-12
        "<!-- skip: needs a cluster -->\n\n```bash\nexit 3\n```\n\n"  # lines 14-18
        "```sh\ntest -f cat.jpg\npython3 -c 'import importlib.util as u; print(u.find_spec(\"camkit\").origin)'\n```\n\n"
        "```text\nnot code\n```\n"
        "```bash\nfalse\necho unreachable\n```\n"
    )
    found = run_docs.run_file(doc)
    assert [(b.line, b.kind, b.status) for b in found] == [
        (4, "python", "ran"), (10, "python", "failed"), (17, "shell", "skipped"), (21, "shell", "ran"),
        (26, "other", "not code"), (29, "shell", "failed")]
    assert 'doc.md", line 11' in found[1].error and "ValueError: 3" in found[1].error  # x came from the first block
    assert found[2].skip == "needs a cluster"
    out = capsys.readouterr().out
    assert "skipped: needs a cluster" in out
    assert str(ROOT / "src" / "camkit") in out  # the blocks' python3 runs this checkout's camkit
    assert "unreachable" not in out  # bash -e: a failing line ends its block
