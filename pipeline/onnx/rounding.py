"""What each ONNX Runtime GenAI recipe rounds the weights to: the grids behind the broken-or-costly verdict.

:mod:`pipeline.validation.recipe_cost` applies them to the PyTorch model when a cell misses its fidelity limits.
The builder's MatMulNBits quantizes every MatMul, the LM head included, in blocks of ``block_size`` inputs
(symmetric unless ``is_symmetric=false``; a last block shorter where the width is not a multiple). The embeddings
take the same grid here: with tied embeddings the builder shares the quantized table (on the tiny model the bound
then matches the graph to KL 0.00738 against 0.00741), and for untied ones it is the coarser bound.
"""

from __future__ import annotations

from typing import Any

from pipeline.validation.recipe_cost import Grid, Rounding

DEFAULT_BLOCK = 32  # the builder's own default block size (conf/onnx/default.yaml: block_size null)


def rounding(manifest: dict[str, Any], key: str) -> Rounding | None:
    """The grids of the ``onnx.<v>`` graph from its ``manifest`` (``key``: its params key, for the advice)."""
    params = manifest["parameters"]
    precision = params.get("precision")
    if precision == "fp16":
        grid = Grid(16)
        return Rounding(grid, grid, grid, "fp16 is the lightest format: no recipe loses less")
    if precision != "int4":
        return None  # fp32 rounds nothing
    block = int(params.get("block_size") or DEFAULT_BLOCK)
    grid = Grid(4, block, params.get("is_symmetric") is not False, "ragged")
    smaller = f"-S {key}.block_size=32 (blocks of 32 lose less than {block}), or " if block > DEFAULT_BLOCK else ""
    advice = (
        f"{smaller}-S {key}.algo_config=k_quant_mixed (8 bits for the most sensitive layers); the builder has no "
        "data-aware recipe, the OpenVINO int4 IR with GPTQ has (openvino.int4.gptq=true)"
    )
    return Rounding(grid, grid, grid, advice)
