"""Windows ML packages (pipeline/winml): layout, structural checks, reproducible bytes, the OpenVINO EP plugin's cells.

Fast tests wrap a small real OpenVINO IR (built here with ``openvino.opset13``: the I/O of an optimum-intel LLM IR,
input_ids / attention_mask / position_ids / beam_idx -> logits) and the tiny Phi-3's configs and tokenizer. The slow
ones wrap the tiny model's real int4 and NPU IRs and, where the plugin offers an Intel device, run the package with
onnxruntime-genai and compare its greedy tokens with openvino_genai's on the same IR.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import StageError
from pipeline.core.manifest import write_manifest
from pipeline.winml import export, package, runtime, validate
from pipeline.winml.config import WinmlVariantConfig
from tests.conftest import TINY_DIR, make_project, run_cmd

VARIANTS = {"npu": ("npu", "NPU"), "gpu": ("openvino", "GPU"), "cpu": ("openvino", "CPU")}


def llm_shaped_ir(folder: Path, vocab: int = 32064) -> None:
    """A real IR with the inputs and outputs of an exported Phi-3 (no weights worth the name), and its side files."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    ids = ops.parameter([-1, -1], ov.Type.i64, name="input_ids")
    mask = ops.parameter([-1, -1], ov.Type.i64, name="attention_mask")
    pos = ops.parameter([-1, -1], ov.Type.i64, name="position_ids")
    beam = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    table = ops.constant(np.linspace(-1, 1, vocab * 8, dtype=np.float32).reshape(vocab, 8))
    hidden = ops.gather(table, ops.add(ids, ops.multiply(pos, ops.constant(np.int64(0)))), ops.constant(0))
    logits = ops.matmul(hidden, ops.transpose(table, ops.constant([1, 0])), False, False)
    logits.output(0).get_tensor().set_names({"logits"})
    for p in (ids, mask, pos, beam):
        p.output(0).get_tensor().set_names({p.get_friendly_name()})
    model = ov.Model([logits], [ids, mask, pos, beam], "llm_shaped")
    folder.mkdir(parents=True)
    ov.save_model(model, str(folder / "openvino_model.xml"), compress_to_fp16=False)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TINY_DIR / name, folder / name)
    write_manifest(folder, stage="export_openvino", variant=folder.name, parameters={"weight_format": "int4"})


@pytest.fixture(scope="module")
def small_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifacts = tmp_path_factory.mktemp("winml") / "artifacts"
    for family in ("openvino", "npu"):
        llm_shaped_ir(artifacts / family / "int4")
    return artifacts


def build(artifacts: Path, name: str, out_root: Path | None = None) -> Path:
    source, device = VARIANTS[name]
    export.run(name, WinmlVariantConfig(source=source, device_type=device), artifacts, out_root)
    return (out_root or artifacts / "winml") / name


def test_each_variant_wraps_its_ir_in_one_epcontext_node_with_the_eps_genai_config(small_artifacts: Path) -> None:
    for name, (source, device) in VARIANTS.items():
        folder = build(small_artifacts, name)
        manifest = json.loads((folder / "manifest.json").read_text())
        node = manifest["structure"]["nodes"]
        assert [(n["op_type"], n["domain"]) for n in node] == [("EPContext", "com.microsoft")]
        attrs = node[0]["attributes"]
        assert (attrs["embed_mode"], attrs["ep_cache_context"], attrs["main_context"]) == (0, "openvino_model.xml", 1)
        assert attrs["source"] == "OpenVINOExecutionProvider" and attrs["DeviceClass"] == device
        assert node[0]["inputs"] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
        assert node[0]["outputs"] == ["logits"]
        decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        assert decoder["session_options"]["provider_options"] == [
            {"OpenVINO": {"device_type": device, "enable_causallm": "True"}}
        ]
        assert decoder["session_options"]["graph_optimization_level"] == "ORT_DISABLE_ALL"
        assert "beam_idx" not in decoder["inputs"] and decoder["outputs"] == {"logits": "logits"}
        source_files = json.loads((small_artifacts / source / "int4" / "manifest.json").read_text())["files"]
        for ir in package.IR_FILES:  # the IR is the source's, byte for byte, in a file of its own
            assert manifest["files"][ir]["sha256"] == source_files[ir]["sha256"]
            assert (folder / ir).stat().st_nlink == 1 and os.access(folder / ir, os.W_OK)
            assert not (folder / ir).samefile(small_artifacts / source / "int4" / ir)
        assert {"tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])


def test_the_same_ir_gives_the_same_bytes(small_artifacts: Path, tmp_path: Path) -> None:
    first = build(small_artifacts, "cpu", tmp_path / "a")
    second = build(small_artifacts, "cpu", tmp_path / "b")
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    assert (first / "openvino_model.onnx").read_bytes() == (second / "openvino_model.onnx").read_bytes()


def tampered(small_artifacts: Path, tmp_path: Path, edit) -> str:
    folder = build(small_artifacts, "gpu", tmp_path / "packages")
    edit(folder)
    hashes = json.loads((folder / "manifest.json").read_text())["source_ir"]["files_sha256"]
    with pytest.raises(StageError) as exc:
        export.verify_package(folder, "GPU", hashes)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("[winml gpu] not a valid Windows ML package: ")
    return str(exc.value)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda f: edit_json(
                f / "genai_config.json",
                lambda d: d["model"]["decoder"]["session_options"]["provider_options"][0]["OpenVINO"].update(
                    enable_causallm=True
                ),
            ),
            "'enable_causallm': True",
        ),
        (
            lambda f: edit_json(
                f / "genai_config.json", lambda d: d["model"]["decoder"]["session_options"].pop("graph_optimization_level")
            ),
            "graph_optimization_level None, expected ORT_DISABLE_ALL",
        ),
        (lambda f: (f / "openvino_model.bin").write_bytes(b"\0" * 64), "openvino_model.bin differs from the source IR's"),
        (lambda f: (f / "tokenizer.json").unlink(), "tokenizer files missing: tokenizer.json"),
    ],
)
def test_a_tampered_package_fails_its_structural_check_in_one_line(
    small_artifacts: Path, tmp_path: Path, edit, message: str
) -> None:
    assert message in tampered(small_artifacts, tmp_path, edit)


