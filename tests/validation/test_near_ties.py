"""Every cell says how close PyTorch's own choice was where its greedy answer parts from PyTorch's (issue 35.7).

Only the OpenVINO NPU cell had a near-tie note; a divergence in an ONNX, Windows ML or NPU-library cell read the
same whether PyTorch itself hesitated there or not. The reference now records the margin (top-1 minus top-2
logit) of each answer token, and every cell judged by ``matrix.judge`` turns its divergences into notes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.validation import matrix
from pipeline.validation.prompts import NEAR_TIE, divergence_notes
from pipeline.validation.reference import greedy

TINY = Path(__file__).resolve().parents[2] / "pipeline" / "assets" / "tiny_phi3"


@pytest.fixture(scope="module")
def answer() -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    (case,) = greedy(model, tokenizer, ["What is the capital of France?"], 12)
    with torch.inference_mode():  # PyTorch's own margin at the first answer token, recomputed by a forward pass
        logits = model(torch.tensor([case["prompt_ids"]])).logits[0, -1]
    top = logits.topk(2).values
    return {**case, "first_margin": float(top[0] - top[1])}


def test_the_reference_records_the_margin_of_every_answer_token(answer: dict) -> None:
    assert len(answer["margins"]) == len(answer["output_ids"]) > 0
    assert all(m >= 0 for m in answer["margins"])
    assert answer["margins"][0] == pytest.approx(answer["first_margin"], abs=1e-3)


def test_every_judged_cell_notes_its_divergences_with_pytorchs_margin(answer: dict) -> None:
    reference = {"greedy": [answer, {**answer, "margins": [NEAR_TIE / 2] * len(answer["margins"])}]}
    wide = answer["margins"][0]
    notes = divergence_notes([0, 1], reference)
    assert notes[0].startswith(f"prompt 0 parts from PyTorch at token 0, where PyTorch's top two are {wide:.3g} apart")
    assert notes[0].endswith("(not a near tie)" if wide >= NEAR_TIE else "(a near tie)")
    assert notes[1].endswith("(a near tie)")
    assert divergence_notes([None, None], reference) == []
    # through the judge every family's cells use (ONNX, Windows ML, the NPU library, OpenVINO)
    got = matrix.Measurement("CPU", 0.1, 1.0, {}, {"top1_agreement": 1.0, "mean_kl": 0.0}, [[], answer["output_ids"]],
                             True, "")
    plan = matrix.CellPlan("CPU", "CPU")
    thresholds = matrix.Thresholds("fp16", None, None)
    cell = matrix.judge(plan, got, {**reference, "stop_token_ids": []}, thresholds, "test")
    assert cell.first_divergence == [0, None] and cell.divergence_notes == notes[:1]


def test_a_single_exact_match_figure_says_the_numerics_it_ran_at() -> None:
    """Issue 35.7: the exact-match column showed an NPU-library figure (fp16 activations, bf16 compute) under
    "(f32 / default)" with no word of what it ran at."""
    from pipeline.npu_lib.validate import library_numerics
    from pipeline.validation.report import exact_match

    got = matrix.Measurement("CPU", 0.1, 1.0, {}, {"top1_agreement": 1.0, "mean_kl": 0.0}, [[1]], True, "",
                             artifact_numerics=library_numerics("bf16"))
    cell = matrix.judge(matrix.CellPlan("CPU", "CPU"), got, {"greedy": [{"output_ids": [1]}], "stop_token_ids": []},
                        matrix.Thresholds("fp16", None, None), "test")
    assert exact_match(cell.__dict__) == "1.00 (at fp16 activations, bf16 compute (the library's; it cannot run at f32))"
    assert exact_match({"greedy_exact_match": 0.5, "greedy_exact_match_f32": 1.0}) == "1.00 / 0.50"
    assert exact_match({"greedy_exact_match": 0.5}) == "0.50"
