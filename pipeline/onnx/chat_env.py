"""``aipc chat <onnx folder> --device DML``: the conversation runs in the DirectML runtime's own environment.

``onnxruntime-genai-directml`` cannot share the main environment (it would replace the CPU package the model
builder needs), so, as the DML cells of ``validate_onnx`` do (:func:`pipeline.onnx.compat.run_script`), chat
starts :mod:`pipeline.onnx.chat_worker` under that environment's interpreter (created once by
:func:`pipeline.onnx.compat.ensure_env`) and streams the worker's tokens. :class:`EnvChat` is the slice of
``LLMPipeline`` that :func:`pipeline.chat.chat` uses, like :class:`pipeline.onnx.chat.OnnxChat` in this process.
"""

from __future__ import annotations

import json
import platform
import subprocess
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail
from pipeline.core.log import say
from pipeline.onnx import chat_worker, compat

WORKER = Path(chat_worker.__file__)


def _close(proc: subprocess.Popen) -> None:
    """End a worker: end of input stops it; one that does not stop within 10 s is killed."""
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


class EnvChat:
    """A chat whose model runs in another environment's onnxruntime-genai (a :mod:`chat_worker` process)."""

    def __init__(self, folder: Path, device: str, python: Path | str) -> None:
        self.python, self.stop = str(python), set[int]()  # stop: the model's end tokens (set by chat)
        self.proc = subprocess.Popen(
            [self.python, "-I", str(WORKER), str(Path(folder).resolve()), device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self._closer = weakref.finalize(self, _close, self.proc)
        self.runtime: dict[str, str] = self._next()["ready"]
        say(f"chatting in {' + '.join(f'{k} {v}' for k, v in self.runtime.items())} ({self.python})")

    def _next(self) -> dict[str, Any]:
        """The worker's next message; one line and the worker ended when it reports an error or stops."""
        assert self.proc.stdout is not None  # stdout=PIPE
        for line in self.proc.stdout:
            if line.startswith(chat_worker.MARK):  # anything else is the runtime's own output
                message: dict[str, Any] = json.loads(line[len(chat_worker.MARK) :])
                if "error" in message:
                    self.close()
                    fail(f"{self.python} {message['error']}")
                return message
        self.close()
        fail(f"the chat worker under {self.python} stopped (exit {self.proc.returncode}) before answering")

    def generate(self, prompt: str, max_new_tokens: int, stream: Callable[[str], bool]) -> str:
        """Greedy generation of at most ``max_new_tokens`` in the worker, each piece passed to ``stream``."""
        assert self.proc.stdin is not None  # stdin=PIPE
        request = {"prompt": prompt, "max_new_tokens": max_new_tokens, "stop": sorted(self.stop)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pieces = []
        while "done" not in (message := self._next()):
            pieces.append(message["piece"])
            stream(message["piece"])
        return "".join(pieces)

    def close(self) -> None:
        """End the worker (also done when this object is collected, or at exit)."""
        self._closer()


def built_for(folder: Path) -> str:
    """The execution provider a genai folder was built for (its first ``provider_options`` entry; none: cpu)."""
    genai = json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))
    options = genai["model"]["decoder"]["session_options"].get("provider_options") or [{}]
    return next(iter(options[0]), "cpu")


def directml_chat(folder: Path) -> EnvChat:
    """A chat on DirectML: in the environment of :data:`pipeline.onnx.compat.DML_RUNTIME` (created once)."""
    if platform.system() != "Windows":
        fail(f"DirectML runs only on Windows, not {platform.system()}: chat with --device CPU")
    if built_for(folder) != "dml":
        fail(f"{folder} was built for {built_for(folder).upper()}, not DML: chat with --device CPU")
    return EnvChat(folder, "DML", compat.ensure_env(runtime=compat.DML_RUNTIME, directml=True))
