"""The ONNX family's own ``aipc`` command (registry field ``commands``: :mod:`pipeline.cli` lists it)."""

from __future__ import annotations

from collections.abc import Callable


def cmd_onnx_compat(target: str) -> None:
    """Check an ONNX variant (or folder) loads and runs in onnxruntime-genai 0.13.1 and 0.14.1 (Windows DML users).

    Args:
        target: An ONNX variant under artifacts/onnx (e.g. dml_int4) or a folder.
    """
    from pipeline.onnx import compat as onnx_compat

    onnx_compat.main([target])


COMMANDS: dict[str, Callable[..., None]] = {"onnx-compat": cmd_onnx_compat}
