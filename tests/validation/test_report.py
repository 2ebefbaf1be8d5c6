"""Validation matrix and report: cells per device, fallbacks that fail, fidelity thresholds that bite, the report.

Fast tests build cells and metrics files directly. The ``slow`` ones use the demo project (``aipc demo``
already built and validated every artifact there): its report, an IR with one layer zeroed, the NPU
library run while the device report claims an NPU, and ``dvc plots show``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.workspace import Workspace
from pipeline.core.config import ConfigError, PipelineConfig, ValidateConfig, build, compose
from pipeline.core.errors import StageError
from pipeline.npu_lib import validate as validate_npu_lib
from pipeline.openvino import validate
from pipeline.validation import devices, evidence, fidelity, matrix, records, report

from conftest import run_cmd


class FakeCore:
    """Stands in for openvino.Core: a fixed device list."""

    def __init__(self, names: list[str]) -> None:
        self.available_devices = names

    def get_property(self, device: str, name: str) -> str:
        return f"fake {device} {name}"


def status(*present: str) -> dict[str, devices.DeviceStatus]:
    return devices.detect(FakeCore(["CPU", *present]))


def tiny_cfg(*overrides: str) -> ValidateConfig:
    return build(ValidateConfig, compose(["model=tiny", *overrides])["validate"])


REFERENCE = {"greedy": [{"output_ids": [5, 6, 7]}, {"output_ids": [8, 9]}]}


def measurement(executed: str = "CPU", kl: float = 0.001, top1: float = 0.97) -> matrix.Measurement:
    perf = {"short": matrix.Perf.from_runs(32, 16, [3.0, 2.0, 4.0], [1.0, 1.25, 2.0]),
            "long": matrix.Perf.from_runs(1024, 16, [90.0, 80.0, 70.0], [1.5, 1.5, 1.5])}
    fid = {"top1_agreement": top1, "mean_kl": kl, "max_kl": 10 * kl, "perplexity": 85.0,
           "reference_perplexity": 84.0, "perplexity_delta_pct": 1.19}
    return matrix.Measurement(executed, 0.5, 200.0, perf, fid, [[5, 6, 7], [8, 1]], True, "Hello")


# --- cells, fallbacks, thresholds -------------------------------------------------------------------------------


def test_absent_devices_are_skipped_with_the_reason_devices_gives() -> None:
    plans = matrix.plan_cells(["CPU", "GPU"], status(), cpu_stand_in=True)
    assert [(p.column, p.skip_reason is None) for p in plans] == [("CPU", True), ("GPU", False)]
    assert plans[1].skip_reason == status()["GPU"].reason and plans[1].skip_reason
    with_gpu = matrix.plan_cells(["CPU", "GPU"], status("GPU"), cpu_stand_in=True)
    assert [p.skip_reason for p in with_gpu] == [None, None]


def test_a_silent_fallback_is_a_failed_cell_with_one_line() -> None:
    (on_npu,) = matrix.plan_cells(["NPU"], status("NPU"), cpu_stand_in=True)
    thresholds = matrix.Thresholds("int4", 0.85, 0.1)
    cell = matrix.judge(on_npu, measurement(executed="CPU"), REFERENCE, thresholds, "NPU-ready IR")
    assert cell.status == "failed" and cell.device_requested == "NPU" and cell.device_executed == "CPU"
    assert cell.problems == ["asked for NPU but ran on CPU (silent fallback)"]
    record = records.MetricsRecord("npu-int4", "npu", "int4", 14.5, {}, {"NPU": cell})
    assert record.as_dict()["passed"] is False and record.status == "failed"
    honest = matrix.judge(on_npu, measurement(executed="NPU"), REFERENCE, thresholds, "NPU-ready IR")
    assert honest.status == "passed" and honest.greedy_exact_match == 0.5 and honest.first_divergence == [None, 1]


def test_fidelity_thresholds_fail_the_cell_and_the_stage(tmp_path: Path) -> None:
    (cpu,) = matrix.plan_cells(["CPU"], status(), cpu_stand_in=True)
    thresholds = matrix.Thresholds("fp16", 0.99, 0.001)
    cell = matrix.judge(cpu, measurement(kl=0.24, top1=0.70), REFERENCE, thresholds, "OpenVINO IR")
    assert cell.status == "failed" and len(cell.problems) == 2
    assert "mean KL 0.24 above the fp16 threshold 0.001" in cell.problems[1]
    record = records.MetricsRecord("openvino-fp16", "openvino", "fp16", 24.0, vars(thresholds), {"CPU": cell})
    with pytest.raises(StageError) as exc:
        records.publish(record, tmp_path / "openvino-fp16.json")
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith("[openvino-fp16] validation failed: CPU: artifact fidelity (f32 runtime): top-1")
    written = json.loads((tmp_path / "openvino-fp16.json").read_text(encoding="utf-8"))
    assert written["status"] == "failed" and written["cells"]["CPU"]["mean_kl"] == 0.24, "metrics are kept for the report"


def test_under_dvc_a_failed_cell_is_recorded_and_the_verdict_stage_fails_after_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cpu,) = matrix.plan_cells(["CPU"], status(), cpu_stand_in=True)
    cell = matrix.judge(cpu, measurement(kl=0.24, top1=0.70), REFERENCE, matrix.Thresholds("fp16", 0.99, 0.001),
                        "OpenVINO IR")
    record = records.MetricsRecord("openvino-fp16", "openvino", "fp16", 24.0, {}, {"CPU": cell})
    monkeypatch.setenv("DVC_STAGE", "validate@fp16")
    assert records.publish(record, tmp_path / "metrics" / "openvino-fp16.json")["passed"] is False  # no raise
    params = build(PipelineConfig, compose(["model=tiny"]))
    report.run(params, tmp_path / "metrics", tmp_path / "report")
    assert "| openvino-fp16 | CPU | **failed** |" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    with pytest.raises(StageError) as exc:
        report.verdict(params, tmp_path / "metrics")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("1 of ")
    assert "openvino-fp16 @ CPU (artifact fidelity (f32 runtime): top-1 agreement 0.700" in str(exc.value)


def test_device_numerics_are_judged_by_their_compute_precision_against_the_pinned_run() -> None:
    (cpu,) = matrix.plan_cells(["CPU"], status(), cpu_stand_in=True)
    cfg = tiny_cfg()
    verdicts = evidence.verdicts_for(cfg, "fp16")
    got = measurement(kl=1e-6, top1=1.0)
    for compute, drift_top1, ok in (("bf16", 0.97, True), ("f16", 0.90, False), ("f32", 0.999, True)):
        got.device_numerics = {"compute": compute, "label": f"{compute} compute, u8 KV cache"}
        got.device_fidelity = {"top1_agreement": drift_top1, "mean_kl": 1e-4, "perplexity_delta_pct": 0.1}
        got.drift = {"top1_agreement": drift_top1, "mean_kl": 1e-4}
        cell = matrix.judge(cpu, got, REFERENCE, verdicts, "OpenVINO IR")
        assert (cell.status == "passed") is ok, (compute, cell.problems)
        assert cell.device_numerics["compute"] == compute and cell.top1_agreement == 1.0
        if not ok:
            assert cell.problems == [f"device numerics ({compute} compute, u8 KV cache) against the f32 run: top-1 "
                                     f"agreement 0.900 below the f16 compute threshold "
                                     f"{cfg.device_numerics.min_top1_agreement['f16']}"]


def test_long_context_ranges_are_judged_per_range() -> None:
    (cpu,) = matrix.plan_cells(["CPU"], status(), cpu_stand_in=True)
    got = measurement(kl=1e-6, top1=1.0)
    good = {"window": 6000, "start": 0, "stop": 1024, "top1_agreement": 0.999, "mean_kl": 1e-6}
    bad = {"window": 6000, "start": 4096, "stop": 6000, "top1_agreement": 0.95, "mean_kl": 1e-6}
    got.long_context = [good, bad]
    cell = matrix.judge(cpu, got, REFERENCE, evidence.verdicts_for(tiny_cfg(), "fp16"), "OpenVINO IR")
    assert cell.status == "failed" and len(cell.problems) == 1
    assert cell.problems[0].startswith("long context, 6000-token window, positions 4096-6000: top-1 agreement 0.950")


def test_position_ranges_and_range_fidelity_add_up_to_the_whole_window() -> None:
    assert fidelity.position_ranges(6000, [1024, 2047, 4096]) == [(0, 1024), (1024, 2047), (2047, 4096), (4096, 6000)]
    assert fidelity.position_ranges(3000, [1024, 4096, 1024]) == [(0, 1024), (1024, 3000)]
    windows, logits = synthetic(vocab=64)
    ref = fidelity.reference_from_logits(windows, logits, top_k=8)
    noisy = [x + np.random.default_rng(2).normal(0, 1, x.shape).astype(np.float32) for x in logits]
    ranges = fidelity.compare_ranges(ref, noisy, [5])
    assert [(r["window"], r["start"], r["stop"]) for r in ranges] == [(12, 0, 5), (12, 5, 12), (9, 0, 5), (9, 5, 9)]
    whole = fidelity.compare(ref, noisy)
    hits = sum(r["top1_agreement"] * r["positions"] for r in ranges)
    assert hits / 21 == pytest.approx(whole.top1_agreement)
    assert sum(r["mean_kl"] * r["positions"] for r in ranges) / 21 == pytest.approx(whole.mean_kl, rel=1e-5)
    assert fidelity.agreement(logits, logits) == {"top1_agreement": 1.0, "mean_kl": 0.0}
    drift = fidelity.agreement(logits, noisy)
    assert drift["top1_agreement"] < 1.0 and drift["mean_kl"] > 0


def test_speed_is_the_median_of_repeats_and_tokens_per_s_is_the_decode_rate() -> None:
    perf = matrix.Perf.from_runs(32, 16, [3.0, 2.0, 40.0], [1.0, 1.25, 2.0])
    assert (perf.ttft_ms, perf.tpot_ms, perf.tokens_per_s) == (3.0, 1.25, 800.0)


@pytest.mark.parametrize("override, message", [
    ("validate.max_mean_kl.int4=-1", "validate.max_mean_kl.int4 must be positive"),
    ("validate.devices.npu_lib=[GPU]", "validate.devices.npu_lib entry must be one of NPU"),
    ("+validate.devices.onnx=[DML]", "validate.devices.onnx: unknown family"),
    ("validate.perf_prompt_tokens.long=0", "validate.perf_prompt_tokens.long must be positive"),
])
def test_bad_validation_settings_fail_at_load_time_with_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        compose(["model=tiny", override])
    assert message in str(exc.value) and "\n" not in str(exc.value)


# --- fidelity arithmetic ----------------------------------------------------------------------------------------


def synthetic(seed: int = 0, vocab: int = 300) -> tuple[list[list[int]], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    windows = [list(rng.integers(0, vocab, 12)), list(rng.integers(0, vocab, 9))]
    return windows, [rng.normal(0, 3, (len(w), vocab)).astype(np.float32) for w in windows]


def test_kl_is_zero_for_the_reference_itself_and_a_lower_bound_of_the_full_kl(tmp_path: Path) -> None:
    windows, logits = synthetic()
    ref = fidelity.reference_from_logits(windows, logits, top_k=16)
    ref.save(tmp_path / "logprobs.npz")
    ref = fidelity.ReferenceLogprobs.load(tmp_path / "logprobs.npz")
    same = fidelity.compare(ref, logits)
    assert same.top1_agreement == 1.0 and same.mean_kl < 1e-9 and abs(same.perplexity_delta_pct) < 1e-4
    noisy = [x + np.random.default_rng(1).normal(0, 1, x.shape).astype(np.float32) for x in logits]
    got = fidelity.compare(ref, noisy)
    p = np.concatenate([fidelity.log_softmax(x) for x in logits])
    q = np.concatenate([fidelity.log_softmax(x) for x in noisy])
    full_kl = float((np.exp(p) * (p - q)).sum(-1).mean())
    assert 0 < got.mean_kl <= full_kl and got.perplexity != same.perplexity
    exact = fidelity.compare(fidelity.reference_from_logits(windows, logits, top_k=300), noisy)
    assert exact.mean_kl == pytest.approx(full_kl, rel=1e-4)  # float32 storage


def test_reference_logprobs_refuse_pickled_objects(tmp_path: Path) -> None:
    windows, logits = synthetic()
    arrays = fidelity.reference_from_logits(windows, logits, top_k=4).__dict__
    np.savez(tmp_path / "evil.npz", **{**arrays, "next_ids": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        fidelity.ReferenceLogprobs.load(tmp_path / "evil.npz")


# --- the report from metrics files ------------------------------------------------------------------------------


def test_report_has_a_row_per_cell_with_reasons_and_missing_artifacts(tmp_path: Path) -> None:
    params = build(PipelineConfig, compose(["model=tiny"]))
    thresholds = matrix.Thresholds("int4", 0.85, 0.1)
    plans = matrix.plan_cells(["CPU", "GPU"], status(), cpu_stand_in=True)
    cells = {"CPU": matrix.judge(plans[0], measurement(), REFERENCE, thresholds, "OpenVINO IR"),
             "GPU": matrix.skipped_cell(plans[1], "OpenVINO IR")}
    record = records.MetricsRecord("openvino-int4", "openvino", "int4", 14.8, vars(thresholds), cells)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "openvino-int4.json").write_text(json.dumps(record.as_dict()), encoding="utf-8")
    counts = report.run(params, tmp_path / "metrics", tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert counts == {"passed": 1, "failed": 0, "skipped": 1, "missing": len(report.configured_artifacts(params)) - 1,
                      "refused": 0}
    assert "| openvino-int4 | CPU | passed | – | CPU | 14.8 |" in text and "TTFT ms (1024 tok)" in text
    assert "| openvino-int4 | GPU | skipped | – |" in text and status()["GPU"].reason in text
    assert "| openvino-fp16 | - | missing |" in text and "dvc repro validate@fp16" in text
    assert json.loads((tmp_path / "report" / "cells.json").read_text(encoding="utf-8"))[0]["cell"] == "openvino-int4 @ CPU"
    for png in ("size_vs_fidelity.png", "tokens_per_s.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"


# --- on the demo project ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_report_has_every_artifact_on_every_configured_device(demo_project) -> None:
    project, done = demo_project
    params = build(PipelineConfig, compose(["model=tiny"]))
    text = (project / "artifacts" / "report" / "report.md").read_text(encoding="utf-8")
    absent = status()
    onnx_devices = {"dml": "DML", "cpu": "CPU"}
    expected = [(f"openvino-{v}", d) for v in params.openvino for d in params.validate.devices["openvino"]]
    expected += [(f"npu-{v}", d) for v in params.npu for d in params.validate.devices["npu"]]
    expected += [(f"onnx-{v}", onnx_devices[c.execution_provider]) for v, c in params.onnx.items()]
    expected += [(f"npu_lib-{v}", d) for v in params.npu_lib for d in params.validate.devices["npu_lib"]]
    for artifact, device in expected:
        row = next((line for line in text.splitlines() if line.startswith(f"| {artifact} | {device} |")), None)
        assert row, f"no cell for {artifact} on {device}"
        if artifact.startswith("npu-") and device == "NPU":  # the NPU pipeline itself, through NPUW on the CPU
            assert "| NPU | passed | quick | CPU (NPUW) |" in row and "NPU compiler not exercised" in row, row
        elif device in ("GPU", "NPU"):
            assert f"| {device} | skipped |" in row and absent[device].reason in row, row
        elif device == "DML":
            assert "| skipped |" in row and "no DML provider" in row, row
        else:
            assert "| passed |" in row, row
    stand_ins = [line for line in text.splitlines() if "| CPU stand-in | passed | quick | CPU |" in line]
    assert len(stand_ins) == len(params.npu) + 2 + len(params.npu_lib)  # NPU IR, two DML graphs, library
    assert all("speed not measured: CPU stand-in" in line for line in stand_ins), stand_ins  # the quick profile
    metrics = json.loads((project / "artifacts" / "metrics" / "openvino-int4.json").read_text(encoding="utf-8"))
    assert 0 < metrics["mean_kl"] <= metrics["thresholds"]["max_mean_kl"] and metrics["perplexity"] > 0
    assert set(metrics["cells"]["CPU"]["perf"]) == {"short", "long"}
    assert metrics["cells"]["CPU"]["perf"]["long"]["prompt_tokens"] == 1024
    assert re.search(r"^openvino-int4 +passed ", done.stdout, re.M), "aipc demo ends with the summary"
    assert (project / "artifacts" / "reference" / fidelity.LOGPROBS_FILE).is_file()
    assert "| top-1 (f32) | mean KL (f32) |" in text and "| top-1 (device) | mean KL (device) |" in text
    cpu = metrics["cells"]["CPU"]
    assert cpu["artifact_numerics"]["compute"] == "f32" and cpu["artifact_numerics"]["kv_cache_precision"] == "f32"
    assert cpu["device_numerics"]["compute"] in ("f32", "bf16", "f16") and cpu["device_numerics"]["label"] in text
    assert cpu["long_context"] and {r["window"] for r in cpu["long_context"]} == {4096}, "4k model: one 4096 window"
    assert [(r["start"], r["stop"]) for r in cpu["long_context"]] == [(0, 1024), (1024, 2047), (2047, 4096)]
    emulated = {k: c for k, c in metrics["cells"].items() if "compute" in k}
    assert set(emulated) == {"CPU bf16 compute", "CPU f16 compute"}
    for column, cell in emulated.items():
        if cell["status"] == "skipped":
            assert "this CPU cannot compute in" in cell["reason"]
        else:
            assert cell["device_numerics"]["compute"] == column.split()[1] and cell["status"] == "passed"


def zero_layer(src: Path, dest: Path, layer: str) -> None:
    """Copy the IR folder ``src`` to ``dest`` with the weights of ``layer`` set to zero (a new IR, not an edit)."""
    import openvino as ov
    from openvino import opset13 as ops

    shutil.copytree(src, dest)
    core = ov.Core()
    model = core.read_model(str(src / "openvino_model.xml"))
    hits = [op for op in model.get_ops() if op.get_type_name() == "Constant"
            and op.get_friendly_name().endswith(f"{layer}._openvino_orig_weight")]
    assert len(hits) == 1, f"expected one weight constant for {layer}"
    zero = ops.constant(np.zeros_like(hits[0].get_data()), dtype=hits[0].get_element_type())
    hits[0].output(0).replace(zero.output(0))
    for name in ("openvino_model.xml", "openvino_model.bin"):
        (dest / name).unlink()
    ov.save_model(model, str(dest / "openvino_model.xml"), compress_to_fp16=False)


@pytest.mark.slow
def test_an_ir_with_one_zeroed_layer_fails_validation_with_one_line(demo_project, tmp_path: Path) -> None:
    project, _ = demo_project
    zero_layer(project / "artifacts" / "openvino" / "fp16", tmp_path / "openvino" / "fp16", "layers.1.mlp.down_proj")
    cfg = tiny_cfg("validate.repeats=1", "validate.warmup=0")
    target = validate.Target("openvino-fp16", "openvino", tmp_path / "openvino" / "fp16", ["CPU"])
    with pytest.raises(StageError) as exc:
        validate.run(target, cfg, Workspace(model=project / "artifacts" / "model",
                                            reference=project / "artifacts" / "reference" / "reference.json",
                                            metrics=tmp_path / "metrics"))
    message = str(exc.value)
    assert "\n" not in message and message.startswith("[openvino-fp16] validation failed: CPU: ")
    assert "above the fp16 threshold" in message
    broken = json.loads((tmp_path / "metrics" / "openvino-fp16.json").read_text(encoding="utf-8"))
    healthy = json.loads((project / "artifacts" / "metrics" / "openvino-fp16.json").read_text(encoding="utf-8"))
    assert broken["mean_kl"] > 100 * max(healthy["mean_kl"], 1e-6) and broken["passed"] is False


def force_cpu_defaults(monkeypatch: pytest.MonkeyPatch, compute: str) -> None:
    """Make the "device defaults" run compute in ``compute``, as the CPU plugin does by itself on other CPUs."""
    from pipeline.openvino import numerics

    pinned = numerics.settings
    monkeypatch.setattr(numerics, "settings", lambda c: pinned(c) if c else {"INFERENCE_PRECISION_HINT": compute})


@pytest.mark.slow
def test_artifact_verdicts_hold_whatever_the_cpu_computes_in(demo_project, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.openvino.numerics import emulation_plans

    project, _ = demo_project
    reduced = [p.precision for p in emulation_plans(["bf16", "f16"]) if not p.skip_reason]
    if not reduced:
        pytest.skip("this CPU computes only in f32: no other default to compare with")
    cfg = tiny_cfg("validate.repeats=1", "validate.warmup=0", "validate.emulate_numerics=[]",
                   "validate.perf_prompt_tokens={short: 32}")
    ref = project / "artifacts" / "reference" / "reference.json"
    seen = {}
    for compute in ["f32", *reduced]:
        force_cpu_defaults(monkeypatch, compute)
        for variant in ("int4", "fp16"):
            target = validate.Target(f"openvino-{variant}", "openvino", project / "artifacts" / "openvino" / variant,
                                     ["CPU"])
            cell = validate.run(target, cfg, Workspace(reference=ref, metrics=tmp_path / compute))["cells"]["CPU"]
            seen[compute, variant] = cell
            assert cell["device_numerics"]["compute"] == compute, "the label says what really ran"
    for compute in reduced:
        for variant in ("int4", "fp16"):
            base, other = seen["f32", variant], seen[compute, variant]
            assert (other["status"], other["top1_agreement"], other["mean_kl"]) == \
                (base["status"], base["top1_agreement"], base["mean_kl"]), f"artifact verdict moved with {compute}"
            # the device figures move (against the pinned run); not necessarily more than the f32-compute run's,
            # which keeps the same u8 KV cache and dynamic quantization (AMX Xeon: bf16 4.99e-5 < f32 5.46e-5)
            assert other["drift_mean_kl"] > 0, f"{compute} numerics must show in the device figures"


@pytest.mark.slow
def test_npu_library_running_on_cpu_while_an_npu_is_reported_fails(demo_project, tmp_path: Path) -> None:
    project, _ = demo_project
    cfg = tiny_cfg("validate.repeats=1", "validate.warmup=0", "validate.perf_prompt_tokens={short: 32}")
    with pytest.raises(StageError, match=r"NPU: asked for NPU but ran on CPU \(silent fallback\)"):
        validate_npu_lib.run("int8", cfg, Workspace(out=project / "artifacts" / "npu_lib", reference=project / "artifacts" / "reference" / "reference.json", metrics=tmp_path, lock_file=project / "dvc.lock"), 
                                status=status("NPU"))
    metrics = json.loads((tmp_path / "npu_lib-int8.json").read_text(encoding="utf-8"))
    assert list(metrics["cells"]) == ["NPU"], "with an NPU reported there is no stand-in"
    assert metrics["cells"]["NPU"]["status"] == "failed" and metrics["device_executed"] == "CPU"


@pytest.mark.slow
def test_dvc_plots_show_renders_the_report(demo_project, tmp_path: Path) -> None:
    project, _ = demo_project
    run_cmd([sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots" / "index.html").read_text(encoding="utf-8")
    assert "Size vs mean KL" in html and "openvino-int4 @ CPU" in html and "size_vs_fidelity.png" in html


def test_speed_prompts_have_the_configured_lengths_and_never_overlap_the_evaluated_text() -> None:
    from transformers import AutoTokenizer

    from pipeline.validation import reference

    from conftest import TINY_DIR

    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    cfg = tiny_cfg()
    prompts = reference.perf_prompts(tokenizer, cfg)
    assert {k: len(v) for k, v in prompts.items()} == cfg.perf_prompt_tokens
    evaluated = reference.eval_windows(tokenizer, cfg)
    heldout = reference.heldout_ids(tokenizer)
    # a Phi-3 user turn (<|user|> ... <|end|>) around held-out text, then the open assistant turn (<|assistant|>)
    assert sum(map(len, evaluated)) == cfg.eval_tokens and prompts["long"] == [
        32010, *heldout[cfg.eval_tokens:][:1021], 32007, 32001]
    with pytest.raises(StageError, match="validate.perf_prompt_tokens asks for 99999 tokens"):
        reference.perf_prompts(tokenizer, tiny_cfg("validate.perf_prompt_tokens.long=99999"))
