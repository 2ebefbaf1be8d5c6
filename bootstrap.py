"""Set up the project environment and run the demo or the tests: ``python bootstrap.py demo|test``.

Creates ``.venv`` next to this file (once), installs the package with the pinned known-good
versions from ``constraints.txt``, removes the torchvision that optimum-intel drags in (it breaks
imports with the CPU torch), then runs ``aipc demo`` or ``pytest``. Standard library only, so it
runs on a fresh Windows or Linux machine with Python 3.11+ (3.12 for the NPU-library recipe too).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import runpy
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "aipc-install.sha256"


def venv_python() -> Path:
    """Path of the virtual environment's interpreter on this platform."""
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def install() -> None:
    """Create the venv and install pinned dependencies, unless the same set is already installed."""
    # setup.py and the C file: the native page trimmer is compiled at install (Linux, optional)
    inputs = ("constraints.txt", "pyproject.toml", "setup.py", "pipeline/core/_pagetrim.c")
    wanted = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in inputs)).hexdigest()
    if STAMP.is_file() and STAMP.read_text(encoding="utf-8").strip() == wanted and venv_python().is_file():
        print("[bootstrap] environment up to date", flush=True)
        return
    if not venv_python().is_file():
        print(f"[bootstrap] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = str(venv_python())
    print("[bootstrap] installing pinned packages (constraints.txt); first run takes a few minutes", flush=True)
    # torch first and pinned, so no resolver step can pull a CUDA build. pip speaks (no -q): a first install takes
    # minutes, and its per-package lines and download bars (with time left) are the progress a user waits on; each
    # step also gets a start line and a line with its elapsed time.
    with timed("1/3 torch (CPU build, pinned)"):
        pip_install(py, ["-c", "constraints.txt", "torch"])
    with timed("2/3 this package and its pinned dependencies"):
        pip_install(py, ["-c", "constraints.txt", "-e", ".[dev]"])
    with timed("3/3 removing torchvision (it breaks imports beside the CPU torch)"):
        subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "torchvision"], cwd=ROOT, check=False)
    STAMP.write_text(wanted, encoding="utf-8")


@contextlib.contextmanager
def timed(step: str) -> Iterator[None]:
    """Print ``[bootstrap] step <step> ...`` before the block and ``... done in N s`` after it."""
    started = time.monotonic()
    print(f"[bootstrap] step {step} ...", flush=True)
    yield
    print(f"[bootstrap] step {step}: done in {time.monotonic() - started:.0f} s", flush=True)


def pip_install(py: str, args: list[str]) -> None:
    """``pip install ARGS`` with pip's own progress on the console; if it fails, stop with pip's reason in one line.

    pip's full log goes to a file (``--log``), read back only on failure, so its download bars stay on the console.
    """
    log = VENV / "aipc-pip.log"
    log.unlink(missing_ok=True)
    if subprocess.run([py, "-m", "pip", "install", "--log", str(log), *args], cwd=ROOT).returncode == 0:
        return
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    text = re.sub(r"(?m)^\d{4}-\d\d-\d\dT[\d:,.]+ ", "", text)  # each log line starts with a timestamp
    reason = runpy.run_path(str(ROOT / "pipeline" / "core" / "package_sets.py"))["pip_failure_line"](text)
    print(f"error: pip could not install {args[-1]} into {VENV}: {reason} (full log: {log})", file=sys.stderr)
    sys.exit(2)


MIN_PYTHON = (3, 11)  # the pinned numpy 2.4 / scipy 1.17 / matplotlib 3.11 wheels need it (pyproject agrees)


def python_problem(version: tuple[int, int] = sys.version_info[:2]) -> str | None:
    """One line saying why this Python cannot install the pinned set, or ``None`` when it can."""
    if tuple(version) >= MIN_PYTHON:
        return None
    hint = "py -3.12 bootstrap.py demo" if os.name == "nt" else "python3.12 bootstrap.py demo"
    return (f"Python {version[0]}.{version[1]} is too old: the pinned packages need Python "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (3.12 recommended); install it and run `{hint}`")


# Two test workers (pytest-xdist), one test module at a time each, so a module's fixtures are built once: on the
# 2-core CI machine the workers overlap one test's imports, installs and DVC runs with another's compute. Modules
# go out in the suite's own order, longest first (tests/conftest.py SLOW_MODULES): xdist would otherwise re-sort
# them by how many tests they hold and start a long one last. `-n 0` after `test` turns it off (the last -n wins).
PARALLEL = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]


def main() -> int:
    """Install, then run the requested action (``demo`` or ``test``, extra arguments go to pytest)."""
    problem = python_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    action = sys.argv[1] if len(sys.argv) > 1 else "test"
    if action not in ("demo", "test", "install"):
        print("usage: python bootstrap.py demo|test|install [pytest args]", file=sys.stderr)
        return 2
    install()
    py = str(venv_python())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": os.pathsep.join([str(venv_python().parent), os.environ.get("PATH", "")])}
    if action == "demo":
        return subprocess.run([py, "-m", "pipeline.cli", "demo"], cwd=ROOT, env=env).returncode
    if action == "test":
        return subprocess.run([py, "-m", "pytest", *PARALLEL, *sys.argv[2:]], cwd=ROOT, env=env).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
