"""Where the isolated environments live (the NPU library's, the onnxruntime-genai 0.13.1 compat one): one rule for all."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.core.config import PROJECT_ROOT


def venv_env(**extra: str) -> dict[str, str]:
    """This environment with this interpreter's folder first on PATH, so `python -m ...` in dvc.yaml is ours.

    Without it, ``.venv\\Scripts\\dvc repro`` from a shell where the venv is not active (Windows blocks
    ``Activate.ps1`` by default) runs the stages with the Store stub or another Python.
    """
    return {
        **os.environ,
        **extra,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def envs_root() -> Path:
    """Where isolated environments live: ``AIPC_ENVS_DIR``, else a short per-user folder on Windows
    (``%LOCALAPPDATA%\\aipc``: torch's deep paths would overflow 260 characters inside the project), else
    ``.aipc/envs`` beside the running ``.venv``.

    Temporary project copies (tests) run the same interpreter, so they share one environment per machine.
    """
    if os.environ.get("AIPC_ENVS_DIR"):
        return Path(os.environ["AIPC_ENVS_DIR"])
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "aipc"
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix).resolve().parent / ".aipc" / "envs"
    return PROJECT_ROOT / ".aipc" / "envs"
