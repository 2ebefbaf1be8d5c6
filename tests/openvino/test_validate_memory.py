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

from pipeline.core.memory import MappedPageTrimmer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def mapped_rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


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
