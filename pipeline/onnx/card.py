"""What a model card says about an ONNX Runtime GenAI folder (registry field ``card``; pipeline.hub.model_card)."""

from __future__ import annotations

from typing import Any

from pipeline.core.cards import OG_GENERATE, OG_IMPORT, CardFormat

DEVICE_TAGS = {"dml": "directml", "cpu": "cpu", "cuda": "cuda", "webgpu": "webgpu"}  # execution provider -> tag


def devices(parameters: dict[str, Any]) -> list[str]:
    """The device tag of the variant's execution provider (the CPU's for one without a tag)."""
    return [DEVICE_TAGS.get(str(parameters.get("execution_provider")), "cpu")]


def usage(manifest: dict[str, Any], pin: str) -> tuple[str, str]:
    """Install line and snippet: onnxruntime-genai on the folder as it is."""
    code = OG_IMPORT + pin + "model = og.Model(path)\n" + OG_GENERATE
    return "pip install onnxruntime-genai huggingface_hub   # Windows DirectML: onnxruntime-genai-directml", code


# ONNX Runtime GenAI's own int4 quantizer, not NNCF: no nncf tag
CARD = CardFormat(
    "onnxruntime-genai", ("onnx", "onnxruntime-genai"), "ONNX Runtime GenAI model", "the ONNX graph", devices, usage,
    nncf=False,
)  # fmt: skip
