"""What each OpenVINO recipe rounds the weights to: the grids behind the broken-or-costly verdict.

:mod:`pipeline.validation.recipe_cost` applies them to the PyTorch model when a cell misses its fidelity limits.
Read from the IR folder's ``manifest.json``: the export parameters, and the group size NNCF recorded in the IR
(``nncf_rt_info``: channel-wise where the NPU's ``adjust`` chose it), so the verdict describes what was built.
NNCF keeps the embeddings and the LM head at the backup precision unless ``all_layers`` (int8 asymmetric by
default), and rounds a layer that ``group_size`` does not divide with the largest power-of-two group
(``group_size_fallback=adjust``). ``ratio`` < 1 keeps the most sensitive layers at that backup precision too; the
grid rounds every decoder layer to int4, the recipe's coarsest, so a healthy IR does at least as well.
"""

from __future__ import annotations

from typing import Any

from pipeline.validation.recipe_cost import Grid, Rounding

BACKUP = {"int8_asym": Grid(8, -1, False), "int8_sym": Grid(8, -1, True)}  # "none": kept in float
FP16 = Grid(16)


def data_aware(params: dict[str, Any]) -> bool:
    """Whether the recipe already uses data (AWQ, scale estimation, GPTQ)."""
    return any(params.get(k) for k in ("awq", "scale_estimation", "gptq"))


def int4_recover(params: dict[str, Any], key: str) -> str:
    """The data-aware recipe that recovers int4's loss (measured on SmolLM2-135M, docs/validation.md)."""
    if data_aware(params):
        return f"the recipe is already data-aware: a finer format keeps more ({key}.ratio lower, or an int8 variant)"
    return (
        f"a data-aware recipe recovers most of it: -S {key}.gptq=true -S {key}.dataset=heldout (or awq and "
        "scale_estimation; on SmolLM2-135M in Phi-3 layout GPTQ took top-1 from 0.666 to 0.887)"
    )


def recorded_group(manifest: dict[str, Any]) -> int:
    """The int4 group size NNCF recorded in the IR, else the one the export was asked for."""
    compression = (manifest.get("nncf_rt_info") or {}).get("weight_compression") or {}
    return int(compression.get("group_size") or manifest["parameters"].get("group_size") or -1)


def ir_rounding(manifest: dict[str, Any], key: str) -> Rounding | None:
    """The grids of an ``openvino.<v>`` IR from its ``manifest`` (``key``: its params key, for the advice)."""
    params = manifest["parameters"]
    fmt = params.get("weight_format")
    if fmt == "fp16":
        return Rounding(FP16, FP16, FP16, "fp16 is the lightest format: no recipe loses less")
    if fmt == "int8":
        grid = Grid(8, -1, bool(params.get("sym")))
        return Rounding(grid, grid, grid, "int8 per channel is the lightest compression; the fp16 IR keeps the rest")
    if fmt != "int4":
        return None
    fallback = "adjust" if params.get("group_size_fallback") == "adjust" else "channel"
    layers = Grid(4, recorded_group(manifest), bool(params.get("sym")), fallback)
    edges = layers if params.get("all_layers") else BACKUP.get(str(params.get("backup_precision", "int8_asym")))
    return Rounding(layers, edges, edges, int4_recover(params, key))


def npu_rounding(manifest: dict[str, Any], key: str) -> Rounding:
    """The grids of an ``npu.<v>`` IR: int4 symmetric, group 128 or channel-wise (its only layouts), int8 edges."""
    layers = Grid(4, recorded_group(manifest), True, "channel")
    return Rounding(layers, BACKUP["int8_asym"], BACKUP["int8_asym"], int4_recover(manifest["parameters"], key))