def test_an_epcontext_pointing_elsewhere_fails_its_structural_check(small_artifacts: Path, tmp_path: Path) -> None:
    import onnx

    def point_elsewhere(folder: Path) -> None:
        model = onnx.load(str(folder / "openvino_model.onnx"))
        attr = next(a for a in model.graph.node[0].attribute if a.name == "ep_cache_context")
        attr.s = b"other_model.xml"
        onnx.save(model, str(folder / "openvino_model.onnx"))

    line = tampered(small_artifacts, tmp_path, point_elsewhere)
    assert "ep_cache_context='other_model.xml', expected 'openvino_model.xml'" in line
    assert "the IR file other_model.xml the EPContext node points to is missing" in line


def test_a_missing_source_ir_is_one_line_naming_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"^no OpenVINO IR in .*: build it first \(`dvc repro export_openvino@int8`\)"):
        export.run("gpu", WinmlVariantConfig(source_variant="int8", device_type="GPU"), tmp_path / "artifacts")
    assert not (tmp_path / "artifacts" / "winml").exists()


@pytest.mark.parametrize("override, message", [
    ("winml.npu.source=openvino", "winml.npu: device_type NPU needs the NPU-ready IR"),
    ("winml.cpu.source=npu", "winml.cpu: source npu is the NPU-ready IR: use device_type NPU"),
    ("winml.cpu.device_type=DML", "winml.cpu.device_type must be one of CPU, GPU, NPU; got 'DML'"),
])
def test_bad_variants_fail_at_load_time_with_one_line(override: str, message: str) -> None:
    from pipeline.core.config import ConfigError, compose

    with pytest.raises(ConfigError) as exc:
        compose([override])
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_the_plugins_devices_here_or_why_it_offers_none(small_artifacts: Path, tmp_path: Path) -> None:
    """The real plugin on this machine: Intel devices it offers, or (AMD, Arm) the reason, which skips the cell."""
    status = runtime.plugin_status()
    assert status.version == "1.8.1"
    folder = build(small_artifacts, "npu", tmp_path / "winml")
    from pipeline.core.config import ValidateConfig

    if status.devices:
        assert "CPU" in status.devices
        return
    assert "offers only Intel devices (vendor 0x8086)" in status.reason and "0x8086" not in status.reason.split("has ")[1]
    metrics = validate.run("npu", ValidateConfig(prompts=["x"]), folder.parent, metrics_dir=tmp_path / "metrics")
    cell = metrics["cells"]["NPU"]
    assert (metrics["status"], cell["status"], cell["reason"]) == ("skipped", "skipped", status.reason)
    assert metrics["family"] == "winml" and metrics["problems"] == []


def test_cells_run_on_the_target_or_on_cpu_by_override_and_say_so() -> None:
    intel_cpu_only = runtime.PluginStatus("1.8.1", ["CPU"])
    assert validate.plan_cell("CPU", intel_cpu_only).device == "CPU"
    overridden = validate.plan_cell("NPU", intel_cpu_only)
    assert (overridden.column, overridden.device, overridden.skip_reason) == ("NPU", "CPU", None)
    assert "device_type overridden to CPU" in overridden.note
    assert validate.plan_cell("NPU", runtime.PluginStatus("1.8.1", ["CPU", "GPU", "NPU"])).device == "NPU"
    reason = runtime.no_device_reason([("CPU", "AMD", 0x1022)], "1.8.1")
    assert reason.endswith("this machine has CPU AMD (vendor 0x1022)")


