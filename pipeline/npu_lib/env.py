"""The isolated environment of intel-npu-acceleration-library 1.4.0: created on first use, reused after.

The library (archived upstream) pins openvino 2024.4 and numpy < 2, so it cannot share the main
environment. This module builds a venv for it under ``.aipc/envs/`` next to the ``.venv`` that runs the
pipeline (``AIPC_ENVS_DIR`` overrides), named after a hash of its pinned versions and build recipe, so it is
built once per machine and rebuilt only when those change. Stages run :mod:`pipeline.npu_lib.worker` in it.

Installing the library (the Windows wheel, or the patched sdist on Linux) is :mod:`pipeline.npu_lib.build`.
Where the environment cannot be built (platform, compiler, no access to PyPI), :class:`EnvUnavailable` says
why in one line, and the stages record a skipped target instead of failing.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import remove_tree, write_json_atomic
from pipeline.core.config import ASSETS_DIR
from pipeline.core.envs import envs_root
from pipeline.core.log import say, step
from pipeline.npu_lib.build import (
    CMAKE_EDITS,
    LIBRARY,
    LIBRARY_VERSION,
    SDIST_SHA256,
    EnvUnavailable,
    install_library,
    linux_build_reason,
    pip,
)

CONSTRAINTS = ASSETS_DIR / "npu_lib" / "constraints.txt"
WORKER = Path(__file__).with_name("worker.py")
# Installed first and alone, pinned: an unpinned torch would pull GBs of CUDA packages on Linux.
TORCH = "torch==2.13.0"
# The library's own requirements plus what its imports need; exact versions come from CONSTRAINTS.
REQUIREMENTS = ("numpy", "openvino", "transformers", "neural-compressor", "setuptools", "six")
PYTHONS = ((3, 8), (3, 12))  # openvino 2024.4 has wheels for CPython 3.8-3.12
STAMP = "aipc-env.json"

REFUSED = 3  # worker exit code: it refused a model file (hash or allow-list) before anything of it ran


class WorkerError(RuntimeError):
    """The worker process failed; ``returncode`` :data:`REFUSED` means it refused a model file."""

    def __init__(self, message: str, returncode: int, traceback: str = "") -> None:
        super().__init__(message)
        self.returncode, self.traceback = returncode, traceback  # the worker's traceback, held back from the console


@dataclass
class NpuLibEnv:
    """A complete isolated environment: its folder, interpreter and what its probe reported."""

    path: Path
    python: Path
    info: dict[str, Any]


# Windows' MAX_PATH without long paths: 259 characters. The deepest file the env installs is in torch's wheel,
# 173 characters below site-packages (measured on torch 2.13.0's win_amd64 wheel), which is Lib\\site-packages\\.
MAX_PATH = 259
DEEPEST_INSTALLED = len("\\Lib\\site-packages\\") + 173


def env_key() -> str:
    """Hash of everything that decides the environment's content."""
    recipe = {
        "constraints": CONSTRAINTS.read_text(encoding="utf-8"),
        "torch": TORCH,
        "requirements": REQUIREMENTS,
        "sdist": SDIST_SHA256,
        "cmake": CMAKE_EDITS,
        "python": list(sys.version_info[:2]),
        "platform": [sys.platform, platform.machine().lower()],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


ENV_PREFIX = "nl-"  # short on purpose: every character counts against Windows' 260 (see DEEPEST_INSTALLED)


def env_path(root: Path | None = None) -> Path:
    """The environment's folder for the current recipe: ``<root>/nl-<10 hex of the recipe>``."""
    return (root or envs_root()) / f"{ENV_PREFIX}{env_key()[:10]}"


def path_budget_problem(path: Path, long_paths: bool | None = None) -> str | None:
    """One line when installing into ``path`` would overflow Windows' 260 characters, else ``None``.

    ``long_paths``: whether Windows has long paths enabled (read from the registry when omitted; not Windows: True).
    """
    if long_paths is None:
        long_paths = windows_long_paths_enabled()
    deepest = len(str(path)) + DEEPEST_INSTALLED
    if long_paths or deepest <= MAX_PATH:
        return None
    return (
        f"the {LIBRARY} environment at {path} would hold paths of {deepest} characters, over Windows' 260: "
        f"set AIPC_ENVS_DIR to a shorter folder (e.g. C:\\aipc-envs) or enable long paths (admin: "
        f"LongPathsEnabled=1 under HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem)"
    )


def windows_long_paths_enabled() -> bool:
    """Whether Windows lifts the 260-character limit (``LongPathsEnabled``); True off Windows."""
    if sys.platform != "win32":  # os.name == "nt"; mypy reads sys.platform (winreg exists only there)
        return True
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return bool(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
    except OSError:
        return False


def venv_python(path: Path) -> Path:
    """Interpreter of the venv at ``path`` on this platform."""
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def unavailable_reason() -> str | None:
    """Why the environment cannot be built here, or None when it can (checked before building)."""
    system, machine = platform.system(), platform.machine().lower()
    if system not in ("Linux", "Windows"):
        return f"{LIBRARY} {LIBRARY_VERSION} supports Windows and Linux only, not {system}"
    if machine not in ("x86_64", "amd64"):
        return f"{LIBRARY} needs an x86-64 CPU; this machine is {machine}"
    low, high = PYTHONS
    if not low <= sys.version_info[:2] <= high:
        return (
            f"openvino 2024.4 (pinned by {LIBRARY}) has no wheels for Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}: run the pipeline with Python 3.11 or 3.12"
        )
    return linux_build_reason() if system == "Linux" else None


def load(root: Path | None = None) -> NpuLibEnv | None:
    """The complete environment for the current recipe, or None when it has not been built."""
    path = env_path(root)
    stamp = path / STAMP
    if not (stamp.is_file() and venv_python(path).is_file()):
        return None
    return NpuLibEnv(path, venv_python(path), json.loads(stamp.read_text(encoding="utf-8")))


def ensure(root: Path | None = None, retry: bool = False) -> NpuLibEnv:
    """Return the isolated environment, building it first if this machine has none yet.

    A build that failed is not retried by every stage that needs the environment (six in the default
    pipeline): its reason is kept beside it and given again until ``retry`` (``aipc npu-lib-env``).

    Raises:
        EnvUnavailable: When it cannot be built here (the message says why).
    """
    found = load(root)
    if found is not None:
        return found
    path = env_path(root)
    failed = failure_marker(path)
    if failed.is_file() and not retry:
        raise EnvUnavailable(
            f"{failed.read_text(encoding='utf-8').strip()} (an earlier build failed; `aipc npu-lib-env` tries again)"
        )
    reason = unavailable_reason() or path_budget_problem(path)
    if reason:
        raise EnvUnavailable(reason)
    try:
        env = build(path)
    except EnvUnavailable as err:
        failed.write_text(str(err), encoding="utf-8")
        raise
    failed.unlink(missing_ok=True)
    return env


def failure_marker(path: Path) -> Path:
    """Where the reason of a failed build of the environment at ``path`` is kept."""
    return path.with_name(f"{path.name}.failed")


def build(path: Path) -> NpuLibEnv:
    """Create the venv at ``path`` (atomically), install the pinned packages and the library, probe it."""
    log = path.with_name(f"{path.name}.log")
    say(f"creating the isolated {LIBRARY} environment {path} (first use on this machine, a few minutes; log: {log})")
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# build of {path.name}\n", encoding="utf-8")
    # Built in place, not in a staged sibling: a venv records its own path, and a longer temporary name would
    # cost the characters Windows does not have. The stamp, written last, marks it complete (see load()).
    if path.exists():
        remove_tree(path)  # an earlier build that did not finish
    try:
        env = _build_into(path, log, start)
    except BaseException:
        remove_tree(path)
        raise
    prune(path)
    say(f"isolated environment ready in {env.info['build_s']:.0f} s: {path}")
    return env


def _build_into(path: Path, log: Path, start: float) -> NpuLibEnv:
    """Create the venv at ``path``, install everything, probe it, and write the stamp last."""
    with step("creating the venv"):
        venv.EnvBuilder(with_pip=True).create(path)
    python = venv_python(path)
    with step(f"installing {TORCH}, then openvino 2024.4, numpy<2, transformers, neural-compressor (pinned)"):
        pip(python, ["install", "-c", str(CONSTRAINTS), TORCH], log)
        pip(python, ["install", "-c", str(CONSTRAINTS), *REQUIREMENTS], log)
    install_library(python, log)
    with step(f"checking that {LIBRARY} imports"), tempfile.TemporaryDirectory(prefix="npu-lib-") as scratch:
        try:
            info = run_worker(python, "probe", [], Path(scratch))
        except WorkerError as err:
            raise EnvUnavailable(f"{LIBRARY} was built but does not import: {err}") from None
    info.update(key=env_key(), build_s=round(time.perf_counter() - start, 1))
    write_json_atomic(path / STAMP, info)
    env = load(path.parent)
    if env is None:  # the stamp was written just above: only another process removing the folder gets here
        raise EnvUnavailable(f"{path} vanished right after it was built")
    return env


def prune(current: Path) -> None:
    """Remove environments of older recipes beside ``current`` (each holds ~2 GB)."""
    for pattern in (f"{ENV_PREFIX}*", f"npu-lib-{LIBRARY_VERSION}-*", f".npu-lib-{LIBRARY_VERSION}-*"):  # + old names
        for old in current.parent.glob(pattern):
            if old.is_dir() and old.name != current.name:
                remove_tree(old)


def worker_env() -> dict[str, str]:
    """Environment of a worker: offline, no progress bars, nothing of the main environment's Python paths."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # UTF-8 both ways: the worker prints model text, and a cp1252 console must not garble or stop it
    return {
        **env,
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUTF8": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
        # the pickle keeps transformers' set-ordered lists and GenerationConfig's hash(): fixed string hashing makes
        # the same build give the same bytes (with worker_layers.make_reproducible)
        "PYTHONHASHSEED": "0",
        # glibc: two malloc arenas, not one per thread (OpenVINO's and torch's threads each kept freed kernel and
        # activation buffers in their own): 0.1 GiB less at the full-size int8 stand-in's peak; other libcs ignore it
        "MALLOC_ARENA_MAX": "2",
    }


def run_worker(python: Path, command: str, args: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``worker.py COMMAND ARGS`` with ``python`` in ``cwd``, streaming its output; return its result.

    Raises:
        WorkerError: When the worker exits non-zero (message: its last output line).
    """
    result = Path(cwd) / f"{command}-result.json"
    # -P -s with worker_env (no PYTHON* of ours but its own): what -I isolates, but PYTHONHASHSEED, PYTHONUTF8 and
    # PYTHONIOENCODING take effect (-I ignores every PYTHON* variable, so set iteration order changed the pickle)
    cmd = [str(python), "-P", "-s", "-u", str(WORKER), command, "--result", str(result), *args]
    tail: collections.deque[str] = collections.deque(maxlen=1)
    held: list[str] = []  # a traceback: not streamed (errors are one line), handed to the caller in WorkerError
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    ) as proc:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            if held or line.startswith("Traceback (most recent call last)"):
                held.append(line)
            elif line.strip():
                print(f"    {line.rstrip()}", file=sys.stderr, flush=True)
            tail.extend([line.strip()] if line.strip() else [])
    if proc.returncode:
        raise WorkerError(tail[0] if tail else f"worker exited with {proc.returncode}", proc.returncode, "".join(held))
    return json.loads(result.read_text(encoding="utf-8"))
