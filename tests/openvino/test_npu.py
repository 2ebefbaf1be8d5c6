"""NPU target: layout rules, honest deferral without an NPU, the blob branch with a faked NPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.workspace import Workspace
from pipeline.core.config import ConfigError, ModelConfig, compose
from pipeline.openvino.config import NpuVariantConfig
from pipeline.hub import download
from pipeline.openvino import export_npu, generation, npu_lane, validate
from pipeline.openvino.ir_inspect import inspect_ir
from pipeline.validation import devices, matrix


class FakeCore:
    """Stands in for openvino.Core: a fixed device list and properties."""

    def __init__(self, names: list[str]) -> None:
        self.available_devices = names

    def get_property(self, device: str, name: str) -> str:
        return {"FULL_DEVICE_NAME": f"Intel(R) AI Boost ({device})", "NPU_DRIVER_VERSION": "1.10.0",
                "NPU_COMPILER_VERSION": "7.4"}[name]


def no_npu() -> dict[str, devices.DeviceStatus]:
    return devices.detect(FakeCore(["CPU"]))


def with_npu() -> dict[str, devices.DeviceStatus]:
    return devices.detect(FakeCore(["CPU", "NPU"]))


@pytest.mark.parametrize("override", ["npu.int4.sym=false", "npu.int4.ratio=0.6", "npu.int4.group_size=64"])
def test_requests_the_npu_cannot_run_fail_with_one_line(override: str) -> None:
    with pytest.raises(ConfigError) as exc:
        compose([override])
    assert "the NPU needs int4 symmetric weights, ratio 1.0 and group_size 128 or -1" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_device_detection_gives_versions_or_reasons() -> None:
    present = with_npu()["NPU"]
    assert present.available and present.driver == "1.10.0" and present.compiler == "7.4"
    absent = no_npu()
    assert not absent["NPU"].available and absent["NPU"].reason
    assert not absent["GPU"].available and absent["GPU"].reason
    assert absent["CPU"].available


def test_silent_fallback_is_not_a_pass() -> None:
    assert devices.executed_device("NPU", "CPU") == (False, "CPU")
    assert devices.executed_device("CPU", "CPU")[0]
    assert devices.executed_device("AUTO", "CPU")[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("npu") / "model"
    download.run(ModelConfig.preset("tiny"), out)
    return out


@pytest.fixture(scope="module")
def deferred(tiny_model: Path) -> tuple[Path, dict]:
    out_root = tiny_model.parent / "npu"
    manifest = export_npu.run("int4", NpuVariantConfig.from_conf(), Workspace(model=tiny_model, out=out_root), status=no_npu())
    return out_root / "int4", manifest


def test_npu_layout_is_int4_sym_everywhere_but_embeddings_and_head(deferred) -> None:
    folder, manifest = deferred
    summary = inspect_ir(folder / "openvino_model.xml")
    assert summary["nncf"]["weight_compression"]["mode"] == "int4_sym"
    assert summary["nncf"]["weight_compression"]["ratio"] == 1.0
    for layer in summary["layers"]:
        kept_8bit = "embed" in layer["layer"] or "lm_head" in layer["layer"]
        assert layer["precision"] == ("int8" if kept_8bit else "int4"), layer
    assert summary["weight_layers"]["int4"] == 8  # 2 layers x (qkv, o, gate_up, down)
    assert json.loads((folder / "npu_config.json").read_text(encoding="utf-8"))["MAX_PROMPT_LEN"] == 1024


def test_without_npu_the_blob_is_deferred_not_claimed(deferred) -> None:
    folder, manifest = deferred
    assert manifest["npu_blob"]["blob"] == export_npu.DEFERRED
    assert not (folder / export_npu.BLOB).exists()
    assert manifest["devices"]["NPU"]["available"] is False
    assert manifest["npu_blob"]["npuw_blob_check"].startswith("not run: "), "the fixture leaves the NPUW check off"


def test_without_npu_the_blob_round_trips_through_npuw_on_cpu_and_is_not_shipped(
        tiny_model: Path, tmp_path: Path) -> None:
    manifest = export_npu.run("int4", NpuVariantConfig.from_conf(), Workspace(model=tiny_model, out=tmp_path / "npu"), status=no_npu(),
                              npuw_max_size_mb=1000)
    check = manifest["npu_blob"]["npuw_blob_check"]
    assert check["compiled_by"] == npu_lane.BLOB_BACKEND and "NPU blob" not in check["compiled_by"]
    assert check["same_tokens_after_reload"] is True and len(check["tokens"]) > 0
    assert manifest["timings"]["npuw_blob_bytes"] > folder_size_of_weights(tmp_path / "npu" / "int4"), "weights inside"
    assert manifest["timings"]["npuw_blob_load_from_blob_s"] >= 0
    shipped = sorted(p.name for p in (tmp_path / "npu" / "int4").iterdir())
    assert not [n for n in shipped if n.endswith(".blob")], "a CPU-backend blob is never shipped as the NPU blob"
    assert manifest["npu_blob"]["blob"] == export_npu.DEFERRED


def folder_size_of_weights(folder: Path) -> int:
    return (folder / "openvino_model.bin").stat().st_size // 2


def test_an_over_long_prompt_on_the_npu_lane_is_one_line(deferred) -> None:
    import openvino_genai as ov_genai

    from pipeline.core.errors import StageError

    folder, _ = deferred
    settings = json.loads((folder / "npu_config.json").read_text(encoding="utf-8"))
    pipe = ov_genai.LLMPipeline(str(folder), "NPU", **settings, **npu_lane.NPUW_CPU)
    assert npu_lane.generate_ids(pipe, [1, 450, 4996] * 10, 4), "a prompt within the limit generates"
    with pytest.raises(StageError) as exc:
        npu_lane.generate_ids(pipe, [450] * (settings["MAX_PROMPT_LEN"] + 1), 4)
    message = str(exc.value)
    assert "\n" not in message and f"{settings['MAX_PROMPT_LEN'] + 1} tokens" in message
    assert f"at most {settings['MAX_PROMPT_LEN']} (MAX_PROMPT_LEN)" in message and "max_prompt_len=" in message


def test_with_an_npu_the_stage_compiles_a_blob_and_times_the_reload(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_pipeline(model_dir: Path, device: str, properties: dict) -> object:
        calls.append((device, dict(properties)))
        if properties.get("EXPORT_BLOB") == "YES":
            Path(properties["BLOB_PATH"]).write_bytes(b"compiled")
        return object()

    monkeypatch.setattr(export_npu, "load_llm_pipeline", fake_pipeline)
    manifest = export_npu.run("int4", NpuVariantConfig.from_conf(), Workspace(model=tiny_model, out=tmp_path / "npu"), status=with_npu())
    (device, first), (_, second) = calls
    assert device == "NPU" and first["EXPORT_BLOB"] == "YES" and first["CACHE_MODE"] == "OPTIMIZE_SPEED"
    assert first["MAX_PROMPT_LEN"] == 1024 and "EXPORT_BLOB" not in second and second["BLOB_PATH"] == first["BLOB_PATH"]
    blob = manifest["npu_blob"]
    assert blob["blob"] == export_npu.BLOB and blob["npu_driver"] == "1.10.0"
    assert "skips_compilation" in blob and not {"compile_s", "load_from_blob_s"} & set(blob), "no timings in the output"
    assert {"compile_s", "load_from_blob_s"} <= set(manifest["timings"]), "they go to the run log"
    assert export_npu.BLOB in manifest["files"]


def test_validation_without_npu_skips_the_npu_cell_and_runs_a_labelled_cpu_stand_in(deferred) -> None:
    folder, _ = deferred
    skipped, stand_in = matrix.plan_cells(["NPU"], no_npu(), cpu_stand_in=True)
    assert skipped.column == "NPU" and skipped.skip_reason == no_npu()["NPU"].reason
    assert stand_in.column == matrix.STAND_IN and stand_in.device == "CPU" and stand_in.stand_in_for == "NPU"
    assert stand_in.note.startswith("no NPU: ")
    assert matrix.plan_cells(["NPU"], no_npu(), cpu_stand_in=False) == [skipped]
    (on_npu,) = matrix.plan_cells(["NPU"], with_npu(), cpu_stand_in=True)
    assert on_npu.device == "NPU" and on_npu.skip_reason is None
    settings = generation.device_properties(folder, "NPU")
    assert settings["GENERATE_HINT"] == "FAST_COMPILE" and settings["MAX_PROMPT_LEN"] == 1024
    assert "GENERATE_HINT" not in generation.device_properties(folder, "CPU")


def test_compiling_a_deferred_artifact_needs_an_npu(deferred, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core.errors import StageError

    folder, _ = deferred
    absent = no_npu()
    monkeypatch.setattr(devices, "detect", lambda core=None: absent)
    with pytest.raises(StageError, match="no NPU on this machine"):
        export_npu.compile_deferred(folder)


def test_compiling_a_read_only_deferred_artifact_writes_writable_files(
        deferred, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import stat

    folder = tmp_path / "npu" / "int4"
    shutil.copytree(deferred[0], folder)
    for path in folder.iterdir():  # as DVC's cache links leave them (read-only; NTFS hard links share the flag)
        path.chmod(0o444)

    def fake_pipeline(model_dir: Path, device: str, properties: dict) -> object:
        if properties.get("EXPORT_BLOB") == "YES":
            Path(properties["BLOB_PATH"]).write_bytes(b"compiled")
        return object()

    monkeypatch.setattr(export_npu, "load_llm_pipeline", fake_pipeline)
    present = with_npu()
    monkeypatch.setattr(devices, "detect", lambda core=None: present)
    facts = export_npu.compile_deferred(folder)
    assert facts["blob"] == export_npu.BLOB and (folder / export_npu.BLOB).read_bytes() == b"compiled"
    not_writable = [p.name for p in folder.iterdir() if not p.stat().st_mode & stat.S_IWUSR]
    assert not_writable == [], f"copied with the cache's read-only flag (Windows refuses to replace them): {not_writable}"