def test_a_plugin_bundling_another_openvino_is_refused_in_one_line() -> None:
    assert runtime.check_bundled_openvino("1.8.1", "2026.4.1") is None
    line = runtime.check_bundled_openvino("1.8.1", "2026.5.0")
    assert "bundles OpenVINO 2026.4.1 but openvino 2026.5.0 is installed" in line and "\n" not in line


# --- the tiny model's real IRs, through dvc repro (the demo project when the session builds it) ---------------------


@pytest.fixture(scope="session")
def winml_project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared demo project when this session builds it anyway, otherwise just the ``validate_winml`` stages."""
    others = [i for i in request.session.items if getattr(i, "module", None) is not None
              and i.module.__name__ != __name__ and "demo_project" in getattr(i, "fixturenames", ())]
    if others:
        return request.getfixturevalue("demo_project")[0]
    project = make_project(tmp_path_factory.mktemp("winml_project"))
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    run_cmd([sys.executable, "-m", "dvc", "repro", *(f"validate_winml@{v}" for v in VARIANTS)], project)
    return project


def openvino_genai_tokens(ir: Path, prompt: str, new_tokens: int) -> list[int]:
    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(ir), "CPU", INFERENCE_PRECISION_HINT="f32")
    config = pipe.get_generation_config()
    config.max_new_tokens, config.do_sample, config.apply_chat_template = new_tokens, False, False
    return list(pipe.generate([prompt], config).tokens[0])


@pytest.mark.slow
def test_each_variant_of_the_tiny_models_irs_builds_and_passes_its_structural_checks(winml_project: Path) -> None:
    for name, (source, device) in VARIANTS.items():
        folder = winml_project / "artifacts" / "winml" / name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["source_ir"]["folder"] == f"{source}/int4" and manifest["parameters"]["device_type"] == device
        summary = export.verify_package(folder, device, manifest["source_ir"]["files_sha256"])
        assert summary["inputs"] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
        source = json.loads((winml_project / "artifacts" / source / "int4" / "manifest.json").read_text())["files"]
        assert manifest["source_ir"]["files_sha256"]["openvino_model.bin"] == source["openvino_model.bin"]["sha256"]
        cell = json.loads((winml_project / "artifacts/metrics" / f"winml-{name}.json").read_text())["cells"][device]
        status = runtime.plugin_status()  # the validate stage's cell: ran (by override where needed) or skipped, why
        assert cell["status"] == ("passed" if status.devices else "skipped") and cell["problems"] == [], cell
        assert status.devices or cell["reason"] == status.reason
        report = winml_project / "artifacts" / "report" / "report.md"  # the demo project's: every family has its rows
        if report.is_file():
            want = f"| winml-{name} | {device} | {'passed' if status.devices else 'skipped'} |"
            assert any(line.startswith(want) for line in report.read_text(encoding="utf-8").splitlines()), want


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_real_package_generates_openvino_genais_tokens_on_the_same_ir(winml_project: Path, name: str) -> None:
    folder = winml_project / "artifacts" / "winml" / name
    manifest = json.loads((folder / "manifest.json").read_text())
    source = winml_project / "artifacts" / manifest["source_ir"]["folder"]
    status = runtime.plugin_status()
    if not status.devices:
        pytest.skip(status.reason)
    import onnxruntime_genai as og

    prompt = "<|user|>What does the json module do?<|end|><|assistant|>"
    model = runtime.load_model(str(folder), "CPU", pinned=True)
    ids = [int(t) for t in og.Tokenizer(model).encode(prompt)]
    tokens = validate.generate(model, ids, 16, exact=True)[0]
    assert tokens == openvino_genai_tokens(source, prompt, 16)[:16]


# --- aipc publish -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_publish_dry_run_shows_the_card_with_the_windows_ml_snippet(winml_project: Path) -> None:
    status = runtime.plugin_status()
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "publish", "--dry-run", "--repo", "me/tiny-winml-cpu",
         *([] if status.devices else ["--force"]), "winml/cpu"],
        cwd=winml_project, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "would upload: openvino_model.onnx" in out and "would upload: genai_config.json" in out
    assert "og.register_execution_provider_library(\"OpenVINOExecutionProvider\"" in out
    assert 'device_type "CPU"' in out and "windows-ml" in out
    if not status.devices:
        assert "**not run** (published with --force: the OpenVINO EP plugin" in out
