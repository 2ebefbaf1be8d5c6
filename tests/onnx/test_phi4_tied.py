"""Tied embeddings in the ONNX family (issue 21, item 4): what is quantized, at which bits, and whether the tie survives.

The OpenVINO side is in tests/openvino/test_phi4_overrides.py (one int8 matrix shared by Gather and LM head), the
Windows ML one in tests/winml/test_winml_tie.py, the NPU library's in tests/npu_lib/test_npu_lib_layers.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.config import ModelConfig
from pipeline.core.workspace import Workspace
from pipeline.hub import download
from pipeline.onnx import export
from pipeline.onnx.config import OnnxVariantConfig

LINEAR_PER_LAYER = 5  # a decoder layer as the builder writes it: qkv_proj, o_proj, gate_proj, up_proj, down_proj


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], int]:
    """The export manifests of the tiny Phi-4's cpu int4 folder with the builder's default (shared) and with
    shared_embeddings off, and the model's number of decoder layers."""
    root = tmp_path_factory.mktemp("tied")
    download.run(ModelConfig.preset("tiny-phi4"), root / "model")
    out = {}
    for name, extra in (("shared", {}), ("unshared", {"shared_embeddings": False})):
        cfg = OnnxVariantConfig.from_conf(execution_provider="cpu", precision="int4", block_size=32, extra_options=extra)
        out[name] = export.run(name, cfg, Workspace(model=root / "model", out=root / "onnx"))
    layers = json.loads((root / "model" / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    return out, layers


def test_the_builder_keeps_the_tie_at_the_lm_heads_4_bits(built: tuple[dict[str, dict], int]) -> None:
    manifests, layers = built
    tie = manifests["shared"]["tied_embeddings"]  # the manifest's record: the graph's, with the checkpoint's tie
    assert tie == {"checkpoint_tied": True, **manifests["shared"]["structure"]["tied_embeddings"]}
    assert tie["shared_constant"] and tie["embedding"]["layer"].startswith("/model/embed_tokens")
    assert (tie["embedding"]["precision"], tie["lm_head"]["precision"]) == ("int4", "int4")
    quantized = manifests["shared"]["structure"]["quantization"]
    # every linear layer and the LM head are 4-bit MatMulNBits; the embedding reads the LM head's weight through
    # one GatherBlockQuantized; nothing stays a float MatMul
    assert quantized["matmul_nbits"] == quantized["bits"][4] == LINEAR_PER_LAYER * layers + 1
    assert quantized["gather_block_quantized"] == 1
    assert manifests["shared"]["structure"]["float_weight_matmuls"] == []


def test_without_shared_embeddings_the_matrix_is_stored_twice(built: tuple[dict[str, dict], int]) -> None:
    manifests, layers = built
    tie = manifests["unshared"]["tied_embeddings"]
    assert tie["checkpoint_tied"] and not tie["shared_constant"] and tie["lm_head"]["precision"] == "int4"
    assert tie["embedding"]["precision"] == "float"  # the embedding keeps its own float copy
    quantized = manifests["unshared"]["structure"]["quantization"]
    assert quantized["matmul_nbits"] == LINEAR_PER_LAYER * layers + 1 and quantized["gather_block_quantized"] == 0
