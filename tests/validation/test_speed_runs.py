"""validate.perf_budget_s: the speed runs of one prompt length stop once the budget is spent (issue 20.5)."""

from __future__ import annotations

import time

import pytest

from pipeline.core.config import ConfigError, ValidateConfig, build, compose
from pipeline.validation.genai_runner import WARMUP_NEW_TOKENS, run_tokens, speed_runs
from pipeline.validation.matrix import Perf


def test_no_budget_runs_warmup_then_every_repeat() -> None:
    assert list(speed_runs(1, 3, 0)) == [False, True, True, True]
    assert list(speed_runs(0, 2, 1e9)) == [True, True]


def test_a_spent_budget_keeps_the_warmup_and_one_measured_run() -> None:
    taken = []
    for measured in speed_runs(2, 5, 0.01):
        time.sleep(0.02)  # every run outlasts the whole budget
        taken.append(measured)
    assert taken == [False, False, True]


def test_the_budget_is_checked_before_each_run_not_after() -> None:
    taken = []
    for measured in speed_runs(1, 4, 0.05):
        taken.append(measured)
        time.sleep(0.03 if len(taken) < 3 else 0.0)
    # runs 1-2 take 0.06 s in all, past the budget: run 3 does not start
    assert taken == [False, True]


def test_perf_records_how_many_runs_its_medians_come_from() -> None:
    perf = Perf.from_runs(1024, 32, [900.0, 1000.0], [50.0, 70.0])
    assert perf.runs == 2 and perf.tpot_ms == 60.0 and perf.tokens_per_s == pytest.approx(16.67)


def test_default_budget_and_refused_negative_budget() -> None:
    cfg = build(ValidateConfig, compose([])["validate"], "validate")
    assert cfg.perf_budget_s == 120.0
    with pytest.raises(ConfigError, match="perf_budget_s"):
        build(ValidateConfig, {**compose([])["validate"], "perf_budget_s": -1}, "validate")


def test_the_npu_library_worker_keeps_the_same_budget(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The worker runs in the library's own environment; it gets ``perf_budget_s`` and applies the same rule."""
    from pipeline.npu_lib import validate as npu_lib_validate
    from pipeline.npu_lib import worker, worker_measure

    settings = {**compose([])["validate"], "perf_budget_s": 0.01, "warmup": 1, "repeats": 3}
    cfg = build(ValidateConfig, settings, "validate")
    argv = npu_lib_validate.worker_args(
        tmp_path / "m.pt", {"model_sha256": "0" * 64}, tmp_path, tmp_path / "r.json", cfg, tmp_path / "l.npz"
    )
    args = worker.parse(["validate", "--result", str(tmp_path / "out.json"), *argv])
    assert args.budget_s == 0.01

    asked = []

    def slow_generate(model, prompt_ids, new_tokens, streamer=None, exact=False):  # each run outlasts the budget
        asked.append(new_tokens)
        for _ in range(new_tokens + 1):
            streamer.put(None)
        time.sleep(0.02)
        return []

    monkeypatch.setattr(worker_measure, "drop_kernels", lambda: None)
    monkeypatch.setattr(worker_measure, "generate", slow_generate)
    got = worker_measure.timings(None, [1, 2, 3], args)
    assert len(got["ttft_ms"]) == len(got["tpot_ms"]) == 1  # warm-up, one measured run, then the budget stops it
    assert asked == [WARMUP_NEW_TOKENS, cfg.perf_new_tokens] and got["new_tokens"] == cfg.perf_new_tokens


def test_a_warmup_run_is_a_prefill_and_one_decode_step_not_a_whole_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm-ups compile and allocate (prefill, one decode step); only measured runs generate the configured length."""
    from pipeline.validation import genai_runner

    asked = []

    def fake_generate(model, prompt_ids, new_tokens, exact=False):
        asked.append((new_tokens, exact))
        return [0] * new_tokens, 0.5, [0.1] * (new_tokens - 1)

    monkeypatch.setattr(genai_runner, "generate", fake_generate)
    got = genai_runner.time_prompt(None, [1, 2, 3], 32, warmup=2, repeats=2)
    assert asked == [(WARMUP_NEW_TOKENS, True)] * 2 + [(32, True)] * 2
    assert got["ttft_ms"] == [500.0, 500.0] and got["new_tokens"] == 32
    assert run_tokens(False, 1) == 1  # a measured length below the warm-up's is not exceeded
