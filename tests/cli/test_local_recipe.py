"""`model=local` gets the recipe of the preset whose architecture the checkpoint has, and says so in one line.

Issue 35, Why 7: a Phi-4-shaped checkpoint (partial rotary, tied embeddings) under `model=local` was given the
Phi-3 int4 recipe (sym, group 128, ratio 0.6) without a word; the Phi-4-mini presets use optimum-intel's tuned
one (asym, group 64, ratio 1.0: conf/openvino/phi4-mini.yaml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_project, run_cmd

AIPC = [sys.executable, "-m", "pipeline.cli"]
PHI3 = {"model_type": "phi3", "hidden_size": 3072, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("local-recipe") / "p")


def compose(project: Path, config: dict, *extra: str) -> tuple[str, dict]:
    """`aipc compose model=local model.local_path=<a folder with config>` [extra]; its output and params.yaml."""
    model = project.parent / f"model-{abs(hash(json.dumps(config, sort_keys=True)))}"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    done = run_cmd([*AIPC, "compose", "model=local", f"model.local_path={model.as_posix()}", *extra], project)
    return done.stdout, yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "marks, said",
    [
        ({"partial_rotary_factor": 0.75, "tie_word_embeddings": True}, "partial_rotary_factor 0.75, tie_word_embeddings True"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings True"),
    ],
)
def test_a_phi4_shaped_local_checkpoint_gets_phi4_minis_int4_recipe(project: Path, marks: dict, said: str) -> None:
    out, params = compose(project, {**PHI3, **marks})
    assert f"model.local_path has Phi-4-mini's architecture ({said}): composing openvino=phi4-mini" in out
    int4 = params["openvino"]["int4"]
    assert (int4["group_size"], int4["ratio"], int4["sym"]) == (64, 1.0, False)
    assert params["model"]["name"] == "local"


def test_a_phi3_checkpoint_or_the_users_own_choice_keeps_what_was_asked(project: Path) -> None:
    out, params = compose(project, PHI3)
    assert "Phi-4-mini" not in out and params["openvino"]["int4"]["group_size"] == 128
    out, params = compose(project, {**PHI3, "partial_rotary_factor": 0.75}, "openvino=default")
    assert "Phi-4-mini" not in out and params["openvino"]["int4"]["group_size"] == 128
