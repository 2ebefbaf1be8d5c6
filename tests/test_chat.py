"""The chat prompt aipc renders is the one the Phi-3 tokenizer's own chat template renders."""

from __future__ import annotations

from transformers import AutoTokenizer

from pipeline.chat import phi3_prompt

from conftest import TINY_DIR


def test_phi3_prompt_matches_the_tokenizer_chat_template() -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    messages = [{"role": "system", "content": "You are a helpful AI assistant."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Can you introduce yourself?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert phi3_prompt([("Hi", "Hello!")], "Can you introduce yourself?") == rendered


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
