"""Every heavy stage checks RAM before it writes anything, against estimates scaled from issue 20's measurements.

A small machine is faked with ``AIPC_ASSUME_RAM_GB``; a full-size checkpoint or artifact with sparse files (their
size is what the estimates scale with; no disk is used).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.workspace import Workspace
from pipeline.core import memory, resources
from pipeline.core.config import ModelConfig, ValidateConfig, build, compose
from pipeline.core.errors import StageError
from pipeline.hub import download
from pipeline.openvino import validate as validate_openvino
from pipeline.validation import matrix, reference

GIB = 2**30
CHECKPOINT = 7.12 * GIB  # the full-size Phi-3-mini-shaped checkpoint issue 20 measured on
# issue 20's peaks (GiB) and the input each is scaled from: the checkpoint, or the artifact's size (resources.py)
MEASURED = [
    ("export_onnx", "dml_int4", CHECKPOINT, 2.94),  # the lean int4 pass (benchmarks/onnx_memory.py)
    ("export_onnx", "cpu_int4", CHECKPOINT, 5.54),
    ("export_onnx_builder", "dml_int4", CHECKPOINT, 9.6),  # the builder's own pass (issue 20)
    ("export_onnx_builder", "cpu_int4", CHECKPOINT, 18.9),
    ("validate_onnx", "cpu_int4", 2.54 * GIB, 7.77),  # CPU cells without the arena, 4096-token window included
    ("validate_onnx", "dml_int4", 1.98 * GIB, 7.89),
    ("export_npu_lib_whole", "int4", CHECKPOINT, 16.6),
    ("export_npu_lib_whole", "int8", CHECKPOINT, 20.2),
    ("export_npu_lib_whole", "fp16", CHECKPOINT, 16.1),
    ("export_npu_lib", "int4", CHECKPOINT, 3.30),  # layer by layer: benchmarks/npu_lib_memory.py
    ("export_npu_lib", "int8", CHECKPOINT, 4.81),
    ("export_npu_lib", "fp16", CHECKPOINT, 7.94),
    ("validate_npu_lib", "int4", 2259686903, 5.81),  # the artifact folder's bytes
    ("validate_npu_lib", "int8", 4120887611, 7.78),
    ("validate_npu_lib", "fp16", 7.30 * GIB, 11.68),
    ("validate_onnx", "dml_fp16", CHECKPOINT, 17.9),  # a lower bound (benchmarks/results/onnx_memory.json)
    ("validate_winml", "npu", 1.932 * GIB, 4.81),  # the whole run of 2026-12-02 on an Intel CPU
    ("validate_winml", "gpu", 2.589 * GIB, 6.04),
]


def sparse(folder: Path, name: str, size: float) -> Path:
    """``folder`` holding one sparse file of ``size`` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "wb") as f:
        f.truncate(int(size))
    return folder


@pytest.fixture(autouse=True)
def checks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIPC_SKIP_RESOURCE_CHECK", raising=False)
    monkeypatch.delenv(resources.ASSUME_RAM_ENV, raising=False)


# the lean path (Linux): the whole default `dvc repro`, benchmarks/results/full_pipeline-2026-12-02.json, IR sizes from the manifests
MEASURED_LEAN = [  # benchmarks/full_pipeline.py (2026-12-02): the f32 pass stateless, and for fp16 in runs of layers
    ("validate", "int4", 2.589 * GIB, 6.19),
    ("validate", "int8", 3.569 * GIB, 7.02),
    ("validate", "fp16", 7.125 * GIB, 7.62),
    ("validate_npu", "int4", 1.932 * GIB, 5.56),
    ("validate_onnx", "dml_int4", 1.98 * GIB, 8.11),
]


