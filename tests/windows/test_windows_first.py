"""Windows-first behaviour that Linux can show directly: Python version truth, no activation needed, cp1252 consoles."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_project, run_cmd

bootstrap = runpy.run_path(str(ROOT / "bootstrap.py"))  # the stdlib-only installer at the project root


def test_python_version_truth_bootstrap_pyproject_and_readme_agree() -> None:
    problem = bootstrap["python_problem"]((3, 10))
    assert problem and "\n" not in problem and "3.11 or newer" in problem and "bootstrap.py demo" in problem
    assert bootstrap["python_problem"]((3, 11)) is None and bootstrap["python_problem"]((3, 12)) is None
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    wanted = ".".join(map(str, bootstrap["MIN_PYTHON"]))
    assert re.search(rf'requires-python = ">={re.escape(wanted)}"', pyproject)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"Python {wanted}" in readme and "3.10" not in readme.split("## Quick start")[1].split("##")[0]


def test_bootstrap_refuses_an_old_python_in_one_line() -> None:
    code = ("import runpy, sys; sys.version_info = (3, 10, 0, 'final', 0); sys.argv = ['bootstrap.py', 'test']; "
            f"runpy.run_path({str(ROOT / 'bootstrap.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Python 3.10 is too old" in done.stderr


@pytest.mark.skipif(os.name == "nt", reason="fakes a foreign `python` with a /bin/sh script")
def test_aipc_repro_runs_stages_with_this_venv_from_a_shell_without_it(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    fake = tmp_path / "bin"  # a shell whose `python` is not ours (the Windows Store stub, or another Python)
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\necho 'not the venv python' >&2\nexit 9\n", encoding="utf-8")
    (fake / "python").chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(fake), "/usr/bin", "/bin"])}
    bare = subprocess.run([sys.executable, "-m", "dvc", "repro", "download"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert bare.returncode != 0 and "not the venv python" in bare.stderr, "plain dvc repro runs whatever python is first"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "repro", "download"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (project / "artifacts" / "model" / "manifest.json").is_file()


def test_a_cp1252_console_prints_the_report_and_chat_text() -> None:
    code = ("import sys, io; sys.stdout = io.TextIOWrapper(io.BytesIO(), encoding='cp1252'); "
            "from pipeline.core.log import console_safe; console_safe(); print('ppl Δ % and 你好'); "
            "sys.stdout.flush(); sys.__stdout__.write(sys.stdout.buffer.getvalue().decode('cp1252'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout == "ppl ? % and ??\n", done.stderr


def test_line_endings_are_pinned_so_hashes_match_across_oses() -> None:
    attributes = (ROOT / ".gitattributes").read_text(encoding="utf-8").splitlines()
    assert "* text=auto eol=lf" in attributes and "*.safetensors binary" in attributes
    done = subprocess.run(["git", "check-attr", "eol", "dvc.lock", "params.yaml", "pipeline/cli.py"], cwd=ROOT,
                          capture_output=True, text=True, check=True, encoding="utf-8")
    assert done.stdout.count("eol: lf") == 3, done.stdout


def test_on_windows_the_dml_skip_never_advises_replacing_the_builders_runtime(monkeypatch) -> None:
    import platform

    from pipeline.validation import devices

    monkeypatch.setattr(platform, "system", lambda: "Windows")
    reason = devices.onnx_provider_status("dml").reason
    assert reason and "would replace it" in reason and "aipc onnx-compat" in reason
    assert not reason.startswith("the installed onnxruntime-genai has no DML provider: install")


def test_replacing_an_output_with_an_open_file_inside_retries_then_says_what_to_close(
        tmp_path: Path, monkeypatch) -> None:
    import contextlib
    import threading

    import pytest
    from winemu import enabled

    from pipeline.core import artifacts
    from pipeline.core.errors import StageError

    monkeypatch.setattr(artifacts, "RENAME_RETRIES", (0.05, 0.05, 0.05))
    final, new = tmp_path / "out", tmp_path / "new"
    for folder, text in ((final, "previous"), (new, "new")):
        folder.mkdir()
        (folder / "model.bin").write_text(text, encoding="utf-8")
    emulated = enabled(tmp_path) if sys.platform.startswith("linux") else contextlib.nullcontext()  # Windows: real
    with emulated:
        with open(final / "model.bin", "rb"):  # e.g. `aipc chat` still running on the old IR
            with pytest.raises(StageError) as exc:
                artifacts.replace_dir(new, final)
        message = str(exc.value)
        assert "\n" not in message and "is open in another program" in message and "was left as it was" in message
        assert (final / "model.bin").read_text(encoding="utf-8") == "previous" and new.is_dir()
        held = open(final / "model.bin", "rb")  # noqa: SIM115 - closed by the timer, as a virus scan ends
        threading.Timer(0.08, held.close).start()
        artifacts.replace_dir(new, final)
    assert (final / "model.bin").read_text(encoding="utf-8") == "new" and not new.exists()
