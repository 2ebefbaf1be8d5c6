"""What a model card says about an OpenVINO IR or NPU IR folder (registry field ``card``; pipeline.hub.model_card)."""

from __future__ import annotations

from typing import Any

from pipeline.core.cards import PROMPT, CardFormat

OV_IMPORT = "import openvino_genai as ov_genai\nfrom huggingface_hub import snapshot_download\n\n"
INSTALL = "pip install openvino-genai huggingface_hub"


def ir_usage(manifest: dict[str, Any], pin: str) -> tuple[str, str]:
    """Install line and snippet: LLMPipeline on the CPU or GPU, with the properties the IR was validated with."""
    if manifest.get("runtime_config"):  # properties validated with this IR: LLMPipeline does not read them
        code = (
            "import json, os\n" + OV_IMPORT + pin + 'device = "CPU"   # or "GPU"\n'
            'runtime = json.load(open(os.path.join(path, "runtime_config.json"))).get(device, {})\n'
            f'pipe = ov_genai.LLMPipeline(path, device, **runtime)\nprint(pipe.generate("{PROMPT}", max_new_tokens=64))'
        )
    else:
        code = (
            OV_IMPORT
            + pin
            + f'pipe = ov_genai.LLMPipeline(path, "CPU")   # or "GPU"\nprint(pipe.generate("{PROMPT}", max_new_tokens=64))'
        )
    return INSTALL, code


def npu_usage(manifest: dict[str, Any], pin: str) -> tuple[str, str]:
    """Install line and snippet: LLMPipeline on the NPU with the stored settings (and blob, when there is one)."""
    code = (
        "import json, os\n" + OV_IMPORT + pin + 'settings = json.load(open(os.path.join(path, "npu_config.json")))\n'
        'blob = os.path.join(path, "openvino_model.npu.blob")\nif os.path.exists(blob):\n'
        '    settings["BLOB_PATH"] = blob\npipe = ov_genai.LLMPipeline(path, "NPU", **settings)\n'
        f'print(pipe.generate("{PROMPT}", max_new_tokens=64))'
    )
    return INSTALL, code


def npu_note(manifest: dict[str, Any]) -> str:
    """The NPU blob the export compiled (or deferred), when the manifest records one."""
    return f"\n\nNPU blob: {manifest['npu_blob'].get('blob')}." if manifest.get("npu_blob") else ""


OPENVINO_CARD = CardFormat("openvino", ("openvino",), "OpenVINO IR", "the IR", lambda _: ["cpu", "gpu"], ir_usage)
NPU_CARD = CardFormat(
    "openvino", ("openvino",), "NPU-ready OpenVINO IR", "the IR", lambda _: ["npu"], npu_usage, parameters_note=npu_note
)
