"""Windows ML packages (pipeline/winml): layout, structural checks, reproducible bytes, the OpenVINO EP plugin's cells.

Fast tests wrap a small real OpenVINO IR (built here with ``openvino.opset13``: the I/O of an optimum-intel LLM IR,
input_ids / attention_mask / position_ids / beam_idx -> logits) and the tiny Phi-3's configs and tokenizer. The slow
ones wrap the tiny model's real int4 and NPU IRs, run each package with onnxruntime-genai and compare its greedy
tokens with openvino_genai's on the same IR, and run the validate stage's cell on it.

On a machine whose CPU is not Intel's (the AMD EPYC CI machine here) the plugin offers no device: its factory skips
every ``OrtHardwareDevice`` whose vendor id is not 0x8086, and ONNX Runtime reads the CPU's vendor with the CPUID
instruction (pytorch/cpuinfo, ``CPUIDInfo::VendorInfoInit``), not from a file, so no mount namespace can change it
and this kernel has no CPUID faulting (``arch_prctl(ARCH_SET_CPUID)``: ENODEV). Those tests then run in a child
process that rewrites ONNX Runtime's already discovered CPU device to vendor Intel (:func:`emulate_intel_vendor`,
:data:`EMULATED`): the OpenVINO CPU plugin itself runs on any x86-64 CPU. Their results say so.
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
from pipeline.core.workspace import Workspace
from pipeline.validation import genai_runner
from pipeline.winml import export, limits, package, runtime, validate
from pipeline.winml.config import WinmlVariantConfig
from tests.conftest import ROOT, TINY_DIR, make_project, run_cmd

VARIANTS = {"npu": ("npu", "NPU"), "gpu": ("openvino", "GPU"), "cpu": ("openvino", "CPU")}
EMULATED = "Intel vendor emulated on an AMD CPU"
CHILD_MARK = "WINML-CHILD-RESULT "


class EmulationUnavailable(Exception):
    """The Intel vendor cannot be emulated in this process (the reason, for a skip)."""


def emulate_intel_vendor() -> str:
    """In this process only: make ONNX Runtime's CPU device read vendor Intel (0x8086), so the plugin offers the CPU.

    ONNX Runtime discovers its hardware devices once per library (``DeviceDiscovery::GetDevices``, cached) and the
    CPU's vendor comes from CPUID (``CPUIDInfo::VendorInfoInit`` through pytorch/cpuinfo). The plugin's
    ``GetSupportedDevices`` then skips every device whose ``HardwareDevice_VendorId`` is not 0x8086. Two copies of
    ONNX Runtime live in the process (``onnxruntime``'s pybind module and the ``libonnxruntime.so`` that
    onnxruntime-genai loads); each discovers its devices when its environment is created: on ``import onnxruntime``
    and on onnxruntime-genai's first ``register_execution_provider_library``. After both, every discovered CPU
    device, an ``OrtHardwareDevice {type, vendor_id, device_id, std::string vendor, ...}`` on the heap
    (onnxruntime/core/session/abi_devices.h; libstdc++'s string: pointer, size, in-place buffer), is rewritten to
    vendor ``Intel`` / 0x8086, and the plugin is registered afresh. Nothing else changes: OpenVINO still sees this
    CPU, with its own instruction set and defaults. Returns the label; raises :class:`EmulationUnavailable`.
    """
    import ctypes
    import platform
    import re
    import struct

    if platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux":
        raise EmulationUnavailable(f"the Intel vendor is emulated on x86-64 Linux only, not {platform.machine()}")
    import onnxruntime as ort
    import onnxruntime_ep_openvino as plugin
    import onnxruntime_genai as og

    cpus = {(d.device.vendor, int(d.device.vendor_id)) for d in ort.get_ep_devices() if d.device.type.name == "CPU"}
    if len(cpus) != 1:
        raise EmulationUnavailable(f"ONNX Runtime lists CPU devices {sorted(cpus)}, expected one")
    vendor, vendor_id = cpus.pop()
    if vendor_id == runtime.INTEL:
        raise EmulationUnavailable("this CPU is Intel's already: nothing to emulate")
    if not 0 < len(vendor) <= 15:  # libstdc++ keeps strings up to 15 bytes in place, as "Intel" will be
        raise EmulationUnavailable(f"CPU vendor name {vendor!r} is not a short string")
    og.register_execution_provider_library(runtime.EP_NAME, plugin.get_library_path())  # genai's devices now exist
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        path = fields[5] if len(fields) > 5 else ""
        if not fields[1].startswith("rw") or path not in ("", "[heap]"):
            continue
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if high - low > 1 << 30:
            continue
        memory = ctypes.string_at(low, high - low)
        for hit in re.finditer(re.escape(vendor.encode()) + b"\0", memory):
            start = hit.start() - 32  # type, vendor_id, device_id, padding, then the string (pointer, size, buffer)
            if start < 0 or start % 8:
                continue
            kind, vid = struct.unpack_from("<II", memory, start)
            pointer, size = struct.unpack_from("<QQ", memory, start + 16)
            if (kind, vid, pointer, size) == (0, vendor_id, low + start + 32, len(vendor)):
                found.append(low + start)
    if len(found) != 2:
        og.unregister_execution_provider_library(runtime.EP_NAME)
        raise EmulationUnavailable(
            f"found {len(found)} discovered CPU devices of {vendor} in memory, expected 2 (onnxruntime and "
            "onnxruntime-genai): this ONNX Runtime's OrtHardwareDevice layout is not the one emulated"
        )
    for address in found:
        ctypes.memmove(address + 4, struct.pack("<I", runtime.INTEL), 4)
        ctypes.memmove(address + 24, struct.pack("<Q", 5), 8)
        ctypes.memmove(address + 32, b"Intel\0", 6)
    og.unregister_execution_provider_library(runtime.EP_NAME)  # registered again, now on "Intel", by plugin_status
    runtime.plugin_status.cache_clear()
    status = runtime.plugin_status()
    if "CPU" not in status.devices:
        raise EmulationUnavailable(f"the plugin still offers no CPU with the vendor emulated: {status.reason}")
    return EMULATED if vendor == "AMD" else f"Intel vendor emulated on a {vendor} CPU"


def emulated_status() -> runtime.PluginStatus:
    """:func:`runtime.plugin_status` with the Intel vendor emulated, labelled so in every cell it plans."""
    label = emulate_intel_vendor()
    status = runtime.plugin_status()
    return runtime.PluginStatus(status.version, status.devices, status.reason, emulated=label)


def child_main() -> None:
    """In a child process: emulate the Intel vendor, run one request (stdin, JSON), print the result line."""
    request = json.loads(sys.stdin.read())
    try:
        status = emulated_status()
    except EmulationUnavailable as err:
        print(CHILD_MARK + json.dumps({"unavailable": str(err)}), flush=True)
        return
    if request.get("cache_root"):  # compiled models go to the test's folder, not this user's cache
        os.environ[limits.CACHE_ENV] = request["cache_root"]
    if request["task"] == "greedy":
        result = greedy_both(Path(request["folder"]), Path(request["source"]), request["prompt"], request["new_tokens"])
    elif request["task"] == "limits":
        result = cache_and_limit(Path(request["folder"]), Path(request["cache_root"]))
    else:
        from pipeline.core.config import load_params

        cfg = load_params(Path(request["project"]) / "params.yaml").validate
        artifacts = Path(request["project"]) / "artifacts"
        result = validate.run(
            request["name"], cfg, Workspace(out=artifacts / "winml", reference=artifacts / "reference" / "reference.json", metrics=Path(request["metrics_dir"])),
            status=status,
        )
    print(CHILD_MARK + json.dumps({"emulated": status.emulated, "result": result}), flush=True)


def cache_and_limit(folder: Path, cache_root: Path) -> dict[str, object]:
    """The NPU package on the plugin's CPU: two loads through the validate stage's cache, then a prompt over its limit.

    A prompt of ``MAX_PROMPT_LEN + 1`` tokens is refused by the package's limit in one line; one that also passes the
    context the package declares is refused by onnxruntime-genai itself (the context is now what the NPU holds).
    """
    settings = limits.npu_settings(folder) or {}
    model, cache = validate.cached_loads(str(folder), "CPU", cache_root / "npu")
    over = int(settings["MAX_PROMPT_LEN"]) + 1
    try:
        validate.check_prompts(folder, "NPU", [[1] * over])
        line = None
    except genai_runner.CellError as err:
        line = str(err)
    held = limits.held_tokens(settings)
    try:
        genai_runner.generate(model, [1] * held, 1)
        runtime_line = None
    except Exception as err:  # onnxruntime-genai's own refusal
        runtime_line = str(err)
    return {"cache": cache, "line": line, "runtime_line": runtime_line, "held": held}


def run_emulated(request: dict) -> tuple[str, object]:
    """Run ``request`` in a child process with the Intel vendor emulated: (label, result); skips if impossible."""
    done = subprocess.run(
        [sys.executable, "-c", "from tests.winml.test_winml import child_main; child_main()"],
        input=json.dumps(request), cwd=ROOT, capture_output=True, text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "DVC_STAGE": "validate_winml",  # a failed cell is recorded and returned (as under dvc repro), not raised
        },
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(CHILD_MARK)]
    assert done.returncode == 0 and lines, f"the emulated run failed ({done.returncode}):\n{done.stderr[-4000:]}"
    answer = json.loads(lines[-1][len(CHILD_MARK) :])
    if "unavailable" in answer:
        pytest.skip(f"{runtime.plugin_status().reason}; {EMULATED} is not possible here: {answer['unavailable']}")
    return answer["emulated"], answer["result"]


NPU_SETTINGS = {  # conf/npu/default.yaml's run settings, as export_npu writes them into npu_config.json
    "MAX_PROMPT_LEN": 1024, "MIN_RESPONSE_LEN": 128, "GENERATE_HINT": "FAST_COMPILE", "PREFILL_HINT": "DYNAMIC",
    "CACHE_MODE": "OPTIMIZE_SPEED",
}


def llm_shaped_ir(folder: Path, vocab: int = 32064, npu_settings: dict | None = None) -> None:
    """A real IR with the inputs and outputs of an exported Phi-3 (no weights worth the name), and its side files.

    ``npu_settings``: an NPU IR's, written into ``npu_config.json`` and its manifest as ``export_npu`` does.
    """
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
    extra = {}
    if npu_settings:
        (folder / "npu_config.json").write_text(json.dumps(npu_settings, indent=2), encoding="utf-8")
        extra = {"npu_run_settings": npu_settings}
    write_manifest(folder, stage="export_openvino", variant=folder.name, parameters={"weight_format": "int4"}, **extra)


@pytest.fixture(scope="module")
def small_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifacts = tmp_path_factory.mktemp("winml") / "artifacts"
    llm_shaped_ir(artifacts / "openvino" / "int4")
    llm_shaped_ir(artifacts / "npu" / "int4", npu_settings=NPU_SETTINGS)
    return artifacts


def build(artifacts: Path, name: str, out_root: Path | None = None) -> Path:
    source, device = VARIANTS[name]
    export.run(name, WinmlVariantConfig.from_conf(source=source, device_type=device), Workspace(artifacts=artifacts, out=out_root))
    return (out_root or artifacts / "winml") / name


def test_each_variant_wraps_its_ir_in_one_epcontext_node_with_the_eps_genai_config(small_artifacts: Path) -> None:
    for name, (source, device) in VARIANTS.items():
        folder = build(small_artifacts, name)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        node = manifest["structure"]["nodes"]
        assert [(n["op_type"], n["domain"]) for n in node] == [("EPContext", "com.microsoft")]
        attrs = node[0]["attributes"]
        assert (attrs["embed_mode"], attrs["ep_cache_context"], attrs["main_context"]) == (0, "openvino_model.xml", 1)
        assert attrs["source"] == "OpenVINOExecutionProvider" and attrs["DeviceClass"] == device
        assert node[0]["inputs"] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
        assert node[0]["outputs"] == ["logits"]
        decoder = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
        options = decoder["session_options"]["provider_options"]
        assert [list(o) for o in options] == [["OpenVINO"]] and options[0]["OpenVINO"]["device_type"] == device
        assert options[0]["OpenVINO"]["enable_causallm"] == "True" and options[0]["OpenVINO"]["cache_dir"] == "ov_cache"
        assert decoder["session_options"]["graph_optimization_level"] == "ORT_DISABLE_ALL"
        assert "beam_idx" not in decoder["inputs"] and decoder["outputs"] == {"logits": "logits"}
        source_files = json.loads((small_artifacts / source / "int4" / "manifest.json").read_text(encoding="utf-8"))["files"]
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
    hashes = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["source_ir"]["files_sha256"]
    with pytest.raises(StageError) as exc:
        export.verify_package(folder, "GPU", hashes)
    prefixes = ("[winml gpu] not a valid Windows ML package: ", "[winml gpu] genai_config.json is not what ")
    assert "\n" not in str(exc.value) and str(exc.value).startswith(prefixes)
    return str(exc.value)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


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
            # what onnxruntime-genai would refuse is caught by its schema first (pipeline/validation/genai_schema.py)
            "OpenVINO.enable_causallm is True: provider options are strings (write \"True\")",
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
        export.run("gpu", WinmlVariantConfig.from_conf(source_variant="int8", device_type="GPU"), Workspace(artifacts=tmp_path / "artifacts"))
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
    metrics = validate.run("npu", ValidateConfig.from_conf(prompts=["x"]), Workspace(out=folder.parent, metrics=tmp_path / "metrics"))
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


def test_a_package_the_ep_cannot_run_is_a_failed_cell_with_a_one_line_reason(
    small_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device is offered but the EP refuses the package (as ONNX Runtime does, in many lines): a failed cell."""
    from types import SimpleNamespace

    from pipeline.core.config import ValidateConfig

    folder = build(small_artifacts, "cpu", tmp_path / "winml")

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Exception during initialization: openvino_model.xml: cannot compile\n  at line 2\n")

    monkeypatch.setattr(runtime, "load_model", refuse)
    monkeypatch.setenv("DVC_STAGE", "validate_winml@cpu")  # recorded, not raised: the stage under dvc repro
    monkeypatch.setattr(validate.Evidence, "load", staticmethod(lambda path: SimpleNamespace(reference={})))
    status = runtime.PluginStatus("1.8.1", ["CPU"])
    metrics = validate.run("cpu", ValidateConfig.from_conf(prompts=["x"]), Workspace(out=folder.parent, metrics=tmp_path / "m"), status=status)
    cell = metrics["cells"]["CPU"]
    want = (
        "cannot load the package on the OpenVINO EP (device_type CPU): "
        "RuntimeError: Exception during initialization: openvino_model.xml: cannot compile"
    )
    assert (metrics["status"], cell["status"], cell["reason"], cell["problems"]) == ("failed", "failed", want, [want])
    assert "ran with onnxruntime-ep-openvino 1.8.1 (OpenVINO 2026.4.1)" in cell["note"]


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
    project = make_project(tmp_path_factory.mktemp("session-winml_project"))
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    run_cmd([sys.executable, "-m", "dvc", "repro", *(f"validate_winml@{v}" for v in VARIANTS)], project)
    return project


@pytest.mark.slow
def test_each_variant_of_the_tiny_models_irs_builds_and_passes_its_structural_checks(winml_project: Path) -> None:
    for name, (source, device) in VARIANTS.items():
        folder = winml_project / "artifacts" / "winml" / name
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["source_ir"]["folder"] == f"{source}/int4" and manifest["parameters"]["device_type"] == device
        summary = export.verify_package(folder, device, manifest["source_ir"]["files_sha256"])
        assert summary["inputs"] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
        source = json.loads((winml_project / "artifacts" / source / "int4" / "manifest.json").read_text(encoding="utf-8"))["files"]
        assert manifest["source_ir"]["files_sha256"]["openvino_model.bin"] == source["openvino_model.bin"]["sha256"]
        cell = json.loads((winml_project / "artifacts/metrics" / f"winml-{name}.json").read_text(encoding="utf-8"))["cells"][device]
        status = runtime.plugin_status()  # the validate stage's cell: ran (by override where needed) or skipped, why
        assert cell["status"] == ("passed" if status.devices else "skipped") and cell["problems"] == [], cell
        assert status.devices or cell["reason"] == status.reason
        report = winml_project / "artifacts" / "report" / "report.md"  # the demo project's: every family has its rows
        if report.is_file():
            want = f"| winml-{name} | {device} | {'passed' if status.devices else 'skipped'} |"
            assert any(line.startswith(want) for line in report.read_text(encoding="utf-8").splitlines()), want


def greedy_both(folder: Path, source: Path, prompt: str, new_tokens: int) -> dict[str, list[int]]:
    """Greedy tokens of the package (onnxruntime-genai, OpenVINO EP on CPU) and of openvino_genai on its source IR.

    Both from the same prompt ids (the package's tokenizer), both with :data:`runtime.PINNED` (f32 compute, f32 KV
    cache, no dynamic quantization: the EP through ``load_config``, openvino_genai directly): once stopping at the
    end-of-sequence token, once for exactly ``new_tokens`` tokens with it suppressed on both sides
    (``min_length`` / ``min_new_tokens``).
    """
    import numpy as np
    import onnxruntime_genai as og
    import openvino as ov
    import openvino_genai as ov_genai

    model = runtime.load_model(str(folder), "CPU", pinned=True)
    ids = [int(t) for t in og.Tokenizer(model).encode(prompt)]
    pipe = ov_genai.LLMPipeline(str(source), "CPU", **runtime.PINNED)
    tokens = ov_genai.TokenizedInputs(ov.Tensor(np.array([ids], dtype=np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))

    def reference(exact: bool) -> list[int]:
        config = pipe.get_generation_config()
        config.max_new_tokens, config.do_sample = new_tokens, False
        if exact:
            config.min_new_tokens = new_tokens
        return [int(t) for t in pipe.generate(tokens, config).tokens[0]]

    return {
        "prompt_ids": ids,
        "package": genai_runner.generate(model, ids, new_tokens)[0],
        "openvino_genai": reference(exact=False),
        "package_exact": genai_runner.generate(model, ids, new_tokens, exact=True)[0],
        "openvino_genai_exact": reference(exact=True),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_real_package_generates_openvino_genais_tokens_on_the_same_ir(
    winml_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """On an Intel CPU as is; elsewhere in a child process with the Intel vendor emulated (:data:`EMULATED`)."""
    folder = winml_project / "artifacts" / "winml" / name
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    source = winml_project / "artifacts" / manifest["source_ir"]["folder"]
    prompt = "<|user|>What does the json module do?<|end|><|assistant|>"
    if runtime.plugin_status().devices:
        monkeypatch.setenv(limits.CACHE_ENV, str(tmp_path))  # compiled models under the test's folder
        got = greedy_both(folder, source, prompt, 16)
    else:
        request = {"task": "greedy", "folder": str(folder), "source": str(source), "prompt": prompt, "new_tokens": 16,
                   "cache_root": str(tmp_path)}
        label, result = run_emulated(request)
        assert label == EMULATED
        got = dict(result)  # type: ignore[call-overload]
    assert got["package"] == got["openvino_genai"] and got["package"], got
    assert got["package_exact"] == got["openvino_genai_exact"] and len(got["package_exact"]) == 16, got


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_validate_cell_of_each_package_runs_and_passes_with_the_intel_vendor_emulated(
    winml_project: Path, tmp_path: Path, name: str
) -> None:
    """Where the plugin offers nothing, the stage's own cell (load, generate, speed, fidelity) in the emulated child.

    On an Intel machine the stage itself ran the cell (checked in the structural test above): nothing to emulate.
    """
    if runtime.plugin_status().devices:
        pytest.skip("the plugin offers an Intel device here: validate_winml ran the cells itself")
    request = {"task": "validate", "name": name, "project": str(winml_project), "metrics_dir": str(tmp_path),
               "cache_root": str(tmp_path / "ov_cache")}
    label, metrics = run_emulated(request)
    device = VARIANTS[name][1]
    cell = metrics["cells"][device]  # type: ignore[index]
    assert (metrics["status"], cell["status"], cell["problems"]) == ("passed", "passed", []), cell  # type: ignore[index]
    assert cell["label"].endswith(f"({EMULATED})") and EMULATED in cell["note"] and cell["device_executed"] == "CPU"
    if device != "CPU":
        assert cell["label"].startswith(validate.OVERRIDDEN) and "device_type overridden to CPU" in cell["reason"]
    assert cell["greedy_exact_match"] == 1.0 and cell["tokenizer_matches_reference"] is True
    cache = cell["compile_cache"]  # the first load compiled into an emptied cache, the second read it back
    assert cache["reused"] is True and cache["files"] >= 1 and cache["compile_load_s"] > 0 and cache["cached_load_s"] > 0
    assert Path(cache["cache_dir"]).parent == tmp_path / "ov_cache" and cell["load_s"] == cache["compile_load_s"]
    assert cell["top1_agreement"] is not None and cell["mean_kl"] is not None
    if device == "CPU":  # an override to the CPU is a stand-in: the quick profile runs no speed runs there
        assert cell["ttft_ms"] > 0 and cell["speed_not_measured"] is None
    else:
        assert cell["ttft_ms"] is None and cell["speed_not_measured"].startswith("speed not measured: CPU stand-in")
    written = json.loads((tmp_path / f"winml-{name}.json").read_text(encoding="utf-8"))
    assert written["cells"][device]["label"] == cell["label"]
    # the stage's own metrics in the project stay the honest skip
    stage = json.loads((winml_project / "artifacts/metrics" / f"winml-{name}.json").read_text(encoding="utf-8"))
    assert stage["cells"][device]["status"] == "skipped"


@pytest.mark.slow
def test_the_npu_package_reuses_its_compile_cache_and_refuses_a_prompt_over_its_limit_in_one_line(
    winml_project: Path, tmp_path: Path
) -> None:
    """With the Intel vendor emulated (or on an Intel CPU): the NPU package run on the plugin's CPU."""
    folder = winml_project / "artifacts" / "winml" / "npu"
    request = {"task": "limits", "folder": str(folder), "cache_root": str(tmp_path)}
    if runtime.plugin_status().devices:
        got: dict = cache_and_limit(folder, tmp_path)
    else:
        _, result = run_emulated(request)
        got = dict(result)  # type: ignore[call-overload]
    assert got["cache"]["reused"] is True and got["cache"]["files"] >= 1, got
    assert got["line"].startswith("the prompt has 1025 tokens but this NPU package takes at most 1024") and "\n" not in got["line"]
    assert got["held"] == 1152 and "cannot be greater than model context_length (1152)" in got["runtime_line"], got
    assert not (folder / limits.PACKAGE_CACHE).exists()  # our loads never write into the DVC-tracked package


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
