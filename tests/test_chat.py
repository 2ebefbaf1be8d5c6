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
