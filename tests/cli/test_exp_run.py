"""`aipc exp-run` keeps the workspace's composition: DVC's Hydra would compose params.yaml from conf/ + -S alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_project, run_cmd

from pipeline.cli.project import keep_workspace_composition, params_yaml_overrides
from pipeline.core.config import compose, dump_yaml
from pipeline.core.composition import workspace_overrides

COMPOSITIONS = [
    ["model=tiny"],
    ["model=tiny-phi4"],
    ["model=phi4-mini-instruct", "openvino=default"],
    ["model=local", "model.local_path='D:/models/my phi3'"],
    ["model=tiny", "openvino.int4.ratio=0.8", "openvino.int4.keep_float=['.*mlp\\.down_proj.*']"],
    ["model=tiny", "~onnx.cpu_int4", "+openvino/variant@openvino.int8_sym=base", "openvino.int8_sym.weight_format=int8",
     "openvino.int8_sym.sym=true"],  # a variant of the user's: its base, then its own keys
]


@pytest.mark.parametrize("overrides", COMPOSITIONS, ids=" ".join)
def test_the_workspace_overrides_give_back_params_yaml(overrides: list[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    composed = compose(overrides)
    Path("params.yaml").write_text(dump_yaml(composed), encoding="utf-8")
    found = workspace_overrides()
    assert compose(found) == composed
    assert found[0].startswith("model="), "the model preset first: it picks the family groups"


def test_a_users_override_wins_and_a_new_model_drops_the_old_ones(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(dump_yaml(compose(["model=local", "model.local_path=/m"])), encoding="utf-8")
    assert keep_workspace_composition(["-S", "model=phi35-mini"]) == ["-S", "model=phi35-mini"]
    assert keep_workspace_composition(["--set-param=openvino.int4.ratio=0.8", "validate@int4"]) == [
        "-S", "model=local", "-S", "model.local_path='/m'", "--set-param=openvino.int4.ratio=0.8", "validate@int4"]
    assert keep_workspace_composition(["validate@int4"]) == ["validate@int4"], "no -S: DVC does not recompose"
    assert keep_workspace_composition(["--no-hydra", "-S", "a=1"]) == ["--no-hydra", "-S", "a=1"]
    assert params_yaml_overrides(["-S", "other.yaml:a=1", "-Sb=2", "-S", "params.yaml:c=3"]) == ["b=2", "c=3"]


def test_the_readmes_exp_run_line_keeps_the_tiny_model(tmp_path: Path) -> None:
    """`aipc exp-run -S openvino.int4.ratio=0.8` in a model=tiny workspace (only `download`: the stage the model picks)."""
    project = make_project(tmp_path / "p")
    aipc = [sys.executable, "-m", "pipeline.cli"]
    run_cmd([*aipc, "compose", "model=tiny"], project)
    done = run_cmd([*aipc, "exp-run", "-S", "openvino.int4.ratio=0.8", "download"], project, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keeping this workspace's composition: -S model=tiny" in done.stdout
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    assert params["model"]["name"] == "tiny-phi3" and params["openvino"]["int4"]["ratio"] == 0.8
    manifest = json.loads((project / "artifacts" / "model" / "manifest.json").read_text(encoding="utf-8"))
    assert "tiny" in json.dumps(manifest.get("source") or manifest), "the embedded tiny model, not the hub's Phi-3"
