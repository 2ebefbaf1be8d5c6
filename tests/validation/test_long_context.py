"""Long-context fidelity on the LongRoPE + GQA tiny preset (``model=tiny-128k``), on both sides of 4096.

A project copy runs the OpenVINO part of the pipeline with ``dvc repro`` (download, reference, base IR,
int4/int8/fp16 and the NPU IR, their validation). Every IR, fp16 included, must pass the long-context ranges
of a short-factor (3000-token) and a long-factor (6000-token) window. Then the fp16 IR's LongRoPE long
factors are broken (scaled by 1.5, a new IR): validation must fail past the switch and only there.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.workspace import Workspace
from pipeline.core.config import ValidateConfig, build, compose
from pipeline.core.errors import StageError
from pipeline.openvino import validate

from conftest import make_project, run_cmd

STAGES = ["validate@int4", "validate@int8", "validate@fp16", "validate_npu@int4"]


@pytest.fixture(scope="module")
def long_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("long"))
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny-128k"], project)
    run_cmd([sys.executable, "-m", "dvc", "repro", *STAGES], project)
    return project


@pytest.mark.slow
def test_every_ir_passes_long_context_on_both_sides_of_the_longrope_switch(long_project: Path) -> None:
    reference = json.loads((long_project / "artifacts" / "reference" / "reference.json").read_text(encoding="utf-8"))
    assert reference["long_context"]["limits"]["original_max_position_embeddings"] == 4096
    assert [len(w) for w in reference["long_context"]["windows"]] == [3000, 6000]
    for name in ("openvino-int4", "openvino-int8", "openvino-fp16", "npu-int4"):
        metrics = json.loads((long_project / "artifacts" / "metrics" / f"{name}.json").read_text(encoding="utf-8"))
        cell = next(c for c in metrics["cells"].values() if c["status"] != "skipped")
        assert cell["status"] == "passed", (name, cell["problems"])
        spans = {(r["window"], r["start"], r["stop"]) for r in cell["long_context"]}
        assert spans == {(3000, 0, 1024), (3000, 1024, 3000), (6000, 0, 1024), (6000, 1024, 4096), (6000, 4096, 6000)}
    fp16 = json.loads((long_project / "artifacts" / "metrics" / "openvino-fp16.json").read_text(encoding="utf-8"))["cells"]["CPU"]
    # rotary constants kept in f32: the fp16 IR follows PyTorch at every position (upstream's drift to 0.98)
    assert min(r["top1_agreement"] for r in fp16["long_context"]) >= 0.999


def break_long_factors(src: Path, dest: Path, scale: float) -> None:
    """Copy the IR folder ``src`` to ``dest`` with LongRoPE's long factors scaled by ``scale`` (a new IR)."""
    import openvino as ov
    from openvino import opset13 as ops

    from pipeline.openvino import rotary

    config = json.loads((src.parent.parent / "model" / "config.json").read_text(encoding="utf-8"))
    long_factor = np.array(config["rope_parameters"]["long_factor"], dtype=np.float32)
    shutil.copytree(src, dest)
    model = ov.Core().read_model(str(src / "openvino_model.xml"))
    nodes, subgraph = rotary.rotary_of_model(model)
    hits = [nodes[k] for k in subgraph.constants if nodes[k].get_output_shape(0) == list(long_factor.shape)
            and np.allclose(nodes[k].get_data(), long_factor)]
    assert len(hits) == 1, "expected one long-factor constant in the rotary subgraph"
    hits[0].output(0).replace(ops.constant(long_factor * scale, dtype=np.float32).output(0))
    for name in ("openvino_model.xml", "openvino_model.bin"):
        (dest / name).unlink()
    ov.save_model(model, str(dest / "openvino_model.xml"), compress_to_fp16=False)


@pytest.mark.slow
def test_a_broken_rope_factor_fails_the_long_context_check_past_the_switch(long_project: Path, tmp_path: Path) -> None:
    artifacts = long_project / "artifacts"
    broken = tmp_path / "openvino" / "fp16"
    break_long_factors(artifacts / "openvino" / "fp16", broken, 1.5)
    params = compose(["model=tiny-128k", "validate.repeats=1", "validate.warmup=0", "validate.emulate_numerics=[]",
                      "validate.perf_prompt_tokens={short: 32}"])
    cfg = build(ValidateConfig, params["validate"])
    target = validate.Target("openvino-fp16", "openvino", broken, ["CPU"])
    with pytest.raises(StageError) as exc:
        validate.run(target, cfg, Workspace(reference=artifacts / "reference" / "reference.json", metrics=tmp_path / "metrics"))
    assert "\n" not in str(exc.value) and "long context, 6000-token window" in str(exc.value)
    cell = json.loads((tmp_path / "metrics" / "openvino-fp16.json").read_text(encoding="utf-8"))["cells"]["CPU"]
    assert all("6000-token window" in p for p in cell["problems"]), "short-factor positions are untouched"
    by_window = {r["window"]: r["top1_agreement"] for r in cell["long_context"] if r["start"] == 1024}
    assert by_window[3000] >= 0.999 and by_window[6000] < cfg.long_context.min_top1_agreement["fp16"]
