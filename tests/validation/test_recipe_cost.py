"""Broken or costly (issue 34 item 3): a failed fidelity is measured against the recipe's own cost on the model.

The fast tests check the grids (levels, groups, fallbacks) and the verdict rule. The ``slow`` ones use the demo
project: the PyTorch model rounded as each family's recipe says lands where the family's healthy artifact does
(so the bound is the recipe's cost, not a guess), an IR whose limits are tightened past its recipe's cost fails
as ``costly`` and names the data-aware recipe, and an IR with a zeroed layer fails as ``broken``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import mapped_rss_kb
from test_report import tiny_cfg, zero_layer

from pipeline.core.errors import StageError
from pipeline.core.manifest import read_manifest
from pipeline.core.workspace import Workspace
from pipeline.openvino import validate
from pipeline.validation import matrix, recipe_cost
from pipeline.validation.evidence import Evidence
from pipeline.validation.recipe_cost import Grid


def levels(weight: torch.Tensor, group: int) -> int:
    """The most distinct values any group of ``weight``'s rows holds."""
    rows, inputs = weight.shape
    return max(len(set(g.tolist())) for g in weight.reshape(rows, inputs // group, group).reshape(-1, group))


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_rounding_leaves_at_most_two_to_the_bits_levels_per_group(bits: int, symmetric: bool) -> None:
    weight = torch.randn(8, 256, generator=torch.Generator().manual_seed(0))
    rounded = recipe_cost.round_to_grid(weight.clone(), Grid(bits, 64, symmetric))
    assert levels(rounded, 64) <= 2**bits and not torch.equal(rounded, weight)
    step = (weight.reshape(8, 4, 64).amax(-1) - weight.reshape(8, 4, 64).amin(-1)).max() / (2**bits - 1)
    assert (rounded - weight).abs().max() <= step  # round to nearest: never further than one level away


def test_groups_follow_each_runtimes_rule_where_the_group_does_not_divide_the_width() -> None:
    assert recipe_cost.group_of(576, Grid(4, 128, True, "adjust")) == 64  # NNCF: largest power-of-two divisor
    assert recipe_cost.group_of(576, Grid(4, 128, True, "channel")) == 576  # the NPU: channel-wise
    assert recipe_cost.group_of(576, Grid(4, 128, True, "ragged")) == 128  # MatMulNBits: a short last block
    weight = torch.randn(4, 576, generator=torch.Generator().manual_seed(1))
    ragged = recipe_cost.round_to_grid(weight.clone(), Grid(4, 128, True, "ragged"))
    assert levels(ragged[:, :512], 128) <= 16 and len(set(ragged[0, 512:].tolist())) <= 16
    assert torch.equal(recipe_cost.round_to_grid(weight.clone(), Grid(16)), weight.half().float())


def failed(top1: float, kl: float) -> matrix.Cell:
    return matrix.Cell("CPU", "CPU", "failed", "x", top1_agreement=top1, mean_kl=kl,
                       problems=["artifact fidelity (f32 runtime): top-1 agreement below the int4 threshold 0.85"])


def test_the_verdict_is_costly_near_the_recipes_cost_and_broken_far_from_it() -> None:
    bound = {"top1_agreement": 0.62, "mean_kl": 0.44, "perplexity_delta_pct": 28.0}
    assert recipe_cost.verdict(failed(0.666, 0.31), bound) == "costly"  # better than the all-int4 bound
    assert recipe_cost.verdict(failed(0.60, 0.55), bound) == "costly"  # within the margins
    assert recipe_cost.verdict(failed(0.46, 1.21), bound) == "broken"  # SmolLM2 int4 with layer 2 zeroed
    fp16 = {"top1_agreement": 1.0, "mean_kl": 0.0, "perplexity_delta_pct": 0.0}
    assert recipe_cost.verdict(failed(0.70, 0.24), fp16) == "broken"  # the tiny fp16 IR with a zeroed layer


def test_a_long_context_defect_is_broken_even_where_the_short_windows_match_the_recipe() -> None:
    fp16 = {"top1_agreement": 1.0, "mean_kl": 0.0, "perplexity_delta_pct": 0.0}
    cell = failed(1.0, 0.0)
    cell.long_context = [{"top1_agreement": 1.0, "mean_kl": 0.0}, {"top1_agreement": 0.80, "mean_kl": 0.05}]
    assert recipe_cost.verdict(cell, fp16) == "broken"  # LongRoPE's long factors x1.5: positions past 4096 only
    cell.long_context = cell.long_context[:1]
    assert recipe_cost.verdict(cell, fp16) == "costly"


def test_a_checkpoint_other_than_the_references_gets_no_verdict(tmp_path: Path) -> None:
    from pipeline.core.manifest import write_manifest

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}", encoding="utf-8")
    write_manifest(tmp_path / "model", stage="download")
    ref = Evidence({}, None, None, {"config.json": "0" * 64})  # type: ignore[arg-type]
    assert not recipe_cost.same_model(tmp_path / "model", ref)
    cells = {"CPU": failed(0.5, 0.5)}
    assert recipe_cost.attach(cells, "openvino", {"parameters": {"weight_format": "fp16"}}, "openvino.fp16",
                              tmp_path / "model", ref) is None
    assert cells["CPU"].recipe_cost is None


def test_nothing_is_measured_when_no_cell_failed_its_fidelity(tmp_path: Path) -> None:
    cells = {"CPU": matrix.Cell("CPU", "CPU", "failed", "x", problems=["asked for GPU but ran on CPU"])}
    # neither the model folder nor the evidence exists: attach must not reach for them
    assert recipe_cost.attach(cells, "openvino", {}, "openvino.int4", tmp_path / "none", None) is None  # type: ignore[arg-type]
    assert cells["CPU"].recipe_cost is None


@pytest.mark.slow
@pytest.mark.parametrize("family,variant", [("npu", "int4"), ("onnx", "cpu_int4"), ("openvino", "int8")])
def test_the_recipe_in_pytorch_lands_where_the_healthy_artifact_does(demo_project, family: str, variant: str) -> None:
    project, _ = demo_project
    artifacts = project / "artifacts"
    rounding = recipe_cost.rounding_of(family, read_manifest(artifacts / family / variant), f"{family}.{variant}")
    assert rounding is not None
    evidence = Evidence.load(artifacts / "reference" / "reference.json")
    bound = recipe_cost.measure(artifacts / "model", evidence.windows, evidence.logprobs, rounding)
    got = json.loads((artifacts / "metrics" / f"{family}-{variant}.json").read_text(encoding="utf-8"))
    assert abs(bound["top1_agreement"] - got["top1_agreement"]) <= 0.01, (rounding.label, bound, got)
    assert abs(bound["mean_kl"] - got["mean_kl"]) <= 0.1 * got["mean_kl"] + 1e-5, (rounding.label, bound, got)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps; pages go back via madvise")
def test_the_pass_hands_the_checkpoints_pages_back(demo_project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every weight is read once from the mapped checkpoint: kept resident, they added 7.1 GiB to a failed
    validate@int4's peak at full size (9.6 GiB). When the logits are compared, the model still mapped, they are back."""
    project, _ = demo_project
    artifacts = project / "artifacts"
    checkpoint = (artifacts / "model" / "model.safetensors").resolve()
    resident: list[int] = []
    compare = recipe_cost.fidelity.compare

    def spy(ref, logits):  # runs inside measure(), the rounded model alive and its checkpoint mapped
        resident.append(mapped_rss_kb(checkpoint))
        return compare(ref, logits)

    monkeypatch.setattr(recipe_cost.fidelity, "compare", spy)
    evidence = Evidence.load(artifacts / "reference" / "reference.json")
    rounding = recipe_cost.rounding_of("openvino", read_manifest(artifacts / "openvino" / "int8"), "openvino.int8")
    assert rounding is not None
    bound = recipe_cost.measure(artifacts / "model", evidence.windows, evidence.logprobs, rounding)
    assert bound["top1_agreement"] > 0.9  # the pass read the weights (a rounded int8 model, not an empty one)
    assert resident and resident[0] < checkpoint.stat().st_size // 1024 // 8, (resident, checkpoint.stat().st_size)


def workspace(project: Path, metrics: Path) -> Workspace:
    artifacts = project / "artifacts"
    return Workspace(model=artifacts / "model", reference=artifacts / "reference" / "reference.json", metrics=metrics)


@pytest.mark.slow
def test_an_int4_ir_held_past_its_recipes_cost_fails_as_costly_and_names_gptq(demo_project, tmp_path: Path) -> None:
    project, _ = demo_project
    cfg = tiny_cfg("validate.repeats=1", "validate.warmup=0", "validate.emulate_numerics=[]",
                   "validate.perf_prompt_tokens={short: 32}", "validate.min_top1_agreement.int4=0.999")
    target = validate.Target("openvino-int4", "openvino", project / "artifacts" / "openvino" / "int4", ["CPU"])
    with pytest.raises(StageError, match=r"CPU: costly, not broken: PyTorch with this recipe's rounding"):
        validate.run(target, cfg, workspace(project, tmp_path))
    cell = json.loads((tmp_path / "openvino-int4.json").read_text(encoding="utf-8"))["cells"]["CPU"]
    assert cell["recipe_cost"]["verdict"] == "costly" and "layers int4 sym g128" in cell["recipe_cost"]["rounding"]
    assert "-S openvino.int4.gptq=true -S openvino.int4.dataset=heldout" in cell["recipe_cost"]["explanation"]
    assert cell["problems"][0].startswith("artifact fidelity (f32 runtime): top-1 agreement")


@pytest.mark.slow
def test_an_ir_with_a_zeroed_layer_fails_as_broken(demo_project, tmp_path: Path) -> None:
    project, _ = demo_project
    zero_layer(project / "artifacts" / "openvino" / "fp16", tmp_path / "openvino" / "fp16", "layers.1.mlp.down_proj")
    cfg = tiny_cfg("validate.repeats=1", "validate.warmup=0", "validate.emulate_numerics=[]",
                   "validate.perf_prompt_tokens={short: 32}")
    target = validate.Target("openvino-fp16", "openvino", tmp_path / "openvino" / "fp16", ["CPU"])
    with pytest.raises(StageError, match=r"CPU: broken: far outside this recipe's own cost \(PyTorch with"):
        validate.run(target, cfg, workspace(project, tmp_path / "metrics"))
    cell = json.loads((tmp_path / "metrics" / "openvino-fp16.json").read_text(encoding="utf-8"))["cells"]["CPU"]
    assert cell["recipe_cost"]["verdict"] == "broken" and cell["recipe_cost"]["top1_agreement"] == 1.0
