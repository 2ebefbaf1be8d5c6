"""``aipc chat`` on an ONNX Runtime GenAI folder (registry field ``chat``; :mod:`pipeline.chat` runs the turns).

The folder runs with onnxruntime-genai on the provider it was built for, or with ``--device CPU`` on the CPU
provider; ``--device DML`` runs in the DirectML runtime's own environment (:mod:`pipeline.onnx.chat_env`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail


class OnnxChat:
    """The slice of ``LLMPipeline`` that :func:`pipeline.chat.chat` uses, over an onnxruntime-genai model."""

    def __init__(self, folder: Path, device: str) -> None:
        import onnxruntime_genai as og

        from pipeline.validation.devices import onnx_provider_status

        genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
        options = genai["model"]["decoder"]["session_options"].get("provider_options") or [{}]
        status = onnx_provider_status(next(iter(options[0]), "cpu"))  # no provider entry: the CPU provider
        if device.upper() not in ("CPU", status.name):
            fail(f"{folder} was built for {status.name}: chat with --device {status.name} or --device CPU")
        if device.upper() != "CPU" and not status.available:
            fail(f"no {status.name} here ({status.reason}): chat with --device CPU")
        config = og.Config(str(folder))
        if device.upper() == "CPU":
            config.clear_providers()  # the same files on the CPU provider
        self.og, self.model = og, og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.stop: set[int] = set()  # the model's end tokens beyond genai_config's eos (set by chat)

    def generate(self, prompt: str, max_new_tokens: int, stream: Callable[[str], bool]) -> str:
        """Greedy generation of at most ``max_new_tokens``, each piece passed to ``stream``."""
        ids = self.tokenizer.encode(prompt)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(ids)
        pieces, decoder = [], self.tokenizer.create_stream()
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self.stop:
                break
            piece = decoder.decode(token)
            pieces.append(piece)
            stream(piece)
        return "".join(pieces)


def open_chat(artifact: Path, device: str, max_new_tokens: int, stop: list[int]) -> tuple[Any, Any]:
    """The chat pipeline over ``artifact`` on ``device`` and what its ``generate`` takes: the token budget."""
    pipe: Any
    if device.upper() == "DML":  # DirectML's onnxruntime-genai runs in its own environment
        from pipeline.onnx.chat_env import directml_chat

        pipe = directml_chat(artifact)
    else:
        pipe = OnnxChat(artifact, device)
    pipe.stop = set(stop)
    return pipe, max_new_tokens
