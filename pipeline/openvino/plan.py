"""The OpenVINO IR and NPU families' rows of ``aipc plan`` and a sweep point's RAM (registry fields ``plan``,
``sweep_point``).

The exports' rows come from the lean table (:mod:`pipeline.openvino.lean`), the validations' from
:data:`pipeline.openvino.measured.OPENVINO_RAM`; an artifact not built yet is sized by its share of the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.resources import FamilyPlan, PlanContext
from pipeline.openvino.measured import OPENVINO_RAM

GIB = 2**30
# An IR folder's size over its checkpoint's, measured on full-size Phi-3-mini (pipeline/core/resources.py)
IR_SHARE = {"int4": 0.364, "int8": 0.501, "fp16": 1.0}
NPU_SHARE = {"int4": 0.271}


def export_ram(kind: str, ctx: PlanContext) -> int:
    """RAM of an export of ``kind`` (``export``: a float IR, ``compress``: from the base IR), lean where it can be."""
    from pipeline.openvino.lean import ram_share

    share, fixed = ram_share(kind, True, ctx.platform, ctx.platform.startswith("linux"))
    return int(share * ctx.checkpoint + fixed * GIB)


def ir_rows(section: dict[str, Any], ctx: PlanContext) -> list[tuple[str, int, bool]]:
    """The base IR, then each variant's export and validation (an fp16 IR's CPU cells optional)."""
    rows = [("export_openvino_base", export_ram("export", ctx), False)]
    for v, cfg in section.items():
        compressed = cfg.weight_format in ("int4", "int8")
        rows.append((f"export_openvino@{v}", export_ram("compress" if compressed else "export", ctx), False))
        size = ctx.folder("openvino", v, cfg.weight_format)
        rows.append((f"validate@{v}", ctx.ram("validate", cfg.weight_format, size), False))
        if cfg.weight_format == "fp16":  # its CPU cells widen the weights to f32: skipped where that does not fit
            rows.append((f"validate@{v} CPU cells", ctx.ram("validate", "fp16_on_f32_cpu", size), True))
    return rows


def npu_rows(section: dict[str, Any], ctx: PlanContext) -> list[tuple[str, int, bool]]:
    """Each NPU variant's export (compressed from the base IR) and validation."""
    rows = []
    for v in section:
        rows.append((f"export_npu@{v}", export_ram("compress", ctx), False))
        rows.append((f"validate_npu@{v}", ctx.ram("validate_npu", "int4", ctx.folder("npu", v, "int4")), False))
    return rows


def sweep_point_bytes(model_dir: Path) -> int:
    """Peak RSS of a sweep point of ``model_dir``: compress (lean) or validate int4, whichever is larger.

    From the measured full-size tables (:data:`pipeline.openvino.lean.RAM_NEEDS`,
    :data:`pipeline.openvino.measured.OPENVINO_RAM`): an int4 IR is about 0.37 of the 16-bit checkpoint.
    """
    from pipeline.openvino.lean import needs

    compress = needs("compress", "int4", model_dir)[0]
    share, fixed = OPENVINO_RAM["validate"]["int4"]
    checkpoint = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    return max(compress, int(share * 0.37 * checkpoint + fixed * GIB))


OPENVINO_PLAN = FamilyPlan(IR_SHARE, ir_rows)
NPU_PLAN = FamilyPlan(NPU_SHARE, npu_rows)
