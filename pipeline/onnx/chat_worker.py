"""Chat with an onnxruntime-genai folder inside another environment: the worker of :mod:`pipeline.onnx.chat_env`.

Self-contained on purpose (the standard library and ``onnxruntime_genai`` only, no ``pipeline`` import), like
:mod:`pipeline.validation.genai_runner`: it runs as a script under the DirectML environment's interpreter,
``python -I chat_worker.py <folder> <device>``. Every line it prints for the parent starts with :data:`MARK`
and carries one JSON object (ASCII, so no console code page can garble it): ``{"ready": {distribution: version}}``
or ``{"error": line}`` once the model is loaded; then, for each request line on stdin (``{"prompt",
"max_new_tokens", "stop"}``), ``{"piece": text}`` per token and ``{"done": true}`` (or ``{"error": line}``).
End of input ends it.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from typing import Any

MARK = "AIPC_CHAT "


def send(**message: Any) -> None:
    """One message to the parent."""
    sys.stdout.write(MARK + json.dumps(message) + "\n")
    sys.stdout.flush()


def error_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def load(folder: str, device: str) -> tuple[Any, Any, Any]:
    """onnxruntime_genai, the model on its own provider (``device`` CPU: on the CPU provider), its tokenizer."""
    import onnxruntime_genai as og

    config = og.Config(folder)
    if device == "CPU":
        config.clear_providers()  # the same files on the CPU provider
    model = og.Model(config)
    return og, model, og.Tokenizer(model)


def generate(og: Any, model: Any, tokenizer: Any, request: dict[str, Any]) -> None:
    """Greedy generation of at most ``max_new_tokens``, each piece sent as it comes, ending at a ``stop`` token."""
    ids = tokenizer.encode(request["prompt"])
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + request["max_new_tokens"], do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    decoder, stop = tokenizer.create_stream(), set(request.get("stop", []))
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token in stop:
            break
        send(piece=decoder.decode(token))


def main() -> None:
    """Load the model, say which runtime it runs in, then answer one request per input line."""
    folder, device = sys.argv[1], sys.argv[2]
    try:
        og, model, tokenizer = load(folder, device)
    except Exception as err:  # reported as data; the parent says it in one line
        send(error=f"cannot load the model: {error_line(err)}")
        return
    owners = metadata.packages_distributions()
    send(ready={name: metadata.version(name) for name in owners.get("onnxruntime_genai", [])})
    for line in sys.stdin:
        try:
            generate(og, model, tokenizer, json.loads(line))
            send(done=True)
        except Exception as err:  # the runtime failed on this prompt: say so, keep serving
            send(error=f"cannot generate: {error_line(err)}")


if __name__ == "__main__":
    main()
