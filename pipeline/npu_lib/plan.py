"""The NPU library family's rows of ``aipc plan`` (registry field ``plan``): each variant's export and validation."""

from __future__ import annotations

from typing import Any

from pipeline.core.resources import FamilyPlan, PlanContext

# A library model's folder over its checkpoint's, by dtype, measured on full-size Phi-3-mini (core/resources.py)
SHARE = {"int4": 0.295, "int8": 0.539, "fp16": 1.025}


def rows(section: dict[str, Any], ctx: PlanContext) -> list[tuple[str, int, bool]]:
    """The export's row as the build runs it (layer by layer or whole); the validation is a CPU stand-in here."""
    from pipeline.npu_lib.export import ram_row

    out = []
    for v, cfg in section.items():
        out.append((f"export_npu_lib@{v}", ctx.ram(ram_row(cfg), cfg.dtype, ctx.checkpoint), False))
        size = ctx.folder("npu_lib", v, cfg.dtype)
        out.append((f"validate_npu_lib@{v}", ctx.ram("validate_npu_lib", cfg.dtype, size), True))
    return out


PLAN = FamilyPlan(SHARE, rows)
