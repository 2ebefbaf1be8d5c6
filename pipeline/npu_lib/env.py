"""The isolated environment of intel-npu-acceleration-library 1.4.0: created on first use, reused after.

The library (archived upstream) pins openvino 2024.4 and numpy < 2, so it cannot share the main
environment. This module builds a venv for it under ``.aipc/envs/`` next to the ``.venv`` that runs the
pipeline (``AIPC_ENVS_DIR`` overrides), named after a hash of its pinned versions and build recipe, so it is
built once per machine and rebuilt only when those change. Stages run :mod:`pipeline.npu_lib.worker` in it.

Installing the library: on Windows from its PyPI wheel. On Linux PyPI has only an sdist whose CMake build
rejects non-Ubuntu distributions, downloads an OpenVINO archive and compiles with ``-march=native``;
:data:`CMAKE_EDITS` make it build against the ``openvino==2024.4.0`` wheel already in the environment, with
portable flags (about 20 s). Where the environment cannot be built (platform, compiler, no access to PyPI),
:class:`EnvUnavailable` says why in one line, and the stages record a skipped target instead of failing.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import platform
import shutil
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
from pipeline.core.errors import fail
from pipeline.core.hashes import sha256_file
from pipeline.core.log import say, step

LIBRARY, LIBRARY_VERSION = "intel-npu-acceleration-library", "1.4.0"
SDIST = "intel_npu_acceleration_library-1.4.0.tar.gz"
SDIST_SHA256 = "85bc37169189a0bfdb536a74de454925a4750adc1000d29a6c87de1f1a3a8d7d"  # PyPI, checked on download
CONSTRAINTS = ASSETS_DIR / "npu_lib" / "constraints.txt"
WORKER = Path(__file__).with_name("worker.py")
# Installed first and alone, pinned: an unpinned torch would pull GBs of CUDA packages on Linux.
TORCH = "torch==2.13.0"
# The library's own requirements plus what its imports need; exact versions come from CONSTRAINTS.
REQUIREMENTS = ("numpy", "openvino", "transformers", "neural-compressor", "setuptools", "six")
PYTHONS = ((3, 8), (3, 12))  # openvino 2024.4 has wheels for CPython 3.8-3.12
STAMP = "aipc-env.json"

# Edits to the sdist's CMakeLists.txt: (first line, last line, replacement) — the span from the first to
# the last anchor (inclusive) is replaced; each anchor must occur exactly once.
CMAKE_EDITS = (
    # -march=native builds for this CPU only; the kernels need AVX2 + F16C (conversion.h), as /arch:AVX2 on
    # MSVC. -Werror is dropped so that a newer compiler's new warnings cannot break the build.
    (
        "add_compile_options(-Wall",
        "-march=native)",
        "add_compile_options(-Wall -Wextra -pedantic -Wdouble-promotion -Wfloat-conversion -mavx2 -mf16c)",
    ),
    # No lsb_release check (Ubuntu only) and no OpenVINO archive download: use the openvino wheel's CMake package.
    (
        "function(get_linux_lsb_release_information)",
        "find_package(OpenVINO REQUIRED PATHS ${openvino_SOURCE_DIR}/runtime/cmake)",
        'find_package(OpenVINO REQUIRED PATHS "$ENV{AIPC_OPENVINO_DIR}/cmake" NO_DEFAULT_PATH)',
    ),
    # Do not copy an OpenVINO runtime and Python package into the library: the wheel provides both. The
    # library's loader dlopens lib/libopenvino.so, so a stub of that name pulls in the wheel's runtime.
    (
        "if (WIN32)\n    set (CMAKE_RUNTIME_OUTPUT_DIRECTORY",
        "set(CMAKE_POSITION_INDEPENDENT_CODE ON)",
        "set(CMAKE_POSITION_INDEPENDENT_CODE ON)\n"
        "set(CMAKE_BUILD_WITH_INSTALL_RPATH ON)\n"
        'set(CMAKE_INSTALL_RPATH "$ORIGIN/../../openvino/libs")\n'
        'file(WRITE "${CMAKE_BINARY_DIR}/openvino_stub.cpp" "// loads the openvino wheel runtime\\n")\n'
        'add_library(openvino_stub SHARED "${CMAKE_BINARY_DIR}/openvino_stub.cpp")\n'
        "set_target_properties(openvino_stub PROPERTIES OUTPUT_NAME openvino)\n"
        "target_link_libraries(openvino_stub PRIVATE -Wl,--no-as-needed openvino::runtime)",
    ),
    # rpath "./" depends on the working directory; CMAKE_INSTALL_RPATH above points at the wheel instead.
    (
        'if (UNIX)\n    set_target_properties(intel_npu_acceleration_library PROPERTIES LINK_FLAGS "-Wl,-rpath,./")',
        "endif (UNIX)",
        "",
    ),
)


class EnvUnavailable(RuntimeError):
    """The isolated environment cannot be built on this machine; the message (one line) says why."""


REFUSED = 3  # worker exit code: it refused a model file (hash or allow-list) before anything of it ran


class WorkerError(RuntimeError):
    """The worker process failed; ``returncode`` :data:`REFUSED` means it refused a model file."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


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
    if os.name != "nt":
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


