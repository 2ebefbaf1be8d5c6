"""The Windows ML family's rows of ``aipc plan`` (registry field ``plan``): a package wraps another family's IR, so
its validation is sized by that IR's folder."""

from __future__ import annotations

from typing import Any

from pipeline.core.resources import FamilyPlan, PlanContext


def rows(section: dict[str, Any], ctx: PlanContext) -> list[tuple[str, int, bool]]:
    """Each package's validation, sized by the IR it wraps (``source``/``source_variant``)."""
    out = []
    for v, cfg in section.items():
        size = ctx.folder(cfg.source, cfg.source_variant, cfg.source_variant)
        out.append((f"validate_winml@{v}", ctx.ram("validate_winml", v, size), False))
    return out


PLAN = FamilyPlan({}, rows)
