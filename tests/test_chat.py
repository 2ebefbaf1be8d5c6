"""aipc chat: the conversation it renders, end of input, the NPU's prompt limit in one line.

That it uses a checkpoint's own (non-Phi) template and stops on its end token: tests/validation/test_chat_template.py.
"""

from __future__ import annotations

from conftest import TINY_DIR

from pipeline.chat import chat_messages
from pipeline.validation.prompts import load_tokenizer, render_prompt


def test_a_conversation_is_rendered_by_the_checkpoint_template_as_phi3_wrote_it_by_hand() -> None:
    rendered = render_prompt(load_tokenizer(TINY_DIR), chat_messages([("Hi", "Hello!")], "Can you introduce yourself?"))
    assert rendered == ("<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
                        "Hello!<|end|>\n<|user|>\nCan you introduce yourself?<|end|>\n<|assistant|>\n")


def test_end_of_input_ends_an_interactive_chat(monkeypatch) -> None:
    import builtins

    from pipeline import chat

    def closed_stdin(prompt: str = "") -> str:
        raise EOFError  # Ctrl-D, Ctrl-Z Enter on Windows, or a closed pipe

    monkeypatch.setattr(builtins, "input", closed_stdin)
    assert chat.read_turn() == ""


def test_an_npu_prompt_limit_error_becomes_one_line() -> None:
    from pipeline.openvino.npu_lane import as_prompt_limit_error

    upstream = RuntimeError("Exception from src/cpp/src/llm/pipeline_stateful.cpp:346:\nStateful LLM pipeline on NPU may "
                            "only process prompts or hold chat history up to 1024 tokens. 1300 is passed.\n Set the "
                            "\"MAX_PROMPT_LEN\" config option to increase the limit.\n")
    line = as_prompt_limit_error(upstream)
    assert line and "\n" not in line and "1300 tokens" in line and "at most 1024 (MAX_PROMPT_LEN)" in line
    assert as_prompt_limit_error(RuntimeError("something else")) is None
