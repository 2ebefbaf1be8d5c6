"""What a model card says about a Windows ML package (registry field ``card``; pipeline.hub.model_card)."""

from __future__ import annotations

from typing import Any

from pipeline.core.cards import OG_GENERATE, OG_IMPORT, CardFormat


def devices(parameters: dict[str, Any]) -> list[str]:
    """The OpenVINO EP's device_type, as the card's device tag."""
    return [str(parameters.get("device_type", "cpu")).lower()]


def usage(manifest: dict[str, Any], pin: str) -> tuple[str, str]:
    """Install line and snippet: Windows ML / Foundry Local's way, the OpenVINO EP registered from its library."""
    device = manifest.get("parameters", {}).get("device_type", "CPU")
    code = (
        "import onnxruntime_ep_openvino as openvino_ep\n" + OG_IMPORT + pin + "# Windows ML hands out the same "
        'EP\'s library path\nog.register_execution_provider_library("OpenVINOExecutionProvider", '
        f'openvino_ep.get_library_path())\nconfig = og.Config(path)   # OpenVINO EP, device_type "{device}"\n'
        '# other Intel device: config.clear_providers(); config.append_provider("OpenVINO"); then set_provider_option'
        '("OpenVINO", ...) device_type "CPU" and enable_causallm "True"\nmodel = og.Model(config)\n' + OG_GENERATE
    )
    return "pip install onnxruntime-genai onnxruntime-ep-openvino huggingface_hub   # Intel CPU, GPU or NPU only", code


CARD = CardFormat(
    "onnxruntime-genai",
    ("onnx", "onnxruntime-genai", "openvino", "windows-ml"),
    "Windows ML package (ONNX Runtime GenAI, OpenVINO EP)",
    "the wrapped IR (the source IR's record: the package holds it byte for byte)",
    devices,
    usage,
)
