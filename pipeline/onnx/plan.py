"""The ONNX family's rows of ``aipc plan`` (registry field ``plan``): each variant's export and validation."""

from __future__ import annotations

from typing import Any

from pipeline.core.resources import FamilyPlan, PlanContext

# A variant's folder over its checkpoint's, measured on full-size Phi-3-mini (pipeline/core/resources.py)
SHARE = {"dml_int4": 0.278, "cpu_int4": 0.357, "dml_fp16": 1.0}


def rows(section: dict[str, Any], ctx: PlanContext) -> list[tuple[str, int, bool]]:
    """Export from the checkpoint; the validation is optional (a CPU stand-in) off the CPU provider."""
    out = []
    for v, cfg in section.items():
        out.append((f"export_onnx@{v}", ctx.ram("export_onnx", v, ctx.checkpoint), False))
        size = ctx.folder("onnx", v, v)
        out.append((f"validate_onnx@{v}", ctx.ram("validate_onnx", v, size), cfg.execution_provider != "cpu"))
    return out


PLAN = FamilyPlan(SHARE, rows)
