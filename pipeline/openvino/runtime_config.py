"""The IR's runtime config: device properties its users load it with (``runtime_config.json`` beside the model).

Why a file of our own, written by the export and never by the validation:

* Nothing in the toolchain reads runtime properties from the model folder. ``openvino_genai.LLMPipeline`` reads
  ``config.json``, ``generation_config.json`` and the tokenizer's files (strings of libopenvino_genai 2026.4.1);
  optimum-intel's ``openvino_config.json`` is :class:`optimum.intel.OVConfig`, a record of the export's quantization,
  and ``OVModelForCausalLM`` takes its properties only as ``ov_config=`` (optimum-intel 2.2.0,
  ``modeling_base.py``). An IR's ``rt_info["runtime_options"]`` is applied by ``compile_model`` for
  ``KV_CACHE_PRECISION`` and ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` but not for ``INFERENCE_PRECISION_HINT`` (checked
  on OpenVINO 2026.4.1: the CPU still compiled in bf16). So the setting lives in a small device-keyed JSON file,
  ``{"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}``, that ``aipc chat`` and the validation load the IR with
  (:func:`properties`) and that the model card's code passes to ``LLMPipeline`` / ``OVModelForCausalLM``.
* DVC outputs belong to their stage: the validation reads ``artifacts/openvino/<v>`` and writes only its metrics. A
  validation that rewrote the export's folder would make ``dvc.lock`` lie about it. So the verdict *names* the fix,
  as the params override that asks the export for it (``openvino.<v>.cpu_inference_precision=f32``); the export
  writes the file from that param, DVC reruns export and validation, and the cell is judged on what users then get.
* Why not pin f32 for every IR: it overrides the plugin's own choice (bf16 on AMX / AVX512-BF16 CPUs, f32 already
  on the AVX2 CPUs of most laptops) for models where bf16 answers right. Whether it does is a measured property of
  the model (its greedy answers at the device's numerics, :mod:`pipeline.openvino.answers`), known only after
  validation, so the default stays null and the verdict says when to set it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUNTIME_CONFIG = "runtime_config.json"
# The setting that makes each device compute as the pinned f32 run does; the NPU computes in f16 only.
FIXES = {"CPU": "INFERENCE_PRECISION_HINT=f32", "GPU": "INFERENCE_PRECISION_HINT=f32"}


def write(folder: Path, cpu_inference_precision: str | None) -> dict[str, dict[str, str]]:
    """Write ``folder/runtime_config.json`` when a setting is asked for; return what it holds (``{}``: no file)."""
    config = {"CPU": {"INFERENCE_PRECISION_HINT": cpu_inference_precision}} if cpu_inference_precision else {}
    if config:
        (Path(folder) / RUNTIME_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def properties(folder: Path, device: str) -> dict[str, Any]:
    """The properties ``folder``'s runtime config gives ``device`` (``CPU``, ``GPU.0`` -> ``GPU``), ``{}`` if none."""
    path = Path(folder) / RUNTIME_CONFIG
    if not path.is_file():
        return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    return dict(config.get(device.split(":")[0].split(".")[0], {}))


def pins_f32(folder: Path, device: str) -> bool:
    """Whether ``folder``'s runtime config already has ``device`` compute in f32 (the fix is shipped)."""
    from pipeline.openvino.numerics import short_type

    return short_type(properties(folder, device).get("INFERENCE_PRECISION_HINT", "")) == "f32"


def fix_for(device: str, variant_key: str | None = None) -> str | None:
    """How to make ``device`` answer as at f32, as a user reads it: the property, and for the CPU of an OpenVINO IR
    variant (``variant_key``, e.g. ``openvino.fp16``) the override that ships it; ``None`` for the NPU."""
    setting = FIXES.get(device.split(":")[0].split(".")[0])
    if setting is None:
        return None
    if device != "CPU" or variant_key is None:
        return f"{setting} for the {device}"
    return f"{setting} for the CPU (-S {variant_key}.cpu_inference_precision=f32 writes it into {RUNTIME_CONFIG})"
