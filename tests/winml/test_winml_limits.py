"""Issue 30.1: a Windows ML NPU package carries its IR's limits and every package a compiled-model cache folder.

Packages wrap the small real IRs of tests/winml/test_winml.py (``small_artifacts``; the NPU one with conf/npu's run
settings in its ``npu_config.json``). The emulated runs (the plugin's CPU with the Intel vendor emulated) are in
test_winml.py's slow tests, which run the validate stage's own cell.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.core.config import ValidateConfig
from pipeline.core.errors import StageError
from pipeline.core.workspace import Workspace
from pipeline.winml import export, limits, package, runtime, validate
from tests.winml.test_winml import NPU_SETTINGS, build, edit_json, llm_shaped_ir


@pytest.fixture(scope="module")
def small_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_winml.py's small IRs: the OpenVINO one, and the NPU one with conf/npu's npu_config.json."""
    artifacts = tmp_path_factory.mktemp("winml_limits") / "artifacts"
    llm_shaped_ir(artifacts / "openvino" / "int4")
    llm_shaped_ir(artifacts / "npu" / "int4", npu_settings=NPU_SETTINGS)
    return artifacts


def genai(folder: Path) -> dict:
    return json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))


def built_the_old_way(folder: Path) -> None:
    """What export_winml wrote before issue 30: device and stateful flag only, the model's whole context, no limits."""
    config = genai(folder)
    config["model"]["decoder"]["session_options"]["provider_options"] = [
        {"OpenVINO": {"device_type": "NPU", "enable_causallm": "True"}}
    ]
    config["model"]["context_length"] = config["search"]["max_length"] = 4096
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
    (folder / limits.NPU_CONFIG).unlink()


def test_the_npu_package_carries_its_irs_limits_as_load_config_and_the_context_they_hold(
    small_artifacts: Path, tmp_path: Path
) -> None:
    folder = build(small_artifacts, "npu", tmp_path / "winml")
    config = genai(folder)
    options = limits.package_options(config)
    assert json.loads(options["load_config"]) == {"NPU": {k: str(v) for k, v in NPU_SETTINGS.items()}}
    assert options["cache_dir"] == "ov_cache" and options["device_type"] == "NPU"
    assert config["model"]["context_length"] == config["search"]["max_length"] == 1024 + 128
    assert json.loads((folder / limits.NPU_CONFIG).read_text(encoding="utf-8")) == NPU_SETTINGS  # the IR's, copied
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["npu_run_settings"] == NPU_SETTINGS
    assert validate.package_problem(folder, "NPU", manifest) is None
    for name in ("gpu", "cpu"):  # no NPU limits there: the model's context, the cache folder all the same
        other = genai(build(small_artifacts, name, tmp_path / "winml"))
        assert "load_config" not in limits.package_options(other) and limits.package_options(other)["cache_dir"]
        assert other["model"]["context_length"] == json.loads((small_artifacts / "openvino/int4/config.json").read_text(encoding="utf-8"))[
            "max_position_embeddings"
        ]


@pytest.mark.parametrize(
    "edit, message",
    [
        (built_the_old_way, "the package has no npu_config.json (built before it carried the NPU limits)"),
        (
            lambda f: edit_json(f / limits.NPU_CONFIG, lambda d: d.update(MAX_PROMPT_LEN=2048)),
            "genai_config load_config",
        ),
        (
            lambda f: edit_json(f / "genai_config.json", lambda d: d["model"].update(context_length=4096)),
            "genai_config context_length 4096 / max_length 1152, expected 1152 (MAX_PROMPT_LEN 1024 + MIN_RESPONSE_LEN 128)",
        ),
    ],
)
def test_validation_fails_the_cell_of_a_package_whose_limits_disagree_with_its_ir(
    small_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit, message: str
) -> None:
    """A package built the old way, or edited, is a failed cell with one line; nothing is loaded."""
    folder = build(small_artifacts, "npu", tmp_path / "winml")
    edit(folder)
    status = runtime.PluginStatus("1.8.1", ["CPU"])  # as on an Intel CPU: the NPU cell would run by override
    monkeypatch.setenv("DVC_STAGE", "validate_winml@npu")  # recorded, not raised: the stage under dvc repro
    ws = Workspace(out=folder.parent, metrics=tmp_path / "m")
    metrics = validate.run("npu", ValidateConfig.from_conf(prompts=["x"]), ws, status=status)
    cell = metrics["cells"]["NPU"]
    assert (metrics["status"], cell["status"]) == ("failed", "failed")
    assert cell["reason"].startswith("[winml npu] the package, its npu_config.json and its IR disagree: ")
    assert message in cell["reason"] and "\n" not in cell["reason"] and cell["load_s"] is None