@pytest.mark.parametrize(("stage", "variant", "size", "peak_gib"), MEASURED_LEAN)
def test_lean_estimates_cover_the_whole_pipeline_run(
    stage: str, variant: str, size: float, peak_gib: float, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources.sys, "platform", "linux")
    need = resources.stage_ram(stage, variant, sparse(tmp_path, "openvino_model.bin", size)) / GIB
    assert peak_gib <= need <= 1.15 * peak_gib + 0.3, (stage, variant, need)
    monkeypatch.setattr(resources.sys, "platform", "win32")  # not measured off Linux: never expected to need less
    assert resources.stage_ram(stage, variant, tmp_path) / GIB >= need


@pytest.mark.parametrize(("stage", "variant", "size", "peak_gib"), MEASURED)
def test_estimates_cover_the_measured_peaks(
    stage: str, variant: str, size: float, peak_gib: float, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources.sys, "platform", "win32")  # issue 20 measured before validate handed pages back
    need = resources.stage_ram(stage, variant, sparse(tmp_path, "model.safetensors", size)) / GIB
    assert peak_gib <= need <= 1.15 * peak_gib + 0.3, (stage, variant, need)


def test_a_16_gb_laptop_is_told_which_stages_will_not_fit(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = sparse(tmp_path / "model", "model.safetensors", CHECKPOINT)
    monkeypatch.setenv(resources.ASSUME_RAM_ENV, "12")  # 16 GB, a desktop and a browser open
    resources.check_stage_ram("reference", "float32", checkpoint)  # 1.1x the checkpoint: fits
    resources.check_stage_ram("export_onnx", "cpu_int4", checkpoint)  # the lean int4 pass: fits
    with pytest.raises(StageError) as refused:
        resources.check_stage_ram("export_onnx_builder", "cpu_int4", checkpoint)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("export_onnx_builder@cpu_int4 needs about 19.5 GiB of RAM but 12.0 GiB is available")


@pytest.mark.parametrize(("stage", "variant", "folder_gib", "runs"), [
    ("validate_onnx", "dml_int4", 1.98, False),  # 7.89 GiB alone, 8.11 GiB in the whole-pipeline run
    ("validate_onnx", "dml_fp16", 7.12, False),  # >= 17.9 GiB: a float32 copy of the weights on the CPU provider
    ("validate_npu_lib", "int4", 2.10, True),
    ("validate_npu_lib", "int8", 3.84, True),
    ("validate_npu_lib", "fp16", 7.30, False),  # 11.68 GiB
])
def test_a_full_size_stand_in_over_the_cap_is_skipped_with_one_line_and_a_target_cell_stops(
    stage: str, variant: str, folder_gib: float, runs: bool, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = sparse(tmp_path / "artifact", "model.bin", folder_gib * GIB)
    monkeypatch.setenv(resources.ASSUME_RAM_ENV, "64")  # plenty: only the cap decides
    cap = ValidateConfig.from_conf(prompts=["x"]).stand_in_max_ram_gib
    reason = resources.fit_cell_ram(stage, variant, folder, stand_in=True, cap_gib=cap)
    if runs:
        assert reason is None
    else:
        assert reason and "\n" not in reason and reason.startswith(f"not run here: the CPU stand-in of {stage}@{variant}")
        assert "validate.stand_in_max_ram_gib=8 GiB" in reason
        assert resources.fit_cell_ram(stage, variant, folder, stand_in=True, cap_gib=0) is None, "0 = no cap"
    monkeypatch.setenv(resources.ASSUME_RAM_ENV, "1")
    short = resources.fit_cell_ram(stage, variant, folder, stand_in=True, cap_gib=0)
    assert short and short.startswith(f"not run here: the CPU stand-in of {stage}@{variant} needs about"), "RAM short"
    with pytest.raises(StageError, match=rf"^{stage}@{variant} needs about .* but 1.0 GiB is available"):
        resources.fit_cell_ram(stage, variant, folder, stand_in=False, cap_gib=cap)  # on its target: stops


def test_unknown_variant_takes_the_stages_largest_estimate(tmp_path) -> None:
    checkpoint = sparse(tmp_path, "model.safetensors", GIB)
    assert resources.stage_ram("export_onnx", "cuda_int4", checkpoint) == resources.stage_ram(
        "export_onnx", "cpu_int4", checkpoint
    )


def test_reference_refuses_before_writing_anything(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = compose(["model=tiny"])
    model_dir = tmp_path / "model"
    download.run(build(ModelConfig, params["model"]), model_dir)
    monkeypatch.setenv(resources.ASSUME_RAM_ENV, "0.01")  # the tiny model: 1.1x its 19 MB + 0.3 GiB of runtime
    with pytest.raises(StageError, match=r"^reference@float32 needs about 327 MiB of RAM but 10 MiB is available"):
        reference.run(build(ValidateConfig, params["validate"]), model_dir, tmp_path / "reference")
    assert not (tmp_path / "reference").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_validation_refuses_before_reading_the_reference_or_writing_metrics(tmp_path, monkeypatch) -> None:
    ir = sparse(tmp_path / "openvino" / "fp16", "openvino_model.bin", CHECKPOINT)
    (ir / "manifest.json").write_text(json.dumps({"parameters": {"weight_format": "fp16"}}), encoding="utf-8")
    monkeypatch.setenv(resources.ASSUME_RAM_ENV, "6")
    cfg = build(ValidateConfig, compose([])["validate"])
    target = validate_openvino.openvino_target("fp16", cfg, Workspace(out=tmp_path / "openvino"))
    monkeypatch.setattr(resources.sys, "platform", "linux")  # the lean path: the IR's pages handed back
    from pipeline.openvino import numerics

    monkeypatch.setattr(numerics, "cpu_default_compute", lambda core=None: "bf16")  # any CPU CI runs on
    need = resources.stage_ram("validate", "fp16", ir) / GIB  # the other cells' row (the CPU cell is skipped)
    with pytest.raises(StageError, match=rf"^validate@fp16 needs about {need:.1f} GiB of RAM but 6\.0 GiB"):
        validate_openvino.run(target, cfg, Workspace(reference=tmp_path / "missing.json", metrics=tmp_path / "metrics"), status={})
    assert not (tmp_path / "metrics").exists()


def test_an_fp16_ir_whose_f32_widened_weights_do_not_fit_skips_its_cpu_cells_and_the_stage_goes_on(
    tmp_path, monkeypatch
) -> None:
    """OpenVINO's CPU plugin widens f16 weights to f32 for the cell's answers at pinned f32 (and at the default
    numerics of AVX2 laptops): 14.4 GiB for Phi-3-mini's 7.1 GiB fp16 IR, measured here with f32 pinned. On a 16 GB
    laptop that cell cannot run, which is what the report must say; the stage used to be refused whole (issue 29.6:
    no stage of the default full-size pipeline is refused on a 16 GB laptop)."""
    from pipeline.openvino import numerics

    ir = sparse(tmp_path / "openvino" / "fp16", "openvino_model.bin", 7.125 * GIB)
    (ir / "manifest.json").write_text(json.dumps({"parameters": {"weight_format": "fp16"}}), encoding="utf-8")
    cfg = build(ValidateConfig, compose([])["validate"])
    target = validate_openvino.openvino_target("fp16", cfg, Workspace(out=tmp_path / "openvino"))
    ws = Workspace(reference=tmp_path / "missing.json", metrics=tmp_path / "metrics")
    monkeypatch.setattr(resources.sys, "platform", "linux")
    monkeypatch.setenv(resources.ASSUME_RAM_ENV, "12")  # a 16 GB laptop with a browser open
    monkeypatch.setattr(numerics, "cpu_default_compute", lambda core=None: "f32")
    assert "CPU" in target.devices
    reason = validate_openvino.check_ram(target, "fp16")
    assert reason is not None and "\n" not in reason
    assert reason.startswith(
        "not run here: the CPU cell of validate@fp16 (its answers at f32 widen the f16 weights to f32) needs about "
        "15.3 GiB of RAM but 12.0 GiB is available"
    )
    with pytest.raises(FileNotFoundError, match="missing.json"):  # past the RAM check: the reference stops it now
        validate_openvino.run(target, cfg, ws, status={})
    for plan, on_cpu in [(matrix.CellPlan("CPU", "CPU"), True), (matrix.CellPlan("GPU", "GPU"), False),
                         (matrix.CellPlan("NPU", "NPU", backend="CPU"), True),
                         (matrix.CellPlan("CPU stand-in", "CPU", stand_in_for="GPU"), True)]:
        assert validate_openvino.on_the_cpu(plan) is on_cpu, plan
    monkeypatch.setenv(resources.ASSUME_RAM_ENV, "16")  # where it fits, every cell runs
    assert validate_openvino.check_ram(target, "fp16") is None


def test_openvino_float_export_without_the_native_trimmer_expects_the_whole_checkpoint(tmp_path, monkeypatch) -> None:
    from pipeline.openvino import lean

    checkpoint = sparse(tmp_path, "model.safetensors", CHECKPOINT)
    monkeypatch.setattr(lean, "pages_can_be_trimmed", lambda: True)  # Linux
    monkeypatch.setattr(memory, "_pagetrim", object())
    native = {kind: lean.needs(kind, "int4", checkpoint)[0] / GIB for kind in ("export", "compress")}
    monkeypatch.setattr(memory, "_pagetrim", None)  # no C compiler at install: the Python trimmer
    python = {kind: lean.needs(kind, "int4", checkpoint)[0] / GIB for kind in ("export", "compress")}
    assert native["export"] == pytest.approx(0.25 * 7.12 + 1.0)
    assert python["export"] == pytest.approx(1.15 * 7.12 + 1.0)  # save_model holds the GIL: nothing is trimmed
    assert python["compress"] == native["compress"]  # NNCF lets the Python thread run between weights


def test_validation_tells_the_lean_path_from_the_plain_one(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    ir = sparse(tmp_path, "openvino_model.bin", CHECKPOINT)
    monkeypatch.setattr(resources.sys, "platform", "linux")
    lean = resources.stage_ram("validate", "int4", ir) / GIB
    monkeypatch.setattr(resources.sys, "platform", "darwin")  # no madvise: the mapped IR stays resident
    plain = resources.stage_ram("validate", "int4", ir) / GIB
    monkeypatch.setattr(resources.sys, "platform", "win32")  # its measured private memory (core/ram_windows.py)
    windows = resources.stage_ram("validate", "int4", ir) / GIB
    assert lean == pytest.approx(2.3 * 7.12 + 0.3, abs=0.01)
    assert plain == pytest.approx(3.05 * 7.12 + 0.3, abs=0.01)
    assert windows == pytest.approx(2.3 * 7.12 + 0.5, abs=0.01)


def test_windows_ml_validation_refuses_before_loading_the_package(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.winml import runtime
    from pipeline.winml import validate as validate_winml

    package = sparse(tmp_path / "winml" / "npu", "openvino_model.bin", 2.2 * GIB)  # Phi-3-mini's NPU int4 IR
    (package / "manifest.json").write_text(json.dumps({"parameters": {"device_type": "NPU"}}), encoding="utf-8")
    monkeypatch.setenv(resources.ASSUME_RAM_ENV, "4")
    offered = runtime.PluginStatus(version="1.8.1", devices=["CPU", "GPU", "NPU"])  # an Intel laptop's plugin
    cfg = build(ValidateConfig, compose([])["validate"])
    with pytest.raises(StageError, match=r"^validate_winml@npu needs about 5\.6 GiB of RAM but 4\.0 GiB"):
        ws = Workspace(out=tmp_path / "winml", reference=tmp_path / "missing.json", metrics=tmp_path / "metrics")
        validate_winml.run("npu", cfg, ws, status=offered)
    assert not (tmp_path / "metrics").exists()
