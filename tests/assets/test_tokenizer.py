"""The embedded tokenizers (tiny, tiny-128k) are the exact Phi-3 tokenizer: llama.cpp's vectors from the real one."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from conftest import ROOT, TINY_DIR

VECTORS = ROOT / "pipeline" / "assets" / "phi3_vocab_tests" / "ggml-vocab-phi-3.gguf"
TINY_128K_DIR = ROOT / "pipeline" / "assets" / "tiny_phi3_128k"


def load_vectors() -> list[tuple[str, list[int]]]:
    # Every .inp text is followed by the separator and every .out line by a newline: drop the empty tails.
    inputs = VECTORS.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = VECTORS.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    assert inputs[-1] == "" and outputs[-1] == "", "test vector files lost their final separator"
    inputs, outputs = inputs[:-1], outputs[:-1]
    assert len(inputs) == len(outputs), "test vector files out of step"
    return [(text, [int(t) for t in ids.split()]) for text, ids in zip(inputs, outputs)]


@pytest.fixture(scope="module", params=[TINY_DIR, TINY_128K_DIR], ids=["tiny", "tiny-128k"])
def tokenizer(request):
    return AutoTokenizer.from_pretrained(request.param)


def test_tokenizer_matches_every_llama_cpp_vector(tokenizer) -> None:
    vectors = load_vectors()
    assert len(vectors) > 30
    mismatches = [(text, want, tokenizer.encode(text, add_special_tokens=False))
                  for text, want in vectors if tokenizer.encode(text, add_special_tokens=False) != want]
    assert not mismatches, mismatches[:3]


def test_chat_markers_are_single_special_tokens(tokenizer) -> None:
    ids = tokenizer.encode("<|user|>Hi<|end|><|assistant|>", add_special_tokens=False)
    assert ids[0] == 32010 and 32007 in ids and ids[-1] == 32001
    assert tokenizer.eos_token_id == 32000


def test_tiny_128k_tokenizer_config_differs_only_in_context_length() -> None:
    base = json.loads((TINY_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    long = json.loads((TINY_128K_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert long.pop("model_max_length") == 131072 and base.pop("model_max_length") == 4096
    assert long == base