def test_an_old_npu_package_also_fails_its_structural_check(small_artifacts: Path, tmp_path: Path) -> None:
    folder = build(small_artifacts, "npu", tmp_path / "winml")
    built_the_old_way(folder)
    hashes = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["source_ir"]["files_sha256"]
    with pytest.raises(StageError) as exc:
        export.verify_package(folder, "NPU", hashes)
    assert "provider_options" in str(exc.value) and "'cache_dir': 'ov_cache'" in str(exc.value)


def test_a_prompt_over_the_npu_packages_limit_is_one_line(small_artifacts: Path, tmp_path: Path) -> None:
    folder = build(small_artifacts, "npu", tmp_path / "winml")
    validate.check_prompts(folder, "NPU", [[1] * 1024])  # at the limit: fine
    with pytest.raises(validate.CellError) as exc:
        validate.check_prompts(folder, "NPU", [[1] * 5, [1] * 1025])
    line = str(exc.value)
    assert line.startswith("the prompt has 1025 tokens but this NPU package takes at most 1024 (MAX_PROMPT_LEN")
    assert "\n" not in line
    validate.check_prompts(build(small_artifacts, "cpu", tmp_path / "winml"), "CPU", [[1] * 5000])  # no NPU limit


def test_the_user_cache_folder_is_per_package_ir_and_device_and_outside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(limits.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    folder = tmp_path / "artifacts" / "winml" / "npu"
    one = limits.user_cache_dir(folder, "NPU", {"openvino_model.xml": "a", "openvino_model.bin": "b"})
    assert one == limits.user_cache_dir(folder, "NPU", {"openvino_model.bin": "b", "openvino_model.xml": "a"})
    assert one != limits.user_cache_dir(folder, "CPU", {"openvino_model.xml": "a", "openvino_model.bin": "b"})
    assert one != limits.user_cache_dir(folder, "NPU", {"openvino_model.xml": "a", "openvino_model.bin": "c"})
    assert folder not in one.parents and one.name.startswith("npu-npu-")
    assert one.parent == (tmp_path / ("local" if os.name == "nt" else "xdg") / "aipc" / "ov_cache")
    monkeypatch.setenv(limits.CACHE_ENV, str(tmp_path / "mine"))
    assert limits.user_cache_dir(folder, "NPU", {}).parent == tmp_path / "mine"


def test_package_genai_config_without_npu_settings_keeps_the_models_context() -> None:
    config = {"num_attention_heads": 4, "hidden_size": 256, "max_position_embeddings": 4096, "num_hidden_layers": 2,
              "vocab_size": 32064, "model_type": "phi3"}
    written = package.genai_config(config, {}, (["input_ids"], ["logits"]), "GPU")
    assert written["model"]["context_length"] == written["search"]["max_length"] == 4096
    npu = package.genai_config(config, {}, (["input_ids"], ["logits"]), "NPU", {"MAX_PROMPT_LEN": 512, "MIN_RESPONSE_LEN": 64})
    assert npu["model"]["context_length"] == npu["search"]["max_length"] == 576


def test_a_package_loaded_in_place_still_verifies(small_artifacts: Path, tmp_path: Path) -> None:
    """Its compiled-model cache (``ov_cache/``) is the user's, not the package's; anything else added still fails."""
    from pipeline.core.verify import verify_folder

    folder = build(small_artifacts, "cpu", tmp_path / "winml")
    (folder / limits.PACKAGE_CACHE).mkdir()
    (folder / limits.PACKAGE_CACHE / "5462704784853406856.blob").write_bytes(b"compiled")
    verify_folder(folder, lock_file=tmp_path / "no.lock")
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(StageError, match="extra.bin is not listed in"):
        verify_folder(folder, lock_file=tmp_path / "no.lock")
