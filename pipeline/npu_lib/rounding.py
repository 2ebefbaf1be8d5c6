"""What the NPU library's recipe rounds the weights to: the grids behind the broken-or-costly verdict.

:mod:`pipeline.validation.recipe_cost` applies them to the PyTorch model when a cell misses its fidelity limits.
The library hands every ``nn.Linear`` (the LM head included) to neural-compressor's round-to-nearest, symmetric,
one scale per output channel (``quantization.py``: ``group_size: -1, scheme: sym``); the embeddings stay float.
"""

from __future__ import annotations

from typing import Any

from pipeline.validation.recipe_cost import Grid, Rounding

BITS = {"int4": 4, "int8": 8, "fp16": 16}
ADVICE = (
    "the library (archived) has no other recipe; the OpenVINO NPU IR with GPTQ (-S npu.int4.gptq=true "
    "-S npu.int4.dataset=heldout) is Intel's NPU path and loses less"
)


def rounding(manifest: dict[str, Any], key: str) -> Rounding | None:
    """The grids of the library's model from its ``manifest`` (``dtype`` ``int4``, ``int8`` or ``fp16``)."""
    bits = BITS.get(str(manifest["parameters"].get("dtype")))
    if bits is None:
        return None
    grid = Grid(bits, -1, True)
    return Rounding(grid, grid, grid if bits == 16 else None, ADVICE)
