"""Issue 35.5 and 35.6: a true interrupt message, and one line (never a traceback) for damaged or refused inputs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.core.artifacts import remove_tree
from pipeline.core.config import build, compose, pipeline_config_class
from pipeline.core.errors import StageError
from pipeline.core.manifest import write_manifest

INTERRUPTED = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.core.artifacts import staged_dir
    from pipeline.core.errors import run_main

    def main():
        if sys.argv[2] == "after":
            with staged_dir(Path(sys.argv[1]) / "first"):
                pass
        with staged_dir(Path(sys.argv[1]) / "int4"):
            raise KeyboardInterrupt

    run_main(main)
""")


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupt_never_claims_an_output_dvc_had_already_deleted(tmp_path: Path, when: str) -> None:
    """DVC deletes most stages' outputs before it runs them: then there are no previous contents to keep."""
    done = subprocess.run([sys.executable, "-c", INTERRUPTED, str(tmp_path), when], capture_output=True,
                          encoding="utf-8", cwd=ROOT)
    gone = (tmp_path / "int4").as_posix()
    expected = {"before": f"error: interrupted; nothing was moved into artifacts/ (nothing is at {gone} now): "
                          "rerun to build it",
                "after": f"error: interrupted after {(tmp_path / 'first').as_posix()} was replaced; nothing is at "
                         f"{gone} now: rerun to finish"}[when]
    assert done.returncode == 130 and done.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "int4").exists()


def tiny_params():  # noqa: ANN201 - the configured PipelineConfig class
    return build(pipeline_config_class(), compose(["model=tiny"]))


def test_a_corrupt_metrics_file_is_a_row_that_says_so_and_the_report_is_written(tmp_path: Path) -> None:
    from pipeline.validation import report

    metrics, out = tmp_path / "metrics", tmp_path / "report"
    metrics.mkdir()
    (metrics / "openvino-int4.json").write_text('{"cells": {"CPU": ', encoding="utf-8")  # cut off mid-write
    (metrics / "openvino-int8.json").write_text('{"cells": {"CPU": "passed"}}', encoding="utf-8")
    report.run(tiny_params(), metrics, out)
    text = (out / "report.md").read_text(encoding="utf-8")
    int4 = next(line for line in text.splitlines() if line.startswith("| openvino-int4 |"))
    assert "openvino-int4.json cannot be read (JSONDecodeError: Expecting value" in int4
    assert "run `dvc repro validate@int4`" in int4
    int8 = next(line for line in text.splitlines() if line.startswith("| openvino-int8 |"))
    assert "openvino-int8.json cannot be read (TypeError" in int8


def test_publishing_with_a_corrupt_metrics_file_is_one_line(tmp_path: Path) -> None:
    from pipeline.hub.staging import load_artifact

    folder = tmp_path / "artifacts" / "openvino" / "int4"
    folder.mkdir(parents=True)
    (folder / "openvino_model.xml").write_text("<net/>", encoding="utf-8")
    write_manifest(folder, stage="export_openvino", variant="int4")
    (tmp_path / "artifacts" / "metrics").mkdir()
    (tmp_path / "artifacts" / "metrics" / "openvino-int4.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(StageError) as exc:
        load_artifact(tmp_path, "openvino/int4")
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'artifacts' / 'metrics' / 'openvino-int4.json'} "
                                                      "is not valid JSON (Expecting property name")
    assert message.endswith("run `dvc repro validate@int4`")


WRITE_INTO = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.core.artifacts import staged_dir
    from pipeline.core.errors import run_main

    def main():
        with staged_dir(Path(sys.argv[1])) as tmp:
            (tmp / "openvino_model.xml").write_text("<net/>")

    run_main(main)
""")


@pytest.mark.skipif(os.name == "nt" or not hasattr(os, "setuid"), reason="POSIX permission bits")
def test_a_read_only_output_folder_is_one_line() -> None:
    # As root, permission bits do not stop writes: the stage runs as an unprivileged user then.
    base = Path(tempfile.mkdtemp(prefix="aipc-ro-"))
    try:
        parent = base / "artifacts" / "openvino"
        parent.mkdir(parents=True)
        user = {}
        if os.getuid() == 0:
            for p in (base, base / "artifacts", parent):
                os.chown(p, 65534, 65534)
            user = {"user": 65534, "group": 65534}
        parent.chmod(0o555)
        done = subprocess.run([sys.executable, "-c", WRITE_INTO, str(parent / "int4")], cwd=ROOT, capture_output=True,
                              encoding="utf-8", env={**os.environ, "PYTHONPATH": str(ROOT)}, **user)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: Permission denied writing {(parent / 'int4').as_posix()} (")
        assert "make that folder writable" in lines[0] and not (parent / "int4").exists()
    finally:
        for p in (base, *base.rglob("*")):
            p.chmod(stat.S_IRWXU)
        remove_tree(base)


@pytest.mark.parametrize("section", ["openvino", "npu", "npu_lib", "onnx", "winml"])
def test_compose_refuses_to_drop_a_section_dvc_yaml_loops_over_and_writes_nothing(
    section: str, tmp_path: Path
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("before: compose\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "compose", f"~{section}"], cwd=tmp_path,
                          capture_output=True, encoding="utf-8", env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: the composition has no {section} section: dvc.yaml runs one stage per entry of each of npu, "
        "npu_lib, onnx, openvino, winml; leave out single variants instead, e.g. `aipc compose ~onnx.cpu_int4`"]
    assert params.read_text(encoding="utf-8") == "before: compose\n"
