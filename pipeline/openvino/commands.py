"""The NPU family's own ``aipc`` command (registry field ``commands``: :mod:`pipeline.cli` lists it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def cmd_compile_npu_blob(artifact: str) -> None:
    """On the NPU machine: compile a deferred NPU artifact folder into a blob (weights included).

    Args:
        artifact: The deferred NPU artifact folder, e.g. artifacts/npu/int4.
    """
    from pipeline.openvino import export_npu

    facts = export_npu.compile_deferred(Path(artifact))
    print(json.dumps(facts, indent=2))


NPU_COMMANDS: dict[str, Callable[..., None]] = {"compile-npu-blob": cmd_compile_npu_blob}
