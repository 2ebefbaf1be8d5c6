"""Every package set the project installs resolves for Windows (win_amd64, CPython 3.11 and 3.12), by pip's resolver.

Each set is the project's own data (pipeline.core.package_sets and the builders' ``package_set(s)``). pip resolves
it as ``pip install --dry-run --only-binary=:all: --platform win_amd64 --python-version 3.1x --report ...``, with
the environment markers of Windows (pip evaluates markers against the machine it runs on, so on Linux torch would
ask for its CUDA packages and Windows-only dependencies would be missed). It needs the package registry (marker
``pypi``) and is skipped with the reason only where the registry cannot be reached. Measured on the project's
2-core machine with pip's cache warm: about 1 min for the 12 resolves (``--durations`` prints it).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging import requirements, tags, utils

from pipeline.core.package_sets import PYTHONS, PackageSet, main_venv, pip_failure_line
from pipeline.npu_lib import packages as npu_packages
from pipeline.onnx import compat
from pipeline.winml import runtime as winml_runtime

pytestmark = pytest.mark.pypi

# pip with Windows' environment markers: ``python -c WINDOWS_PIP <pip wheel> <python version> <pip arguments>``.
WINDOWS_PIP = """
import sys
sys.path.insert(0, sys.argv.pop(1))
from pip._vendor.packaging import markers
version = sys.argv.pop(1)
windows = {"implementation_name": "cpython", "implementation_version": version + ".0", "os_name": "nt",
           "platform_machine": "AMD64", "platform_python_implementation": "CPython", "platform_release": "11",
           "platform_system": "Windows", "platform_version": "10.0.26100", "python_full_version": version + ".0",
           "python_version": version, "sys_platform": "win32"}
markers.default_environment = lambda: dict(windows)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
# pip runs from its wheel: this one reads a wheel's metadata with HTTP range requests (fast-deps) and, in a dry
# run, downloads no wheel; the registry here serves no separate metadata files, so older pips fetch every wheel
# (1.5 GB for the main venv, twice as long).
PIP = "pip==26.3"
SETS = [main_venv(), winml_runtime.package_set(), *compat.package_sets(), npu_packages.package_set()]


@functools.cache
def registry_problem() -> str | None:
    """Why the package registry pip uses cannot be reached, or None when it answers."""
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    found = re.search(r"^(?:global|install|:env:)\.index-url='([^']+)'", config, re.MULTILINE)
    index = os.environ.get("PIP_INDEX_URL") or (found.group(1) if found else "https://pypi.org/simple/")
    try:
        urllib.request.urlopen(index.rstrip("/") + "/pip/", timeout=20).close()
    except OSError as err:
        return f"the package registry {index} is not reachable here ({err})"
    return None


@functools.cache
def pip_wheel() -> str:
    """:data:`PIP`'s wheel, downloaded once per run."""
    folder = Path(tempfile.mkdtemp(prefix="aipc-pip-"))
    atexit.register(shutil.rmtree, folder, True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(folder), PIP]
    subprocess.run(cmd, check=True, capture_output=True)
    return str(next(folder.glob("pip-*.whl")))


