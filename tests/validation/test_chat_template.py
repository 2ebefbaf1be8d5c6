"""The model's own chat template everywhere (issue 34, items 1-2): validation prompts, speed prompts, aipc chat.

The embedded tiny Phi-3 renders today's prompt ids exactly. A tiny model with a ChatML template (built here from a
copy of the tiny asset) gets ChatML prompts in the reference, the OpenVINO validation and ``aipc chat``, and every
one of them stops on ``<|im_end|>``, a token its ``generation_config.json`` does not list.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY_DIR

from pipeline.core.config import ConfigError, ModelConfig, ValidateConfig, build, compose
from pipeline.hub import download
from pipeline.validation import matrix
from pipeline.validation import prompts as chat_prompts

# The prompts conf/validate/default.yaml held as Phi-3 text before they became messages.
PHI3_PROMPTS = [
    "<|system|>You are a helpful AI assistant.<|end|><|user|>Can you introduce yourself?<|end|><|assistant|>",
    "<|user|>What does the json module do?<|end|><|assistant|>",
    "<|user|>Explain what a Python generator is.<|end|><|assistant|>",
]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
USER, END_OF_TURN, ENDOFTEXT, PLACEHOLDER = 32010, 32007, 32000, 32002  # tiny Phi-3's <|user|>, <|end|>, ..


def small_cfg(*overrides: str) -> ValidateConfig:
    """The default validation section, with short held-out and long-context passes (this is about prompts)."""
    return build(ValidateConfig, compose([
        "validate.eval_tokens=128", "validate.long_context.lengths=[300]", "validate.perf_prompt_tokens={short: 32}",
        *overrides])["validate"])


def test_the_tiny_phi3_renders_todays_prompt_ids_with_its_template_and_without_one(tmp_path: Path) -> None:
    tokenizer = chat_prompts.load_tokenizer(TINY_DIR)
    today = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in PHI3_PROMPTS]
    prompts = small_cfg().prompts
    assert [chat_prompts.prompt_ids(tokenizer, p) for p in prompts] == today
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_DIR / name, tmp_path / name)
    bare = chat_prompts.load_tokenizer(tmp_path)
    bare.chat_template = None  # a checkpoint without a template: Phi-3's is used
    assert chat_prompts.template_source(bare) == "phi3"
    assert [chat_prompts.prompt_ids(bare, p) for p in prompts] == today
    assert chat_prompts.stop_token_ids(tokenizer, [ENDOFTEXT, END_OF_TURN]) == [ENDOFTEXT, END_OF_TURN]


def test_a_prompt_is_messages_ending_with_the_user_and_a_string_is_one_user_message() -> None:
    assert small_cfg("validate.prompts=[Hi]").prompts[0][0].role == "user"
    with pytest.raises(ConfigError, match=r"^validate.prompts\[0\] must end with a user message"):
        ValidateConfig.from_conf(prompts=[[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]])
    with pytest.raises(ConfigError, match=r"^validate.prompts\[0\]\[0\].role must be one of system, user, assistant"):
        ValidateConfig.from_conf(prompts=[[{"role": "bot", "content": "Q"}]])


@pytest.fixture(scope="module")
def chatml(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The tiny Phi-3 with a ChatML template: <|im_start|>/<|im_end|> added, and <|im_end|> made the model's
    <|end|> under another name (its input row copied, output rows swapped), <|im_start|> reading as <|user|>.
    Where it would emit <|endoftext|> it emits <|placeholder1|> (output rows swapped), so after <|im_end|> it goes
    on talking. generation_config.json lists only <|endoftext|>: the template is the only place <|im_end|> is named."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("chatml")
    checkpoint = root / "checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(checkpoint)
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32)
    embed = model.model.embed_tokens.weight.data
    head = embed.clone()
    embed[end], embed[start] = embed[END_OF_TURN], embed[USER]
    head[[END_OF_TURN, end]] = head[[end, END_OF_TURN]]
    head[[ENDOFTEXT, PLACEHOLDER]] = head[[PLACEHOLDER, ENDOFTEXT]]  # it never emits eos: only <|im_end|> ends a turn
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    model.generation_config.eos_token_id = ENDOFTEXT
    model.to(torch.float16).save_pretrained(checkpoint)
    model_dir = root / "artifacts" / "model"
    download.run(ModelConfig.preset("local", name="tiny-chatml", local_path=str(checkpoint)), model_dir)
    return model_dir, end


@pytest.fixture(scope="module")
def chatml_reference(chatml: tuple[Path, int]) -> dict:
    from pipeline.validation import reference

    model_dir, _ = chatml
    return reference.run(small_cfg(), model_dir, model_dir.parent / "reference")


def test_the_template_end_token_is_found_in_the_template(chatml: tuple[Path, int]) -> None:
    model_dir, end = chatml
    tokenizer = chat_prompts.load_tokenizer(model_dir)
    assert chat_prompts.end_of_turn_id(tokenizer) == end
    assert chat_prompts.stop_token_ids(tokenizer, chat_prompts.generation_eos(model_dir)) == [ENDOFTEXT, end]


def test_the_reference_asks_in_chatml_and_stops_on_im_end(chatml: tuple[Path, int], chatml_reference: dict) -> None:
    model_dir, end = chatml
    first = chatml_reference["greedy"][0]
    assert first["prompt"] == ("<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\n"
                               "Can you introduce yourself?<|im_end|>\n<|im_start|>assistant\n")
    assert chatml_reference["chat_template"] == "checkpoint" and end in chatml_reference["stop_token_ids"]
    stopped = [c["output_ids"] for c in chatml_reference["greedy"] if c["output_ids"][-1] == end]
    assert stopped and all(len(ids) < small_cfg().max_new_tokens for ids in stopped)
    tokenizer = chat_prompts.load_tokenizer(model_dir)
    short = chatml_reference["perf_prompts"]["short"]
    head = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    tail = tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert len(short) == 32 and short[: len(head)] == head and short[-len(tail):] == tail


def test_an_answer_is_compared_up_to_the_end_token() -> None:
    reference = {"stop_token_ids": [9], "greedy": [{"output_ids": [5, 6, 9]}, {"output_ids": [7, 8]}]}
    assert matrix.greedy_match([[5, 6, 9, 4, 4], [7, 8]], reference) == (1.0, [None, None])
    assert matrix.greedy_match([[5, 6, 4, 9], [7, 8]], reference) == (0.5, [2, None])


@pytest.mark.slow
def test_openvino_validation_and_chat_use_chatml_and_stop_on_im_end(
    chatml: tuple[Path, int], chatml_reference: dict
) -> None:
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    from pipeline.chat import chat
    from pipeline.core.workspace import Workspace
    from pipeline.openvino import export as export_openvino
    from pipeline.openvino.config import OpenVinoVariantConfig
    from pipeline.openvino.generation import measure_generation

    model_dir, end = chatml
    export_openvino.run("fp16", OpenVinoVariantConfig.from_conf(weight_format="fp16"),
                        Workspace(model=model_dir, out=model_dir.parent / "openvino"), base_dir=None)
    ir = model_dir.parent / "openvino" / "fp16"
    got = measure_generation(ir, "CPU", small_cfg(), chatml_reference)
    assert got["tokenizer_matches_reference"]  # the IR's tokenizer reads the ChatML prompt as PyTorch's did
    assert any(end in out[:-1] for out in got["outputs"])  # the IR's config went on after <|im_end|>...
    assert matrix.greedy_match(got["outputs"], chatml_reference)[0] == 1.0  # ...and the answers up to it match

    answer = chat(ir, "CPU", prompt="Can you introduce yourself?", max_new_tokens=64)
    pipe = ov_genai.LLMPipeline(str(ir), "CPU")  # the IR's own config: it does not stop on <|im_end|>
    config = pipe.get_generation_config()
    config.max_new_tokens, config.do_sample = 64, False
    ids = chatml_reference["greedy"][0]["prompt_ids"]
    tokens = list(pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), config).tokens[0])
    assert end in tokens[:-1], "without the template's end token the IR's config generates past <|im_end|>"
    text = chat_prompts.load_tokenizer(ir).decode(tokens[: tokens.index(end)], skip_special_tokens=True)
    assert answer == text.strip() and answer


@pytest.mark.slow
def test_onnx_chat_uses_chatml_and_stops_on_im_end(chatml: tuple[Path, int], chatml_reference: dict) -> None:
    from pipeline.chat import chat
    from pipeline.core.workspace import Workspace
    from pipeline.onnx import export as export_onnx
    from pipeline.onnx.config import OnnxVariantConfig

    model_dir, end = chatml
    first = chatml_reference["greedy"][0]
    assert first["output_ids"][-1] == end  # PyTorch answers, then closes its turn
    variant = OnnxVariantConfig.from_conf(execution_provider="cpu", precision="fp32", extra_options={"windowed_kv_cache": False})
    export_onnx.run("cpu_fp32", variant, Workspace(model=model_dir, out=model_dir.parent / "onnx"))
    answer = chat(model_dir.parent / "onnx" / "cpu_fp32", "CPU", prompt="Can you introduce yourself?", max_new_tokens=64)
    assert answer == first["text"].strip()  # genai_config's eos is <|endoftext|> only: without the stop it goes on
