"""Per-layer overrides (issue 21): ``keep_float`` keeps named layers out of int4/int8, checked on the IR's layers."""

from __future__ import annotations

import json

import pytest

from pipeline.core.workspace import Workspace
from pipeline.core.config import ConfigError, ModelConfig, compose
from pipeline.hub import download
from pipeline.openvino import export as export_openvino
from pipeline.openvino.config import OpenVinoVariantConfig
from pipeline.openvino.ir_inspect import kept_float_problems

DOWN_PROJ = r".*mlp\.down_proj.*"


@pytest.fixture(scope="module")
def int4_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, int]:
    """The tiny model's int4 IR (asym, group 64, ratio 1: the Phi-4 presets' int4) without and with down_proj kept."""
    root = tmp_path_factory.mktemp("keep_float")
    model_dir = root / "artifacts" / "model"
    download.run(ModelConfig.preset("tiny"), model_dir)
    plain = OpenVinoVariantConfig.from_conf(group_size=64, ratio=1.0, sym=False)
    kept = OpenVinoVariantConfig.from_conf(group_size=64, ratio=1.0, sym=False, keep_float=[DOWN_PROJ])
    a = export_openvino.run("int4", plain, Workspace(model=model_dir, out=root / "plain"), base_dir=None)
    b = export_openvino.run("int4", kept, Workspace(model=model_dir, out=root / "kept"), base_dir=None)
    layers = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    return a, b, layers


def test_keep_float_moves_exactly_the_named_layers_out_of_int4(int4_pair: tuple[dict, dict, int]) -> None:
    plain, kept, num_layers = int4_pair
    before, after = plain["weight_layers"], kept["weight_layers"]
    assert after["float"] == before["float"] + num_layers and after["int4"] == before["int4"] - num_layers
    assert after["total"] == before["total"] and after["int8"] == before["int8"]
    down = [layer for layer in kept["layers"] if "mlp.down_proj" in layer["layer"]]
    assert len(down) == num_layers and {layer["precision"] for layer in down} == {"float"}
    assert {layer["precision"] for layer in plain["layers"] if "mlp.down_proj" in layer["layer"]} == {"int4"}
    assert kept["parameters"]["keep_float"] == [DOWN_PROJ]  # recorded in the manifest


def test_the_tied_embedding_stays_one_int8_matrix_and_the_manifest_says_so(int4_pair: tuple[dict, dict, int]) -> None:
    """Tied checkpoint: the embedding's Gather and the LM head's MatMul read one constant, at NNCF's backup int8."""
    tie = int4_pair[0]["tied_embeddings"]
    assert tie["checkpoint_tied"] and tie["shared_constant"]
    assert (tie["embedding"]["precision"], tie["lm_head"]["precision"]) == ("int8", "int8")
    assert tie["lm_head"]["layer"].startswith("__module.lm_head")
    counts = int4_pair[0]["weight_layers"]
    assert counts["int8"] == 2  # the one shared matrix, counted once per consumer (Gather and MatMul)


def test_a_request_the_ir_ignores_is_named() -> None:
    summary = {"layers": [{"layer": "__module.model.layers.0.mlp.down_proj/aten::linear/MatMul", "precision": "int4"}]}
    assert "1 layers compressed" in kept_float_problems(summary, [DOWN_PROJ])[0]
    assert "names no weight layer" in kept_float_problems(summary, [r".*lm_head.*"])[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+openvino.fp16.keep_float=[x]", "keep_float applies to int4/int8 compression"),
        ("openvino.int4.keep_float=['(']", "keep_float pattern '(' is not a regular expression"),
    ],
)
def test_bad_keep_float_fails_at_load_time_with_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        compose(["model=phi4-mini-instruct", override])
    assert message in str(exc.value) and "\n" not in str(exc.value)
