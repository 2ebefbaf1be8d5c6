"""The package sets the project installs, as data, and pip's reason for a failed install in one line.

pip's outputs below are copied from pip 23.2 runs (``--platform win_amd64 --python-version 3.12``, December 2026).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.core.errors import StageError
from pipeline.core.package_sets import main_venv, pip_failure_line
from pipeline.npu_lib import build as npu_build
from pipeline.npu_lib import env as npu_env
from pipeline.npu_lib import packages as npu_packages
from pipeline.onnx import compat
from pipeline.winml import runtime as winml_runtime

NO_WHEEL = """Collecting onnxruntime-genai-directml==0.14.1
WARNING: Location 'file:///opt/pypi/simple/onnxruntime-directml/' is ignored: it is neither a file nor a directory.
ERROR: Could not find a version that satisfies the requirement onnxruntime-directml>=1.26.0 (from onnxruntime-genai-directml) (from versions: 1.17.0, 1.23.0, 1.24.1, 1.24.4)
ERROR: No matching distribution found for onnxruntime-directml>=1.26.0
"""
CONFLICT = """INFO: pip is looking at multiple versions of hydra-core to determine which version is compatible.
ERROR: Cannot install hydra-core==1.3.8 because these package versions have conflicting dependencies.

The conflict is caused by:
    hydra-core 1.3.8 depends on antlr4-python3-runtime==4.9.*
    The user requested (constraint) antlr4-python3-runtime==4.9.3

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip attempt to solve the dependency conflict

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""


def test_pip_failure_line_is_pips_own_reason_in_one_line() -> None:
    assert pip_failure_line(NO_WHEEL) == (
        "No matching distribution found for onnxruntime-directml>=1.26.0 (newest there: 1.24.4)"
    )
    assert pip_failure_line(CONFLICT) == (
        "conflicting requirements: hydra-core 1.3.8 depends on antlr4-python3-runtime==4.9.*; "
        "The user requested (constraint) antlr4-python3-runtime==4.9.3"
    )
    none = "ERROR: Could not find a version that satisfies the requirement x==1 (from versions: none)\n"
    assert pip_failure_line(none + "ERROR: No matching distribution found for x==1\n").endswith(
        "(no release of it has a file for this platform and Python)"
    )
    assert pip_failure_line("Collecting x\nERROR: HTTP error 503 while getting https://x\n") == (
        "HTTP error 503 while getting https://x"
    )


def test_every_environment_declares_what_it_installs() -> None:
    main = main_venv()
    assert "torch==2.13.0" in main.constraints and any(r.startswith("ray>=") for r in main.requirements)
    assert not any(r.startswith("aipc-pipeline") for r in main.requirements), "the [dev] extra's own extras expanded"
    assert main.sdists == ("antlr4-python3-runtime==4.9.3",)
    dml, *runtimes = compat.package_sets()
    assert dml.requirements == ("onnxruntime-genai-directml==0.13.1", "onnxruntime-directml==1.24.4")
    assert dml.name.endswith("ortgenai-directml-0.13.1") and len(runtimes) == len(compat.RUNTIMES)
    assert not any(c.startswith("onnx") for c in dml.constraints) and "numpy==2.4.6" in dml.constraints
    npu = npu_packages.package_set()
    assert npu.requirements[0] == npu_env.TORCH and npu.no_deps == ("intel-npu-acceleration-library==1.4.0",)
    assert "openvino==2024.4.0" in npu.constraints
    assert winml_runtime.package_set().requirements[0] == winml_runtime.PLUGIN


@pytest.mark.pypi
def test_a_failed_environment_install_gives_pips_reason(tmp_path: Path) -> None:
    # onnxruntime-genai-directml has Windows wheels only: on Linux pip finds none, as a Windows user's pip did for 0.14.1
    if sys.platform == "win32":
        pytest.skip("the DirectML wheels install on Windows")
    with pytest.raises(StageError) as failed:
        compat.ensure_env(tmp_path / "envs" / "dml", runtime=compat.DML_RUNTIME, directml=True)
    line = str(failed.value)
    assert "\n" not in line and "check the network" not in line, line
    assert "No matching distribution found for onnxruntime-genai-directml==0.13.1" in line, line
    assert not (tmp_path / "envs" / "dml").exists() and list((tmp_path / "envs").iterdir()) == []
    log = tmp_path / "pip.log"
    with pytest.raises(npu_build.EnvUnavailable) as unavailable:
        npu_build.pip(Path(sys.executable), ["download", "--no-deps", "-d", str(tmp_path), "onnxruntime-directml==1.24.4"], log)
    assert "No matching distribution found for onnxruntime-directml==1.24.4" in str(unavailable.value)
    assert "offline" not in str(unavailable.value) and "\n" not in str(unavailable.value)
