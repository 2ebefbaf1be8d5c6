"""`aipc chat <onnx folder> --device DML` runs in the DirectML runtime's own environment (pipeline/onnx/chat_env.py).

DirectML exists only on Windows; here the same worker path is proven with the CPU build of onnxruntime-genai 0.13.1
(the compat environment, from PyPI once): same answer as this environment's runtime, streamed piece by piece.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import make_project, run_cmd

from pipeline.onnx.chat import OnnxChat
from pipeline.core.errors import StageError
from pipeline.onnx import compat
from pipeline.onnx.chat_env import EnvChat

PROMPT = "<|user|>\nHello<|end|>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def onnx_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with the tiny model's DirectML ONNX graph built (`dvc repro export_onnx@dml_int4`)."""
    project = make_project(tmp_path_factory.mktemp("chat"))
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    run_cmd([sys.executable, "-m", "dvc", "repro", "export_onnx@dml_int4"], project)
    return project


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="on Windows DirectML runs")
def test_chat_on_dml_off_windows_is_one_line(onnx_project: Path) -> None:
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "chat", "artifacts/onnx/dml_int4", "--device", "DML",
                    "--prompt", "Hi"], onnx_project, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[-1].startswith("error: DirectML runs only on Windows"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.pypi
def test_a_chat_in_another_environment_answers_as_this_one_does(onnx_project: Path) -> None:
    folder = onnx_project / "artifacts" / "onnx" / "dml_int4"
    here = OnnxChat(folder, "CPU").generate(PROMPT, 12, lambda piece: False)
    there = EnvChat(folder, "CPU", compat.ensure_env(runtime="0.13.1"))
    assert there.runtime == {"onnxruntime-genai": "0.13.1"}, "the worker runs the environment's runtime"
    pieces: list[str] = []
    answer = there.generate(PROMPT, 12, lambda piece: pieces.append(piece) or False)
    assert answer == here and len(pieces) == 12 and "".join(pieces) == answer, "streamed, the same greedy answer"
    local = OnnxChat(folder, "CPU")
    local.stop = there.stop = {int(t) for t in local.tokenizer.encode(answer.split()[-1])}  # the answer's last word
    stopped = there.generate(PROMPT, 12, lambda piece: False)
    assert stopped == local.generate(PROMPT, 12, lambda piece: False) and len(stopped) < len(answer), (
        "a second turn, ended at the model's end tokens as in this environment"
    )
    there.close()
    assert there.proc.returncode == 0


@pytest.mark.slow
@pytest.mark.pypi
def test_a_folder_the_other_runtime_cannot_load_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "genai_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(StageError) as failed:
        EnvChat(tmp_path, "CPU", compat.ensure_env(runtime="0.13.1"))
    assert "\n" not in str(failed.value) and "cannot load the model" in str(failed.value)
