"""Which arithmetic an OpenVINO device really uses, and how to pin it so a verdict holds on every machine.

Two questions get two answers per validation cell:

* *Artifact fidelity* judges what the export did. The runtime is pinned to full precision
  (:data:`PINNED`: f32 compute, f32 KV cache, no dynamic quantization of activations), so an AVX2,
  AVX-512 or AMX CPU gives the same verdict on the same IR.
* *Device numerics* is what users get: the device's defaults, with what the IR's ``runtime_config.json`` sets
  (:mod:`pipeline.openvino.runtime_config`). OpenVINO's CPU plugin computes in bf16 on
  CPUs with AVX512-BF16 or AMX and keeps the KV cache in u8; Intel GPUs and NPUs compute in f16. What
  actually ran is read back from the compiled model (:func:`read_back`) and recorded in the cell.

Where the CPU can compute in f16 or bf16, :func:`emulation_plans` adds cells that run the artifact with
that precision forced, labelled as an emulation of the targets' numerics (never as the target itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Full-precision runtime settings for judging an artifact (CPU and GPU plugins accept all three).
PINNED = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
# Compute precisions we can ask the CPU plugin for, the capability it needs, and what they stand for.
EMULATIONS = {
    "bf16": ("BF16", "CPU bf16 compute", "what OpenVINO's CPU plugin uses by default on AMX / AVX512-BF16 CPUs"),
    "f16": ("FP16", "CPU f16 compute", "the compute precision of Intel GPUs and NPUs"),
}
_SHORT = {
    "f32": "f32",
    "float32": "f32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "f16": "f16",
    "float16": "f16",
    "u8": "u8",
    "uint8_t": "u8",
    "uint8": "u8",
    "i8": "i8",
    "int8_t": "i8",
    "u4": "u4",
    "uint4_t": "u4",
}


def short_type(value: Any) -> str:
    """``<Type: 'bfloat16'>`` / ``bf16`` / ``Type.bf16`` -> ``bf16`` (unknown names are kept as they are)."""
    text = str(value)
    if "'" in text:
        text = text.split("'")[1]
    text = text.rsplit(".", 1)[-1].strip()
    return _SHORT.get(text, text)


@dataclass
class Numerics:
    """What a compiled model really computes with, read back from OpenVINO."""

    inference_precision: str | None
    kv_cache_precision: str | None
    dynamic_quantization_group_size: int | None

    @property
    def compute(self) -> str:
        """The compute precision that keys the device-numerics thresholds (``f32``, ``bf16``, ``f16``)."""
        return self.inference_precision or "f32"

    def label(self) -> str:
        """Short human label, e.g. ``bf16 compute, u8 KV cache, dyn-quant 32``."""
        parts = [f"{self.compute} compute"]
        if self.kv_cache_precision:
            parts.append(f"{self.kv_cache_precision} KV cache")
        if self.dynamic_quantization_group_size:
            parts.append(f"dyn-quant {self.dynamic_quantization_group_size}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the metrics file, with the label."""
        return {**asdict(self), "compute": self.compute, "label": self.label()}


def read_back(compiled: Any) -> Numerics:
    """The precisions a compiled model runs with (``None`` where the plugin does not say)."""

    def prop(name: str) -> Any:
        try:
            return compiled.get_property(name)
        except Exception:  # noqa: BLE001 - plugins answer unknown properties with varied errors
            return None

    group = prop("DYNAMIC_QUANTIZATION_GROUP_SIZE")
    kv = prop("KV_CACHE_PRECISION")
    precision = prop("INFERENCE_PRECISION_HINT")
    return Numerics(
        short_type(precision) if precision else None,
        short_type(kv) if kv is not None else None,
        int(group) if group is not None else None,
    )


def cpu_default_compute(core: Any | None = None) -> str:
    """The compute precision OpenVINO's CPU plugin picks on this CPU when asked nothing: ``bf16`` with AVX512-BF16 or
    AMX, ``f32`` on the AVX2 CPUs of most laptops (there it also widens an fp16 IR's weights to f32)."""
    import openvino as ov

    return short_type((core or ov.Core()).get_property("CPU", "INFERENCE_PRECISION_HINT"))


def settings(compute: str | None) -> dict[str, str]:
    """Properties for a teacher-forced compile: pinned (``compute='f32'``), forced, or the defaults (``None``)."""
    if compute is None:
        return {}
    if compute == "f32":
        return dict(PINNED)
    # Emulating a target's arithmetic: compute and KV cache in that precision (GPU/NPU keep the cache in f16),
    # activations not quantized, so the cell isolates the compute precision.
    return {"INFERENCE_PRECISION_HINT": compute, "KV_CACHE_PRECISION": compute, "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


@dataclass
class EmulationPlan:
    """One extra CPU cell that forces a compute precision, or why it cannot run here."""

    precision: str
    column: str
    label: str
    skip_reason: str | None = None


# An emulation cell's extra RAM per weight of the IR, where the CPU plugin unpacks the weights for that precision:
# f16 compute unpacks int4/int8 weights to f16 and repacks them (14.8 GB peak for the NPU int4 IR of Phi-3-mini,
# 3.8e9 weights, on a Xeon with AMX-FP16, OpenVINO 2026.4.1: benchmarks/full_pipeline.py --stages, 2026-12-02).
# bf16 compute keeps them compressed (2.5 GB there): nothing over the stage's own estimate.
EMULATION_BYTES_PER_WEIGHT = {"f16": 3.9}


def weight_count(ir_dir: Path) -> int:
    """Weights of an IR: elements of its constants of rank >= 2 and at least 64k elements (read from the .xml)."""
    import math

    import openvino as ov

    total = 0
    for op in ov.Core().read_model(str(Path(ir_dir) / "openvino_model.xml")).get_ops():
        if op.get_type_name() == "Constant":
            shape = list(op.get_output_shape(0))
            if len(shape) >= 2 and math.prod(shape) >= 65536:
                total += math.prod(shape)
    return total


def emulation_ram(precision: str, ir_dir: Path) -> int:
    """Estimated peak bytes of the cell that forces ``precision`` on ``ir_dir`` (0: within the stage's estimate)."""
    per_weight = EMULATION_BYTES_PER_WEIGHT.get(precision)
    return int(per_weight * weight_count(ir_dir) + 0.3 * 2**30) if per_weight else 0


def emulation_plans(precisions: Sequence[str], core: Any | None = None) -> list[EmulationPlan]:
    """A plan per requested precision; skipped with the reason where this CPU cannot compute in it.

    Args:
        precisions: ``validate.emulate_numerics``, e.g. ``["bf16", "f16"]``.
        core: An ``openvino.Core`` (a new one when omitted; tests pass a fake).
    """
    if core is None:
        import openvino as ov

        core = ov.Core()
    try:
        capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # noqa: BLE001
        capabilities = []
    plans = []
    for precision in precisions:
        capability, column, meaning = EMULATIONS[precision]
        label = f"{column} ({meaning}; emulated on this CPU, not the device)"
        reason = None
        if capability not in capabilities:
            need = "AMX-FP16 or AVX512-FP16" if precision == "f16" else "AVX512-BF16 or AMX"
            reason = (
                f"this CPU cannot compute in {precision} (OpenVINO's CPU capabilities: "
                f"{', '.join(capabilities) or 'unknown'}; needs {need})"
            )
        plans.append(EmulationPlan(precision, column, label, reason))
    return plans
