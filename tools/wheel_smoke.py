"""Build camkit's wheel and try it installed, as a user gets it (CI installs camkit editable, which
hides package data missing from the wheel).

    python3 tools/wheel_smoke.py [--keep DIR]

1. the wheel is built (``pip wheel --no-deps``, with the installed setuptools when it has
   ``bdist_wheel``) from a copy of the files git tracks or would track (no stale ``build/`` from an
   earlier build leaks in);
2. it is installed (``--no-deps``) into a fresh venv made with ``--system-site-packages``, so torch
   and the other dependencies come from the machine and are not installed again;
3. from a directory outside the checkout, with no ``PYTHONPATH``: the imported camkit is the one in
   the venv; every file of ``src/camkit`` that is not Python source (bundled weights, the photos'
   list, the server's static files, ``py.typed``) is in it; the bundled digits weights and the
   photos load; ``camkit demo --help`` and one ``camkit explain`` of a bundled photo run from the
   venv's console script.

Exit status 1, with what was missing or failed, when a check fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run by the venv's python: what the installed package holds and loads
_CHECK = r"""
import sys, camkit
from pathlib import Path
here = Path(camkit.__file__).resolve().parent
assert str(here).startswith(sys.argv[1]), f"camkit imported from {here}, not from the venv {sys.argv[1]}"
missing = [f for f in sys.argv[3:] if not (here / f).is_file()]
assert not missing, f"package files missing from the wheel: {missing}"
model = camkit.models.load("digits_resnet")               # the bundled weights
photos = camkit.data.samples(["chelsea"])                  # the photos' list (samples.json)
assert photos and model.categories, "no bundled photo or class names"
from camkit.data.photos import sample_files
Path(sys.argv[2]).write_text(str(sample_files()["chelsea"]))
print(f"installed camkit {camkit.__version__} at {here}: {len(sys.argv) - 3} package files present")
"""


def _run(what: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    print(f"  {time.perf_counter() - start:5.1f}s  {what}", flush=True)
    if done.returncode != 0:
        sys.exit(f"wheel smoke test: {what} failed (exit {done.returncode}): {' '.join(map(str, cmd))[:500]}\n"
                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _source_copy(dest: Path) -> None:
    """The files git tracks or would track (not ignored), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def package_data() -> list[str]:
    """The files under ``src/camkit`` that are not Python source, relative to the package."""
    pkg = ROOT / "src" / "camkit"
    return sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="camkit-wheel-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        source, dist, venv, run_dir = work / "source", work / "dist", work / "venv", work / "run"
        for d in (source, dist, run_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        _source_copy(source)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        print("wheel smoke test:")
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(dist)]
        if subprocess.run([sys.executable, "-c", "import setuptools.command.bdist_wheel"], capture_output=True).returncode:
            _run("build the wheel (setuptools from the index)", build, env=env)  # no bdist_wheel here: isolated build
        else:
            _run("build the wheel", build + ["--no-build-isolation"], env=env)
        wheel = next(dist.glob("camkit-*.whl"))
        shutil.rmtree(venv, ignore_errors=True)
        _run("a venv with the system's packages",
             [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], env=env)
        python, camkit_cmd = venv / "bin" / "python", venv / "bin" / "camkit"
        _run(f"install {wheel.name} into it", [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                                                "--no-deps", "--no-index", str(wheel)], env=env)
        photo_file = run_dir / "photo.txt"
        _run("package files, bundled weights and photos",
             [str(python), "-c", _CHECK, str(venv), str(photo_file), *package_data()], cwd=run_dir, env=env)
        demo = _run("camkit demo --help", [str(camkit_cmd), "demo", "--help"], cwd=run_dir, env=env)
        assert "usage: camkit demo" in demo.stdout, demo.stdout
        out = run_dir / "out"
        _run("camkit explain (a bundled photo)", [str(camkit_cmd), "explain", photo_file.read_text(), "--model",
                                                  "digits_resnet", "--threads", "1", "-o", str(out)], cwd=run_dir, env=env)
        written = sorted(p.name for p in out.iterdir())
        if written != ["chelsea_gradcam.npy", "chelsea_gradcam.png"]:
            sys.exit(f"wheel smoke test: camkit explain wrote {written}")
    print(f"wheel smoke test: {wheel.name} passed in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
