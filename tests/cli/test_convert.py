"""`aipc convert MODEL --to TARGET`: composes params.yaml for the model, builds and validates only those targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_project, run_cmd

from pipeline.cli.convert import available_targets, model_overrides, pick_targets
from pipeline.core.config import compose
from pipeline.core.errors import StageError
from pipeline.core.registry import FAMILIES

AIPC = [sys.executable, "-m", "pipeline.cli"]


def aipc(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cmd([*AIPC, *args], project, check=False)


def test_targets_are_the_registrys_artifact_names_of_the_composition() -> None:
    data = compose(["model=tiny"])
    targets = available_targets(data)
    assert "openvino-int8" in targets and "onnx-cpu_int4" in targets and "npu_lib-int4" in targets
    assert set(targets) == {f.artifact(v) for f in FAMILIES.values() for v in data[f.name]}
    picked = pick_targets(["onnx-cpu_int4", "openvino-int8", "onnx-cpu_int4"], data)
    assert [(name, family.name, variant) for name, family, variant in picked] == [
        ("onnx-cpu_int4", "onnx", "cpu_int4"),
        ("openvino-int8", "openvino", "int8"),
    ], "each once, in the order asked"


def test_a_preset_is_a_model_override_and_a_folder_becomes_model_local(tmp_path: Path) -> None:
    assert model_overrides("tiny") == ["model=tiny"]
    folder = tmp_path / "my phi3"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes((ROOT / "pipeline" / "assets" / "tiny_phi3" / name).read_bytes())
    overrides = model_overrides(str(folder))
    assert overrides[0] == "model=local"
    assert compose(overrides)["model"]["local_path"] == folder.resolve().as_posix()
    with pytest.raises(StageError, match="pass the checkpoint folder itself"):
        model_overrides("local")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project copy with the checkout demo's DVC cache: the chain a target needs is restored from DVC's run
    cache where the demo ran the same stage (else built), and nothing else is in place."""
    from shared_workspace import seed_run_cache

    project = make_project(tmp_path_factory.mktemp("convert"))
    seed_run_cache(ROOT, project)
    return project


def test_an_unknown_target_is_one_line_and_nothing_is_written(project: Path) -> None:
    before = (project / "params.yaml").read_bytes()
    done = aipc(project, "convert", "tiny", "--to", "openvino-int8", "--to", "openvino-int9")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "unknown target 'openvino-int9'" in done.stderr, done.stderr
    assert "openvino-int8, openvino-fp16" in done.stderr, "the line lists the valid targets"
    assert (project / "params.yaml").read_bytes() == before and not (project / "artifacts").exists()


@pytest.mark.parametrize("model", ["empty", "no-such-folder", "local"])
def test_a_model_that_is_neither_a_preset_nor_a_checkpoint_is_one_line(project: Path, model: str) -> None:
    (project / "empty").mkdir(exist_ok=True)
    done = aipc(project, "convert", model, "--to", "openvino-int8")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    expected = {"empty": "has no config.json", "no-such-folder": "neither a model preset", "local": "folder itself"}
    assert expected[model] in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_converting_the_tiny_model_to_one_target_runs_only_its_stages(project: Path) -> None:
    done = aipc(project, "convert", "tiny", "--to", "openvino-int8")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("aipc convert: model=tiny (tiny-phi3, embedded) -> openvino-int8\n"), out[:500]
    assert "params.yaml was composed otherwise (model phi3-mini-4k -> tiny-phi3;" in out, "the switch is said"
    assert "dvc repro validate@int8" in out
    verdict = next(line for line in out.splitlines() if line.startswith("openvino-int8  "))
    assert verdict.split()[1] == "passed", out
    assert "openvino-int8: artifacts/openvino/int8 (every cell: artifacts/metrics/openvino-int8.json)" in out
    assert (project / "artifacts" / "openvino" / "int8" / "manifest.json").is_file()
    assert [p.name for p in (project / "artifacts" / "metrics").glob("*.json")] == ["openvino-int8.json"]
    assert [p.name for p in (project / "artifacts" / "openvino").iterdir() if p.name != ".gitignore"] == ["int8"]
    built = {p.name for p in (project / "artifacts").iterdir() if not p.name.startswith(".")}
    assert built == {"model", "reference", "openvino_base", "openvino", "metrics"}, "only int8's stage chain ran"
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    assert params["model"]["source"] == "tiny", "params.yaml composed for the model it converted"
