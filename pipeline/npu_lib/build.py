"""Installing intel-npu-acceleration-library 1.4.0 into its isolated environment (:mod:`pipeline.npu_lib.env`).

On Windows from its PyPI wheel. On Linux PyPI has only an sdist whose CMake build rejects non-Ubuntu
distributions, downloads an OpenVINO archive and compiles with ``-march=native``; :data:`CMAKE_EDITS` make it
build against the ``openvino==2024.4.0`` wheel already in the environment, with portable flags (about 20 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.core.errors import fail
from pipeline.core.hashes import sha256_file
from pipeline.core.log import step
from pipeline.core.package_sets import pip_failure_line

LIBRARY, LIBRARY_VERSION = "intel-npu-acceleration-library", "1.4.0"
SDIST = "intel_npu_acceleration_library-1.4.0.tar.gz"
SDIST_SHA256 = "85bc37169189a0bfdb536a74de454925a4750adc1000d29a6c87de1f1a3a8d7d"  # PyPI, checked on download

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
        output = log.read_text(encoding="utf-8", errors="replace").rpartition(f"\n$ pip {' '.join(args)}\n")[2]
        raise EnvUnavailable(
            f"pip {args[0]} failed (exit {done.returncode}): {pip_failure_line(output)[:300]} (full log: {log})"
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
