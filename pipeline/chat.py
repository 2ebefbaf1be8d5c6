"""``aipc chat``: talk to an exported OpenVINO IR with the Phi-3 chat template, streaming tokens.

One-shot with ``--prompt``, interactive otherwise (empty line or Ctrl-D ends). NPU artifacts use
their stored ``npu_config.json`` settings (and blob) when run on the NPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.errors import fail

SYSTEM = "You are a helpful AI assistant."


def phi3_prompt(history: list[tuple[str, str]], user: str, system: str = SYSTEM) -> str:
    """Render the Phi-3 chat format: system, alternating user/assistant turns, open assistant turn."""
    text = f"<|system|>\n{system}<|end|>\n" if system else ""
    for question, answer in history:
        text += f"<|user|>\n{question}<|end|>\n<|assistant|>\n{answer}<|end|>\n"
    return text + f"<|user|>\n{user}<|end|>\n<|assistant|>\n"


def open_pipeline(artifact: Path, device: str):
    """Load ``artifact`` (an OpenVINO IR folder) on ``device`` with its NPU settings where relevant."""
    import openvino_genai as ov_genai

    if not (artifact / "openvino_model.xml").is_file():
        fail(f"{artifact} is not an OpenVINO IR folder (no openvino_model.xml): pass e.g. artifacts/openvino/int4")
    properties = {}
    if device == "NPU" and (artifact / "npu_config.json").is_file():
        properties = json.loads((artifact / "npu_config.json").read_text(encoding="utf-8"))
        if (artifact / "openvino_model.npu.blob").is_file():
            properties["BLOB_PATH"] = str(artifact / "openvino_model.npu.blob")
    return ov_genai.LLMPipeline(str(artifact), device, **properties)


def chat(artifact: Path, device: str = "CPU", prompt: str | None = None, max_new_tokens: int = 256) -> str:
    """Stream answers from ``artifact``; returns the last answer (one-shot when ``prompt`` is given)."""
    pipe = open_pipeline(Path(artifact), device)
    config = pipe.get_generation_config()
    config.max_new_tokens, config.do_sample, config.apply_chat_template = max_new_tokens, False, False
    history: list[tuple[str, str]] = []
    answer = ""
    while True:
        user = prompt if prompt is not None else input("you> ").strip()
        if not user:
            return answer

        def stream(piece: str) -> bool:
            sys.stdout.write(piece)
            sys.stdout.flush()
            return False  # keep generating

        answer = str(pipe.generate(phi3_prompt(history, user), config, stream)).strip()
        sys.stdout.write("\n")
        history.append((user, answer))
        if prompt is not None:
            return answer
