"""``aipc chat``: talk to an exported model in its own chat template, streaming tokens until its end token.

A folder is opened by its family's ``chat`` entry in its package (:data:`pipeline.core.registry.FAMILIES`: the
family whose ``chat_marker`` file the folder holds, else the one without a marker), on the device it supports.
One-shot with ``--prompt``, interactive otherwise (empty line or Ctrl-D ends). The conversation is rendered with the chat template saved beside the model (Phi-3's where there is
none) and generation stops on the model's end tokens (:mod:`pipeline.validation.prompts`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.registry import FAMILIES, entry
from pipeline.validation import prompts

SYSTEM = "You are a helpful AI assistant."


def chat_messages(history: list[tuple[str, str]], user: str, system: str = SYSTEM) -> list[dict[str, str]]:
    """The conversation as chat messages: system, alternating user/assistant turns, the new user turn."""
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return [*messages, {"role": "user", "content": user}]


def chat_family(artifact: Path) -> str:
    """The family whose ``chat`` opens ``artifact``: the one whose ``chat_marker`` it holds, else the unmarked one.

    The unmarked one (the OpenVINO IR's) also takes a folder of no family, and says in one line what it lacks.
    """
    chats = [f for f in FAMILIES.values() if f.chat]
    claimed = [f.name for f in chats if f.chat_marker and (artifact / f.chat_marker).is_file()]
    return (claimed or [f.name for f in chats if not f.chat_marker])[0]


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
    tokenizer = prompts.load_tokenizer(Path(artifact))  # the chat template and end tokens saved beside the model
    stop = prompts.stop_token_ids(tokenizer, prompts.generation_eos(Path(artifact)))
    # pipe.generate(text, config, stream): openvino_genai's LLMPipeline or the family's own (untyped), config what
    # it takes (a token budget, a GenerationConfig)
    pipe, config = entry(chat_family(Path(artifact)), "chat")(Path(artifact), device, max_new_tokens, list(stop))
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

        text = prompts.render_prompt(tokenizer, chat_messages(history, user))
        answer = str(pipe.generate(text, config, stream)).strip()
        sys.stdout.write("\n")
        history.append((user, answer))
        if prompt is not None:
            return answer
