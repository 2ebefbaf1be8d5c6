"""The ONNX Runtime session entries a validation cell sets on the CPU provider (pipeline/onnx/validate.py).

On the tiny Phi-3: without the memory arena the int4 and fp16 graphs give the same logits bit for bit, and the
runner really lays the entries over genai_config.json (an entry the runtime rejects fails the load). Full-size
memory: docs/onnx.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import ModelConfig
from pipeline.hub import download
from pipeline.onnx import validate
from pipeline.onnx.config import OnnxVariantConfig
from pipeline.onnx.export import build, builder_options
from pipeline.validation import genai_runner

VARIANTS = {
    "dml_fp16": {"execution_provider": "dml", "precision": "fp16"},
    "cpu_int4": {"execution_provider": "cpu", "precision": "int4", "block_size": 32, "accuracy_level": 4},
}
WINDOWS = [list(range(100, 400)), list(range(1000, 1064))]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cpu-session")
    download.run(ModelConfig.preset("tiny"), root / "model")
    out = {}
    for name, params in VARIANTS.items():
        cfg = OnnxVariantConfig.from_conf(**params)
        out[name] = root / name
        out[name].mkdir()
        build(root / "model", out[name], cfg, builder_options(cfg))
    return out


def logits(folder: Path, options: dict[str, str | bool] | None) -> list[np.ndarray]:
    model, _, _ = genai_runner.load(str(folder), "dml" if "dml" in folder.name else "cpu", "CPU", options)
    return genai_runner.prefill_logits(model, WINDOWS)


def test_cells_on_the_cpu_run_without_the_arena_and_other_devices_as_built() -> None:
    assert validate.session_options("CPU") == {"enable_cpu_mem_arena": False}
    assert validate.session_options("DML") == validate.session_options("CUDA") == {}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_arena_gives_the_same_logits_bit_for_bit(folders: dict[str, Path], variant: str) -> None:
    default, lean = logits(folders[variant], None), logits(folders[variant], validate.CPU_SESSION_OPTIONS)
    assert all(np.array_equal(a, b) for a, b in zip(default, lean, strict=True))


def test_the_runner_lays_the_entries_over_genai_config(folders: dict[str, Path]) -> None:
    with pytest.raises(Exception, match="Unrecognized value"):
        genai_runner.load(str(folders["cpu_int4"]), "cpu", "CPU", {"graph_optimization_level": "ORT_ENABLE_SOME"})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_prefill_in_chunks_fills_the_same_logits_as_one_prompt(folders: dict[str, Path], variant: str) -> None:
    """Chunks (graphs with a windowed KV cache) are written into one array per window, in order, none missing."""
    model, _, _ = genai_runner.load(str(folders[variant]), "dml" if "dml" in variant else "cpu", "CPU")
    whole, chunked = genai_runner.prefill_logits(model, WINDOWS), genai_runner.prefill_logits(model, WINDOWS, chunk=128)
    for a, b in zip(whole, chunked, strict=True):
        assert a.shape == b.shape and np.isfinite(b).all()
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
