"""Tied embeddings in the ONNX family (issue 21, item 4): what is quantized, at which bits, and whether the tie survives.

The OpenVINO side is in tests/openvino/test_phi4_overrides.py (one int8 matrix shared by Gather and LM head).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import ASSETS_DIR
from pipeline.onnx.config import OnnxVariantConfig
from pipeline.onnx.export import build, builder_options
from pipeline.onnx.inspect import inspect_onnx

TINY_PHI4 = ASSETS_DIR / "tiny_phi4"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The tiny Phi-4's cpu int4 folder with the builder's default (shared) and with shared_embeddings off."""
    root = tmp_path_factory.mktemp("tied")
    out = {}
    for name, extra in (("shared", {}), ("unshared", {"shared_embeddings": False})):
        cfg = OnnxVariantConfig(execution_provider="cpu", precision="int4", block_size=32, extra_options=extra)
        folder: Path = root / name
        folder.mkdir()
        build(TINY_PHI4, folder, cfg, builder_options(cfg))
        out[name] = inspect_onnx(folder)
    return out


def test_the_builder_keeps_the_tie_at_the_lm_heads_4_bits(built: dict[str, dict]) -> None:
    tie = built["shared"]["tied_embeddings"]
    assert tie["shared_constant"] and tie["embedding"]["layer"].startswith("/model/embed_tokens")
    assert (tie["embedding"]["precision"], tie["lm_head"]["precision"]) == ("int4", "int4")


def test_without_shared_embeddings_the_matrix_is_stored_twice(built: dict[str, dict]) -> None:
    tie = built["unshared"]["tied_embeddings"]
    assert not tie["shared_constant"] and tie["lm_head"]["precision"] == "int4"
