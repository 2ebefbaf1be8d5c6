"""``aipc chat``: talk to an exported model in its own chat template, streaming tokens until its end token.

OpenVINO IR folders (``artifacts/openvino/<v>``, ``artifacts/npu/<v>``) run with ``openvino_genai`` on any
OpenVINO device with the device's properties from the IR's ``runtime_config.json`` (the export's
``cpu_inference_precision``); NPU artifacts use their stored ``npu_config.json`` settings (and blob) on the NPU. ONNX
Runtime GenAI folders (``artifacts/onnx/<v>``) run with onnxruntime-genai on their provider, or with
``--device CPU`` on the CPU provider. One-shot with ``--prompt``, interactive otherwise (empty line or
Ctrl-D ends). The conversation is rendered with the chat template saved beside the model (Phi-3's where there is
none) and generation stops on the model's end tokens (:mod:`pipeline.validation.prompts`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail
from pipeline.validation import prompts

SYSTEM = "You are a helpful AI assistant."


def chat_messages(history: list[tuple[str, str]], user: str, system: str = SYSTEM) -> list[dict[str, str]]:
    """The conversation as chat messages: system, alternating user/assistant turns, the new user turn."""
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return [*messages, {"role": "user", "content": user}]


class OnnxChat:
    """The slice of ``LLMPipeline`` that :func:`chat` uses, over an onnxruntime-genai model."""

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


def read_turn() -> str:
    """The user's next line; end of input (Ctrl-D, Ctrl-Z Enter on Windows, a closed pipe) ends the chat."""
    try:
        return input("you> ").strip()
    except EOFError:
        sys.stdout.write("\n")
        return ""


def chat(artifact: Path, device: str = "CPU", prompt: str | None = None, max_new_tokens: int = 256) -> str:
    """Stream answers from ``artifact``; returns the last answer (one-shot when ``prompt`` is given).

    The folder is verified first (:func:`pipeline.core.verify.verify_folder`): every file against its manifest,
    and against ``dvc.lock`` when it is a pipeline output; a folder without a manifest is refused.
    """
    from pipeline.core.verify import verify_folder

    verify_folder(Path(artifact))
    onnx = (Path(artifact) / "genai_config.json").is_file()
    tokenizer = prompts.load_tokenizer(Path(artifact))  # the chat template and end tokens saved beside the model
    stop = prompts.stop_token_ids(tokenizer, prompts.generation_eos(Path(artifact)))
    pipe: OnnxChat | Any  # Any: openvino_genai.LLMPipeline (untyped)
    config: int | Any  # the ONNX chat takes a token budget, openvino_genai a GenerationConfig
    if onnx and device.upper() == "DML":  # DirectML's onnxruntime-genai runs in its own environment
        from pipeline.onnx.chat_env import directml_chat

        pipe, config = directml_chat(Path(artifact)), max_new_tokens
        pipe.stop = set(stop)
    elif onnx:
        pipe, config = OnnxChat(Path(artifact), device), max_new_tokens
        pipe.stop = set(stop)
    else:
        pipe = open_pipeline(Path(artifact), device)
        config = pipe.get_generation_config()
        config.max_new_tokens, config.do_sample, config.apply_chat_template = max_new_tokens, False, False
        config.stop_token_ids = set(config.stop_token_ids) | set(stop)
    history: list[tuple[str, str]] = []
    answer = ""
    while True:
        user = prompt if prompt is not None else read_turn()
        if not user:
            return answer

        def stream(piece: str) -> bool:
            sys.stdout.write(piece)
            sys.stdout.flush()
            return False  # keep generating

        try:
            text = prompts.render_prompt(tokenizer, chat_messages(history, user))
            answer = str(pipe.generate(text, config, stream)).strip()
        except RuntimeError as err:  # an NPU artifact's MAX_PROMPT_LEN, said in one line
            from pipeline.openvino.npu_lane import as_prompt_limit_error

            line = as_prompt_limit_error(err)
            if line is None:
                raise
            fail(line)
        sys.stdout.write("\n")
        history.append((user, answer))
        if prompt is not None:
            return answer
