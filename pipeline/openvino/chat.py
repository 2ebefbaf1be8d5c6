"""``aipc chat`` on an OpenVINO IR or NPU IR folder (registry field ``chat``; :mod:`pipeline.chat` runs the turns).

The folder runs with ``openvino_genai`` on any OpenVINO device with the device's properties from the IR's
``runtime_config.json`` (the export's ``cpu_inference_precision``); NPU artifacts use their stored
``npu_config.json`` settings (and blob) on the NPU. This is the folder nobody else claims (no ``chat_marker``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail


def open_pipeline(artifact: Path, device: str) -> Any:
    """Load ``artifact`` (an OpenVINO IR folder) on ``device`` with its NPU settings where relevant."""
    import openvino_genai as ov_genai

    if not (artifact / "openvino_model.xml").is_file():
        fail(
            f"{artifact} is neither an OpenVINO IR folder (openvino_model.xml) nor an ONNX Runtime GenAI folder "
            f"(genai_config.json): pass e.g. artifacts/openvino/int4 or artifacts/onnx/cpu_int4"
        )
    from pipeline.validation import devices

    state = devices.detect().get(device.split(":")[0].split(".")[0])
    if state is not None and not state.available:
        fail(f"no {device} here ({state.reason}): chat with --device CPU")
    from pipeline.openvino.runtime_config import properties as runtime_properties

    properties = runtime_properties(artifact, device)  # runtime_config.json: e.g. the CPU pinned to f32 compute
    if device == "NPU" and (artifact / "npu_config.json").is_file():
        properties = json.loads((artifact / "npu_config.json").read_text(encoding="utf-8"))
        from pipeline.openvino.npu_blob import reusable_blob

        blob = reusable_blob(artifact, properties)  # compiled again first if another driver/OpenVINO built it
        if blob is not None:
            properties["BLOB_PATH"] = str(blob)
    return ov_genai.LLMPipeline(str(artifact), device, **properties)


class PromptLimitInOneLine:
    """An ``LLMPipeline`` whose NPU prompt-limit error (``MAX_PROMPT_LEN``) is said in one line, not NPUW's text."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def generate(self, text: str, config: Any, stream: Callable[[str], bool]) -> Any:
        """``LLMPipeline.generate``; an over-long prompt on the NPU ends the chat with one line."""
        try:
            return self.pipe.generate(text, config, stream)
        except RuntimeError as err:
            from pipeline.openvino.npu_lane import as_prompt_limit_error

            line = as_prompt_limit_error(err)
            if line is None:
                raise
            fail(line)


def open_chat(artifact: Path, device: str, max_new_tokens: int, stop: list[int]) -> tuple[Any, Any]:
    """The chat pipeline over ``artifact`` on ``device`` and the greedy ``GenerationConfig`` its ``generate`` takes."""
    pipe = open_pipeline(artifact, device)
    config = pipe.get_generation_config()
    config.max_new_tokens, config.do_sample, config.apply_chat_template = max_new_tokens, False, False
    config.stop_token_ids = set(config.stop_token_ids) | set(stop)
    return PromptLimitInOneLine(pipe), config
