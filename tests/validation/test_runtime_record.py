"""An ONNX cell records the runtime build that ran it: the distributions that provide the modules it imported.

In the DirectML environment ``onnxruntime_genai`` comes from ``onnxruntime-genai-directml``; the cell must say so
(``artifact_numerics.runtime``), not the CPU package's name. DirectML installs on Windows only, so the DirectML
case reads the metadata of the real Windows wheels (``pip download --platform win_amd64``), unpacked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from pipeline.onnx import compat
from pipeline.validation import genai_runner


def test_the_main_environment_records_its_cpu_runtime() -> None:
    assert genai_runner.runtime_versions() == {
        "onnxruntime-genai": metadata.version("onnxruntime-genai"),
        "onnxruntime": metadata.version("onnxruntime"),
    }


@pytest.mark.pypi
def test_the_directml_environment_records_the_directml_builds(tmp_path: Path) -> None:
    pins = compat.DML_RUNTIMES[compat.DML_RUNTIME]
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--platform"]
    cmd += ["win_amd64", "--python-version", python, "-d", str(tmp_path / "wheels"), *pins]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if done.returncode and "No matching distribution" not in done.stderr:
        pytest.skip(f"the package registry is not reachable here: {done.stderr.strip().splitlines()[-1:]}")
    assert done.returncode == 0, done.stderr
    site = tmp_path / "site-packages"  # what pip installs of them on Windows, metadata only (no DLL loads here)
    for wheel in (tmp_path / "wheels").glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site, [m for m in archive.namelist() if ".dist-info/" in m])
    code = (
        f"import sys, json; sys.path[:0] = [{str(site)!r}, {str(Path(genai_runner.__file__).parent)!r}]; "
        "import genai_runner; print(json.dumps(genai_runner.runtime_versions()))"
    )
    ran = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, encoding="utf-8")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == dict(pin.split("==") for pin in pins)