def linux_build_reason() -> str | None:
    """What is missing to build the library from source on Linux (compiler, cmake, AVX2)."""
    cxx = (os.environ.get("CXX") or "c++").split()[0]
    if not shutil.which(cxx):
        return f"no C++ compiler ('{cxx}' not found) to build {LIBRARY} from source: install g++ or set CXX"
    if not shutil.which("cmake"):
        return f"cmake not found, needed to build {LIBRARY} from source: install cmake (apt-get install cmake)"
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text(errors="replace").split()) if cpuinfo.is_file() else {"avx2", "f16c"}
    if not {"avx2", "f16c"} <= flags:
        return f"this CPU lacks AVX2/F16C, which {LIBRARY}'s kernels use"
    return None


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
    return load(path.parent)


def prune(current: Path) -> None:
    """Remove environments of older recipes beside ``current`` (each holds ~2 GB)."""
    for pattern in (f"{ENV_PREFIX}*", f"npu-lib-{LIBRARY_VERSION}-*", f".npu-lib-{LIBRARY_VERSION}-*"):  # + old names
        for old in current.parent.glob(pattern):
            if old.is_dir() and old.name != current.name:
                remove_tree(old)


def pip(python: Path, args: list[str], log: Path, extra_env: dict[str, str] | None = None) -> None:
    """Run ``python -m pip ARGS``, appending output to ``log``; raise :class:`EnvUnavailable` on failure."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(extra_env or {})}
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n$ pip {' '.join(args)}\n")
        handle.flush()
        done = subprocess.run(
            [str(python), "-I", "-m", "pip", *args], stdout=handle, stderr=subprocess.STDOUT, env=env, check=False
        )
    if done.returncode:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise EnvUnavailable(
            f"pip {args[0]} failed (exit {done.returncode}): {last[:200]} "
            f"(offline or no access to PyPI? full log: {log})"
        )


def install_library(python: Path, log: Path) -> None:
    """Install the library: the PyPI wheel on Windows, the patched sdist built against the wheel on Linux."""
    pinned = f"{LIBRARY}=={LIBRARY_VERSION}"
    if os.name == "nt":
        with step(f"installing {pinned} (Windows wheel)"):
            pip(python, ["install", "--no-deps", "--only-binary", ":all:", pinned], log)
        return
    with tempfile.TemporaryDirectory(prefix="npu-lib-src-") as scratch:
        source = unpack_sdist(python, Path(scratch), log)
        cmake = source / "CMakeLists.txt"
        cmake.write_text(patch_cmakelists(cmake.read_text(encoding="utf-8")), encoding="utf-8")
        with step(f"building {pinned} from source against the openvino 2024.4 wheel"):
            pip(
                python,
                ["install", "--no-deps", "--no-build-isolation", str(source)],
                log,
                {"AIPC_OPENVINO_DIR": str(package_dir(python, "openvino"))},
            )


def unpack_sdist(python: Path, scratch: Path, log: Path) -> Path:
    """Download the library's sdist, check its sha256, unpack it; return the source folder."""
    import tarfile

    with step(f"downloading the {LIBRARY} {LIBRARY_VERSION} sdist"):
        pip(
            python,
            [
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--no-build-isolation",
                "-d",
                str(scratch),
                f"{LIBRARY}=={LIBRARY_VERSION}",
            ],
            log,
        )
    archive = scratch / SDIST
    if not archive.is_file() or sha256_file(archive) != SDIST_SHA256:
        fail(f"downloaded {SDIST} does not match its pinned sha256 {SDIST_SHA256[:16]}...: not building it")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links and paths outside scratch
            tar.extractall(scratch, filter="data")
        else:
            tar.extractall(scratch)
    return scratch / SDIST.removesuffix(".tar.gz")


def patch_cmakelists(text: str) -> str:
    """Apply :data:`CMAKE_EDITS` to the sdist's CMakeLists.txt; fail if an anchor is missing or ambiguous."""
    for first, last, replacement in CMAKE_EDITS:
        if text.count(first) != 1 or text.count(last) != 1:
            fail(f"{LIBRARY} CMakeLists.txt does not look like the {LIBRARY_VERSION} sdist's (anchor {first!r})")
        start = text.index(first)
        end = text.index(last, start) + len(last)
        text = text[:start] + replacement + text[end:]
    return text


def package_dir(python: Path, package: str) -> Path:
    """Folder of ``package`` inside the environment of ``python`` (found without importing it)."""
    code = f"import importlib.util as u; print(u.find_spec({package!r}).submodule_search_locations[0])"
    done = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, encoding="utf-8", check=True)
    return Path(done.stdout.strip())


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
    }


def run_worker(python: Path, command: str, args: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``worker.py COMMAND ARGS`` with ``python`` in ``cwd``, streaming its output; return its result.

    Raises:
        WorkerError: When the worker exits non-zero (message: its last output line).
    """
    result = Path(cwd) / f"{command}-result.json"
    cmd = [str(python), "-I", "-u", str(WORKER), command, "--result", str(result), *args]
    tail: collections.deque[str] = collections.deque(maxlen=1)
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
        for line in proc.stdout:
            print(f"    {line.rstrip()}", file=sys.stderr, flush=True)
            if line.strip():
                tail.append(line.strip())
    if proc.returncode:
        raise WorkerError(tail[0] if tail else f"worker exited with {proc.returncode}", proc.returncode)
    return json.loads(result.read_text(encoding="utf-8"))
