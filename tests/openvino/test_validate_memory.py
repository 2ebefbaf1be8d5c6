"""Validation hands back the IR's mapped weight pages once OpenVINO has packed the weights (peak RSS halves).

OpenVINO memory-maps ``openvino_model.bin``; the CPU plugin packs the weights into its own buffers at the first
inference and never reads the mapped pages again, yet they stay resident and count in the stage's peak. Measured on
a 1.1 GB fp16 IR (docs/benchmarks.md): 1.97 GB peak without the trimmer, 1.10 GB with it, identical logits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import mapped_rss_kb

from pipeline.core.memory import MappedPageTrimmer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def fp16_ir(folder: Path, n: int = 2048) -> Path:
    """A one-MatMul IR with an n x n fp16 weight (8 MiB at 2048), saved as OpenVINO saves exported IRs."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([1, n], np.float32, name="x")
    weight = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    model = ov.Model([ops.matmul(x, ops.constant(weight), False, True)], [x], "one_matmul")
    ov.save_model(model, folder / "openvino_model.xml", compress_to_fp16=True)
    return folder / "openvino_model.bin"


@pytest.mark.parametrize("trim", [False, True], ids=["as-openvino-leaves-it", "trimmed"])
def test_the_ir_pages_go_back_after_the_weights_are_packed(trim: bool, tmp_path: Path) -> None:
    import openvino as ov

    bin_file = fp16_ir(tmp_path)
    with MappedPageTrimmer([bin_file] if trim else []) as trimmer:
        compiled = ov.Core().compile_model(tmp_path / "openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        x = np.ones((1, 2048), np.float32)
        first = compiled(x)[0].copy()
        if trim:
            trimmer.trim()
        resident = mapped_rss_kb(bin_file.resolve())
        again = compiled(x)[0]
    np.testing.assert_array_equal(first, again)  # the plugin never needed the pages it gave back
    weight_kb = bin_file.stat().st_size // 1024
    if trim:
        assert resident < weight_kb // 8, f"{resident} kB of the {weight_kb} kB weight file still resident"
    else:
        assert resident > weight_kb // 2, "OpenVINO keeps the mapped weights resident (what the trimmer fixes)"


def test_an_emulation_cell_over_the_cap_is_skipped_with_one_line_before_it_compiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """f16 compute on the CPU plugin unpacks the weights (14.8 GB for Phi-3-mini's int4 IR): an emulation cell is an
    extra, so over ``validate.stand_in_max_ram_gib`` it is skipped, never run, and the stage goes on."""
    from pipeline.core.config import ValidateConfig
    from pipeline.openvino import numerics, validate

    fp16_ir(tmp_path)
    assert numerics.weight_count(tmp_path) == 2048 * 2048
    assert numerics.emulation_ram("f16", tmp_path) > 3.9 * 2048 * 2048 and numerics.emulation_ram("bf16", tmp_path) == 0
    runnable = [numerics.EmulationPlan("f16", "CPU f16 compute", "CPU f16 compute (emulated)")]
    monkeypatch.setattr(numerics, "emulation_plans", lambda precisions, core=None: runnable)
    target = validate.Target("openvino-x", "openvino", tmp_path, ["CPU"])
    cfg = ValidateConfig.from_conf(prompts=["x"], stand_in_max_ram_gib=0.01)  # 10 MiB: under the 16 MiB weight's need
    cell = validate.emulation_cells(target, cfg, None, None, {})["CPU f16 compute"]  # type: ignore[arg-type]
    assert cell.status == "skipped" and "\n" not in cell.reason
    assert cell.reason.startswith("not run here: the CPU f16 compute cell of openvino-x (the CPU plugin unpacks")
    assert "validate.stand_in_max_ram_gib=0.01 GiB" in cell.reason
