"""Chat prompts in the checkpoint's own chat template, and the tokens that end the model's turn.

Every prompt the pipeline sends a model goes through :func:`render_prompt`: the validation prompts (rendered once by
the reference stage, which every family's validation reads), the speed prompts (:func:`templated_ids`) and
``aipc chat``. It is ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` with the checkpoint's
``chat_template`` (``tokenizer_config.json`` or ``chat_template.jinja``); Phi-3's template serves only a checkpoint
that has none. Generation stops on :func:`stop_token_ids`: the tokenizer's eos, ``generation_config``'s eos list
and the token the template closes a turn with (``<|end|>`` for Phi-3, ``<|im_end|>`` for ChatML); greedy answers
are compared up to it (:func:`greedy_match`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail

# microsoft/Phi-3-mini-4k-instruct's chat_template (tokenizer_config.json), as pipeline/assets/tiny_phi3 ships it.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
SENTINEL = "\ue000aipc\ue000"  # private-use text: marks where a message's content sits in the rendered template

Prompt = str | Sequence[Any]  # a user message's text, or messages (mappings or objects with role and content)


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """``prompt`` as chat messages: a string is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages: Sequence[Any] = prompt
    return [dict(m) if isinstance(m, Mapping) else {"role": m.role, "content": m.content} for m in messages]


def template_source(tokenizer: Any) -> str:
    """Where the template comes from: ``checkpoint``, or ``phi3`` when the checkpoint has none."""
    return "checkpoint" if getattr(tokenizer, "chat_template", None) else "phi3"


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The text the model is asked with: ``prompt`` in its chat template, ending with the open assistant turn."""
    messages = as_messages(prompt)
    template = None if template_source(tokenizer) == "checkpoint" else PHI3_CHAT_TEMPLATE
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except (
        Exception
    ) as err:  # jinja2's TemplateError, or raise_exception() in the template ("System role not supported")
        roles = "/".join(m["role"] for m in messages)
        fail(f"the model's chat template cannot render a {roles} conversation ({err}): change validate.prompts")
    return str(text)


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The rendered prompt's token ids (the template writes any BOS itself, so none is added)."""
    return list(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the template closes an assistant turn with (``<|end|>``, ``<|im_end|>``), if any."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}]
    template = None if template_source(tokenizer) == "checkpoint" else PHI3_CHAT_TEMPLATE
    try:
        text = str(tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False))
    except Exception:  # a template that renders no assistant turn has no end token to learn
        return None
    after = text.partition(SENTINEL)[2]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return int(ids[0]) if ids and ids[0] in special else None


def stop_token_ids(tokenizer: Any, eos: int | Sequence[int] | None = None) -> list[int]:
    """The ids that end generation: ``eos`` (``generation_config.eos_token_id``), the tokenizer's eos and the
    template's end of turn."""
    found: list[int | None] = [eos] if isinstance(eos, int) else list(eos or [])
    found += [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    return sorted({int(i) for i in found if i is not None})


def until_stop(ids: list[int], stop: set[int]) -> list[int]:
    """``ids`` up to and including the first end token in ``stop``: the answer. A runtime whose own config lacks the
    template's end token goes on after it; the validations compare answers, so they compare this."""
    end = next((i for i, t in enumerate(ids) if t in stop), None)
    return ids if end is None else ids[: end + 1]


def first_divergence(got: list[int], want: list[int]) -> int | None:
    """The first index where two token runs differ (the shorter one's length if one stops early); None if equal."""
    index = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    return min(len(got), len(want)) if index is None and len(got) != len(want) else index


def greedy_match(outputs: list[list[int]], reference: dict) -> tuple[float, list[int | None]]:
    """Share of prompts whose greedy output equals the reference, and each first divergent index; both up to the
    model's end of turn, where the reference stopped (:func:`until_stop`)."""
    stop = set(reference.get("stop_token_ids", []))
    divergence = [
        first_divergence(until_stop(got, stop), until_stop(case["output_ids"], stop))
        for got, case in zip(outputs, reference["greedy"])
    ]
    return sum(d is None for d in divergence) / len(divergence), divergence


NEAR_TIE = 0.1  # logits, f32: a top-1 minus top-2 (PyTorch's, or an IR's own) below this is a tie runtimes may break


def divergence_notes(divergence: list[int | None], reference: dict) -> list[str]:
    """For each prompt whose greedy answer parts from PyTorch's, how close PyTorch's own choice was there.

    ``reference.json`` records the margin (top-1 minus top-2 logit, f32) of every answer token: a divergence at a
    near tie (under :data:`NEAR_TIE`) is one two correct runtimes can show; one at a wide margin is not.
    """
    notes = []
    for i, (d, case) in enumerate(zip(divergence, reference.get("greedy", []))):
        margins = case.get("margins") or []
        if d is None or d >= len(margins):
            continue
        kind = "a near tie" if margins[d] < NEAR_TIE else "not a near tie"
        notes.append(
            f"prompt {i} parts from PyTorch at token {d}, where PyTorch's top two are {margins[d]:.3g} apart ({kind})"
        )
    return notes


def generation_eos(folder: Path) -> list[int]:
    """The eos ids a folder's runtime stops on: ``generation_config.json`` (checkpoint, OpenVINO IR) or
    ``genai_config.json`` (ONNX Runtime GenAI)."""
    import json

    for name, path in (("generation_config.json", ()), ("genai_config.json", ("model",))):
        if (folder / name).is_file():
            data = json.loads((folder / name).read_text(encoding="utf-8"))
            for key in path:
                data = data.get(key, {})
            eos = data.get("eos_token_id")
            return [eos] if isinstance(eos, int) else list(eos or [])
    return []


def templated_ids(tokenizer: Any, body: list[int], length: int, what: str = "the prompt") -> list[int]:
    """``length`` token ids: a user turn of the chat template holding the first tokens of ``body``, then the
    assistant's open turn (the speed prompts: as long as configured, shaped like what a chat user sends)."""
    before, _, after = render_prompt(tokenizer, SENTINEL).partition(SENTINEL)
    head = tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
    tail = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    room = length - len(head) - len(tail)
    if room < 1 or room > len(body):
        fail(
            f"{what} needs {length} tokens: the chat template takes {len(head) + len(tail)} and the text has "
            f"{len(body)}; pick a length between {len(head) + len(tail) + 1} and {len(head) + len(tail) + len(body)}"
        )
    return [*head, *body[:room], *tail]


def load_tokenizer(folder: Path) -> Any:
    """The Hugging Face tokenizer saved in ``folder`` (with its chat template); no remote code."""
    from transformers import AutoTokenizer

    if not (folder / "tokenizer_config.json").is_file():
        fail(f"{folder} has no tokenizer_config.json: the chat template and the end tokens are read from it")
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
