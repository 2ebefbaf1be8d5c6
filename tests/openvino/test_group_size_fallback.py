"""Group-size fallback on a model whose hidden size 128 does not divide (576, as SmolLM2-135M in Phi-3 layout).

Every error's suggested fix is read from the message and applied through the composed config, then the export
runs with it: a suggestion that does not compose or does not export fails here (issue 34, item 4).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, ModelConfig, build, compose
from pipeline.core.workspace import Workspace
from pipeline.hub import download
from pipeline.openvino import export as export_openvino
from pipeline.openvino import export_npu
from pipeline.openvino.config import NpuVariantConfig, OpenVinoVariantConfig
from pipeline.validation import devices

TINY = Path(__file__).resolve().parents[2] / "pipeline" / "assets" / "tiny_phi3"
SUGGESTION = re.compile(r"\b((?:openvino|npu)\.\w+\.\w+)=(-?\w+)")


class NoNpu:
    """Stands in for openvino.Core without an NPU."""

    available_devices = ["CPU"]

    def get_property(self, device: str, name: str) -> str:
        return "CPU"


@pytest.fixture(scope="module")
def model_576(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Phi-3 with hidden 576, 9 heads / 3 KV heads, intermediate 1536, random weights, Phi-3 tokenizer."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    root = tmp_path_factory.mktemp("hidden576")
    checkpoint = root / "checkpoint"
    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=32064, hidden_size=576, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=4096, bos_token_id=1, eos_token_id=32000,
        pad_token_id=32000, tie_word_embeddings=True,
    )
    Phi3ForCausalLM(config).to(torch.float16).save_pretrained(checkpoint, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / name, checkpoint / name)
    model_dir = root / "artifacts" / "model"
    download.run(ModelConfig.preset("local", name="hidden576", local_path=str(checkpoint)), model_dir)
    return model_dir


def suggestions(message: str) -> list[tuple[str, str]]:
    """The ``key=value`` overrides a one-line error suggests, in order."""
    assert "\n" not in message
    found = SUGGESTION.findall(message)
    assert found, f"no override suggested in: {message}"
    return found


def openvino_int4(overrides: list[str]) -> OpenVinoVariantConfig:
    return build(OpenVinoVariantConfig, compose(overrides)["openvino"]["int4"], "openvino.int4")


def npu_int4(overrides: list[str]) -> NpuVariantConfig:
    return build(NpuVariantConfig, compose(overrides)["npu"]["int4"], "npu.int4")


def said(capsys: pytest.CaptureFixture) -> list[str]:
    """The progress lines about the group size (without their ``[aipc HH:MM:SS]`` stamp)."""
    lines = capsys.readouterr().err.splitlines()
    return [line.split("] ", 1)[1] for line in lines if "does not divide" in line and line.startswith("[aipc ")]


def int4_groups(ir_dir: Path) -> set[int]:
    """The group sizes of the IR's int4 weights, read from their shapes ([out, groups, group]; 2-D: channel-wise)."""
    import openvino as ov

    shapes = [
        list(op.get_output_shape(0))
        for op in ov.Core().read_model(ir_dir / "openvino_model.xml").get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type() in (ov.Type.i4, ov.Type.u4)
    ]
    return {shape[-1] if len(shape) == 3 else -1 for shape in shapes}


def test_the_openvino_int4_default_adjusts_in_one_line(model_576: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = openvino_int4([])
    out = model_576.parent / "default"
    manifest = export_openvino.run("int4", cfg, Workspace(model=model_576, out=out), base_dir=None)
    lines = said(capsys)
    assert lines == [
        "group_size 128 does not divide hidden_size 576: NNCF compresses those layers with group 64 for 576-wide "
        "inputs (openvino.int4.group_size_fallback=adjust)"
    ]
    assert "'group_size_fallback_mode': 'adjust'" in manifest["nncf_rt_info"]["weight_compression"]["advanced_parameters"]
    assert int4_groups(out / "int4") == {64, 128}  # 64 where the input is 576 wide, 128 for down_proj's 1536


@pytest.mark.slow
def test_the_openvino_error_names_fixes_that_work(model_576: Path) -> None:
    refused = ["openvino.int4.group_size_fallback=error"]
    with pytest.raises(ConfigError) as exc:
        export_openvino.run("int4", openvino_int4(refused), Workspace(model=model_576, out=model_576.parent / "no"))
    message = str(exc.value)
    assert message.startswith("group_size 128 does not divide hidden_size 576: set openvino.int4.group_size=64")
    fixes = suggestions(message)
    assert fixes == [("openvino.int4.group_size", "64"), ("openvino.int4.group_size_fallback", "adjust")]
    for i, (key, value) in enumerate(fixes):
        cfg = openvino_int4([*refused, f"{key}={value}"])
        out = model_576.parent / f"openvino_fix{i}"
        manifest = export_openvino.run("int4", cfg, Workspace(model=model_576, out=out), base_dir=None)
        assert manifest["weight_layers"]["int4"] > 0, (key, value)
        assert int4_groups(out / "int4") == ({64} if value == "64" else {64, 128}), (key, value)


@pytest.mark.slow
def test_the_npu_adjust_override_composes_and_picks_channel_wise(
    model_576: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(ConfigError) as exc:
        export_npu.run("int4", npu_int4([]), Workspace(model=model_576, out=model_576.parent / "npu_no"),
                       status=devices.detect(NoNpu()))
    message = str(exc.value)
    assert "the NPU takes only group 128 or channel-wise" in message and "[32, 64]" not in message
    fixes = suggestions(message)
    assert fixes == [("npu.int4.group_size", "-1"), ("npu.int4.group_size_fallback", "adjust")]
    for i, (key, value) in enumerate(fixes):
        out = model_576.parent / f"npu_fix{i}"
        manifest = export_npu.run("int4", npu_int4([f"{key}={value}"]), Workspace(model=model_576, out=out),
                                  status=devices.detect(NoNpu()))
        compression = manifest["nncf_rt_info"]["weight_compression"]
        assert (compression["mode"], int(compression["group_size"])) == ("int4_sym", -1), (key, value)
        assert int4_groups(out / "int4") == {-1}, (key, value)
    assert said(capsys) == [
        "group_size 128 does not divide hidden_size 576: channel-wise int4 (group_size -1), the NPU's other layout "
        "(npu.int4.group_size_fallback=adjust)"
    ]


def test_a_group_the_npu_cannot_run_says_which_it_can() -> None:
    with pytest.raises(ConfigError) as exc:
        compose(["npu.int4.group_size=64"])
    assert "group_size 128 or -1 (channel-wise)" in str(exc.value)
    npu_int4(["npu.int4.group_size=-1"])  # the value it names composes


def test_checkpoint_metadata_is_what_the_fixture_says(model_576: Path) -> None:
    config = json.loads((model_576 / "config.json").read_text(encoding="utf-8"))
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (576, 1536, 2)
