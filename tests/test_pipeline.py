"""End to end: the README demo in a fresh repo, DVC incrementality, and the exported IR themselves."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from pipeline.openvino.ir_inspect import inspect_ir

from conftest import run_cmd
from shared_workspace import locked_stages

pytestmark = pytest.mark.slow
VARIANTS = ("int4", "int8", "fp16")


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_demo_builds_and_validates_every_variant(demo_project) -> None:
    project, done = demo_project
    assert {"download", "reference", "export_openvino_base", *(f"export_openvino@{v}" for v in VARIANTS),
            *(f"validate@{v}" for v in VARIANTS), "export_npu@int4", "validate_npu@int4", "report"} <= locked_stages(
        project) | ran_stages(done.stdout + done.stderr)  # the demo exited 0: every stage in dvc.lock is current
    for variant in VARIANTS:
        metrics = json.loads((project / "artifacts" / "metrics" / f"openvino-{variant}.json").read_text(encoding="utf-8"))
        assert metrics["passed"], metrics["problems"]
        assert metrics["device_executed"] == "CPU" and metrics["tokenizer_matches_reference"]
        assert metrics["sample"].strip(), "the IR generated no text"
        assert metrics["tokens_per_s"] > 0 and metrics["peak_rss_mb"] > 0
    assert re.search(r"^openvino-int4 +passed ", done.stdout, re.M), done.stdout[-3000:]  # the one-screen summary
    npu = json.loads((project / "artifacts" / "metrics" / "npu-int4.json").read_text(encoding="utf-8"))
    assert npu["passed"] and npu["label"] == "NPU-ready IR, NPU pipeline (NPUW), CPU backend: NPU compiler not exercised"
    assert npu["reason"].startswith("no NPU here") and npu["cells"]["NPU"]["status"] == "passed"
    assert npu["cells"]["NPU"]["device_executed"] == "CPU (NPUW)"
    assert npu["cells"]["CPU stand-in"]["label"] == "NPU-ready IR, validated on CPU (stand-in: no NPU here)"


def test_int4_ir_has_4bit_layers_and_fp16_has_none(demo_project) -> None:
    project, _ = demo_project
    int4 = inspect_ir(project / "artifacts" / "openvino" / "int4" / "openvino_model.xml")
    fp16 = inspect_ir(project / "artifacts" / "openvino" / "fp16" / "openvino_model.xml")
    assert int4["weight_layers"]["int4"] >= 4
    assert int4["nncf"]["weight_compression"]["mode"] == "int4_sym"
    assert int4["nncf"]["weight_compression"]["group_size"] == 128
    assert int4["nncf"]["weight_compression"]["ratio"] == 0.6
    assert fp16["weight_layers"]["int4"] == 0 and fp16["weight_layers"]["int8"] == 0
    assert fp16["weight_layers"]["float"] == fp16["weight_layers"]["total"] > 0


def test_manifest_records_source_hashes_and_ir_structure(demo_project) -> None:
    project, _ = demo_project
    model = json.loads((project / "artifacts" / "model" / "manifest.json").read_text(encoding="utf-8"))
    ir = json.loads((project / "artifacts" / "openvino" / "int4" / "manifest.json").read_text(encoding="utf-8"))
    assert ir["source_files_sha256"]["model.safetensors"] == model["files"]["model.safetensors"]["sha256"]
    assert ir["weight_layers"]["int4"] > 0 and ir["nncf_rt_info"]["weight_compression"]["group_size"] == 128
    assert "openvino_tokenizer.xml" in ir["files"] and "openvino_detokenizer.xml" in ir["files"]


def test_ir_loads_in_openvino_genai_and_generates(demo_project) -> None:
    import openvino_genai as ov_genai

    project, _ = demo_project
    for variant in ("int4", "fp16"):
        pipe = ov_genai.LLMPipeline(str(project / "artifacts" / "openvino" / variant), "CPU")
        text = pipe.generate("<|user|>Can you introduce yourself?<|end|><|assistant|>", max_new_tokens=16,
                             apply_chat_template=False)
        assert len(str(text).strip()) > 0


@pytest.mark.parametrize("artifact", ["artifacts/openvino/int4", "artifacts/npu/int4", "artifacts/onnx/dml_int4"])
def test_chat_streams_an_answer_from_an_ir_or_onnx_folder(demo_project, artifact: str) -> None:
    project, _ = demo_project
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "chat", artifact, "--prompt", "Can you introduce yourself?"],
                   project)
    assert len(done.stdout.strip()) > 10


def test_chat_on_an_absent_device_says_so_in_one_line(demo_project) -> None:
    from pipeline.validation.devices import onnx_provider_status

    if onnx_provider_status("dml").available:
        pytest.skip("DirectML is present here: the DML folder runs")
    project, _ = demo_project
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "chat", "artifacts/onnx/dml_int4", "--device", "DML",
                    "--prompt", "Hi"], project, check=False)
    first = "error: no DML here (" if os.name == "nt" else "error: DirectML runs only on Windows, not "
    assert done.returncode == 2 and done.stderr.strip().startswith(first), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_second_repro_is_a_noop_and_group_size_change_reruns_only_int4(demo_project) -> None:
    project, _ = demo_project
    again = run_cmd([sys.executable, "-m", "dvc", "repro"], project)
    assert ran_stages(again.stdout + again.stderr) == set()
    run_cmd(["git", "add", "-A"], project)  # dvc.lock, params and the (uncached) metrics: the baseline to diff
    run_cmd(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "demo"], project)
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny", "openvino.int4.group_size=64"], project)
    try:
        changed_group_size_reruns_only_int4(project)
    finally:  # the demo project is the session's: give the other tests back the demo's workspace (group size 128)
        run_cmd(["git", "checkout", "--", "."], project)
        run_cmd([sys.executable, "-m", "dvc", "checkout", "--force"], project)
    restored = run_cmd([sys.executable, "-m", "dvc", "status", "--json"], project)
    assert json.loads(restored.stdout) == {}, restored.stdout


def changed_group_size_reruns_only_int4(project: Path) -> None:
    """After ``openvino.int4.group_size=64``: ``dvc repro`` reruns int4 and what wraps or reports it, nothing else."""
    changed = run_cmd([sys.executable, "-m", "dvc", "repro"], project)
    winml = {f"{stage}@{v}" for stage in ("export_winml", "validate_winml") for v in ("gpu", "cpu")}  # wrap int4
    assert ran_stages(changed.stdout + changed.stderr) == {"export_openvino@int4", "validate@int4", "report", "verdict",
                                                           *winml}
    diff = json.loads(run_cmd([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], project).stdout)
    int4 = diff["artifacts/metrics/openvino-int4.json"]
    for key in ("size_mb", "mean_kl", "top1_agreement", "perplexity"):
        assert int4[key]["old"] is not None and int4[key]["new"] is not None, key
    assert int4["size_mb"]["diff"] != 0 and int4["mean_kl"]["diff"] != 0
    assert "artifacts/metrics/openvino-fp16.json" not in diff, "untouched artifacts show no change"
    int4 = json.loads((project / "artifacts" / "openvino" / "int4" / "manifest.json").read_text(encoding="utf-8"))
    assert int4["nncf_rt_info"]["weight_compression"]["group_size"] == 64
    assert int4["compressed_from"] == "openvino_base", "a sweep point must not re-export from PyTorch"