def windows_pip(python: str, tmp: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``pip install --dry-run`` for win_amd64 and CPython ``python``, with Windows' markers, and ``args``."""
    cmd = [sys.executable, "-c", WINDOWS_PIP, pip_wheel(), python, "install", "--dry-run", "--ignore-installed"]
    cmd += ["--disable-pip-version-check", "--only-binary=:all:", "--platform", "win_amd64", "--timeout", "30"]
    cmd += ["--use-feature=fast-deps", "--no-input"]
    cmd += ["--python-version", python, "--implementation", "cp", "--target", str(tmp / "target"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")


def build_sdists(pset: PackageSet, wheels: Path) -> list[str]:
    """Build the set's source-only pins into wheels here (``--find-links`` for the resolve); each must be pure Python."""
    if pset.sdists:
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary", ":all:", "-w", str(wheels)]
        subprocess.run([*cmd, *pset.sdists], check=True, capture_output=True)
        built = sorted(p.name for p in wheels.glob("*.whl"))
        assert built and all(name.endswith("-py3-none-any.whl") for name in built), f"not pure Python: {built}"
        return ["--find-links", str(wheels)]
    return []


def no_windows_wheel(output: str, python: str, tmp: Path) -> list[str]:
    """The exact pins in pip's conflict report that have no Windows wheel on their own (a pin is not a conflict)."""
    pins = sorted(set(re.findall(r"requested(?: \(constraint\))? ([\w.-]+==[\w.+]+)", output)))
    return [pin for pin in pins if windows_pip(python, tmp, ["--no-deps", pin]).returncode]


def resolve(pset: PackageSet, python: str, tmp: Path) -> tuple[list[dict], str | None]:
    """What pip would install of ``pset`` on Windows under CPython ``python``, or why it cannot, in one line."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "constraints.txt").write_text("\n".join(pset.constraints) + "\n", encoding="utf-8")
    links = build_sdists(pset, tmp / "wheels")
    installed: list[dict] = []
    for step, packages in (("", pset.requirements), ("--no-deps", pset.no_deps)):
        if not packages:
            continue
        report = tmp / f"report{step}.json"
        args = ["--report", str(report), "-c", str(tmp / "constraints.txt"), *links, *([step] if step else [])]
        done = windows_pip(python, tmp, [*args, *packages])
        if done.returncode:
            output = done.stdout + done.stderr
            missing = no_windows_wheel(output, python, tmp)
            named = f"no Windows wheel of {', '.join(missing)}; pip: " if missing else ""
            where = f"{pset.name} does not install on Windows (win_amd64, CPython {python})"
            return installed, f"{where}: {named}{pip_failure_line(output)}"
        data = json.loads(report.read_text(encoding="utf-8"))
        assert data["environment"]["sys_platform"] == "win32", "pip resolved with this machine's markers"
        installed += data["install"]
    return installed, None


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[list[dict], str | None]]:
    """Every set for every Python, resolved two at a time (each resolve mostly waits on the registry)."""
    if registry_problem():
        pytest.skip(registry_problem())
    root = tmp_path_factory.mktemp("resolve")
    pairs = [(s, py) for s in SETS for py in PYTHONS if py in s.pythons]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {(s.name, py): pool.submit(resolve, s, py, root / f"{i}") for i, (s, py) in enumerate(pairs)}
    return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("pset", SETS, ids=[s.name.split(" (")[0] for s in SETS])
def test_every_package_set_installs_on_windows(pset: PackageSet, python: str, resolved: dict) -> None:
    if python not in pset.pythons:
        pytest.skip(f"{pset.name} supports CPython {', '.join(pset.pythons)} only: {pset.why_pythons}")
    installed, failure = resolved[pset.name, python]
    if failure:
        pytest.fail(failure, pytrace=False)
    minor = (3, int(python.split(".")[1]))
    windows = {*tags.cpython_tags(minor, platforms=["win_amd64"]), *tags.compatible_tags(minor, platforms=["win_amd64"])}
    files = [item["download_info"]["url"].rsplit("/", 1)[-1] for item in installed]
    wrong = [f for f in files if not windows & set(utils.parse_wheel_filename(f)[3])]
    assert not wrong, f"not Windows wheels for CPython {python}: {wrong}"
    versions = {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installed}
    for pin in map(requirements.Requirement, pset.requirements + pset.no_deps):
        exact = [spec.version for spec in pin.specifier if spec.operator == "=="]
        got = versions.get(canonical(pin.name))
        assert not exact or got == exact[0], f"pip would install {pin.name} {got}, not {exact[0]}"


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_a_package_with_no_windows_wheel_is_named_in_one_line(tmp_path: Path) -> None:
    if registry_problem():
        pytest.skip(registry_problem())
    linux_only = PackageSet("a set with uvloop", ("uvloop==0.21.0",))  # uvloop has never supported Windows
    _, line = resolve(linux_only, "3.12", tmp_path)
    assert line and "\n" not in line, line
    assert line.startswith("a set with uvloop does not install on Windows (win_amd64, CPython 3.12): ")
    assert "No matching distribution found for uvloop==0.21.0" in line, line
