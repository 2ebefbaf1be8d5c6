"""The ONNX export refuses, in one line and before building, a model whose rotary GroupQueryAttention cannot run.

onnxruntime's GroupQueryAttention needs its cos cache (rotary_dim / 2 wide) to be at most head_size / 2 and a
multiple of 8. Phi-4-mini (head 128, partial_rotary_factor 0.75: cache 48) passes; a tiny head of 32 at 0.75
(cache 12) does not. The rule is checked here against the kernel itself, then the export stage is shown to
refuse such a checkpoint without writing anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import partial_rotary_model

from pipeline.core.refusal import Refused
from pipeline.core.workspace import Workspace
from pipeline.onnx import export
from pipeline.onnx.config import OnnxVariantConfig
from pipeline.onnx.inspect import gqa_rotary_problem

TINY_PHI4 = Path(__file__).resolve().parents[2] / "pipeline" / "assets" / "tiny_phi4" / "config.json"


def run_gqa_kernel(head_size: int, cache_width: int) -> str | None:
    """Run onnxruntime's GroupQueryAttention (CPU, rotary inside) once; its error text, or None if it ran."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    heads, kv_heads, seq = 2, 1, 4
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("query", f32, [1, seq, heads * head_size]),
        helper.make_tensor_value_info("key", f32, [1, seq, kv_heads * head_size]),
        helper.make_tensor_value_info("value", f32, [1, seq, kv_heads * head_size]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("cos_cache", f32, [seq, cache_width]),
        helper.make_tensor_value_info("sin_cache", f32, [seq, cache_width]),
    ]
    node = helper.make_node(
        "GroupQueryAttention",
        ["query", "key", "value", "", "", "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache"],
        ["output", "present_key", "present_value"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv_heads,
        do_rotary=1,
    )
    outputs = [helper.make_tensor_value_info(n, f32, None) for n in ("output", "present_key", "present_value")]
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {
        "query": rng.standard_normal((1, seq, heads * head_size), dtype=np.float32),
        "key": rng.standard_normal((1, seq, kv_heads * head_size), dtype=np.float32),
        "value": rng.standard_normal((1, seq, kv_heads * head_size), dtype=np.float32),
        "seqlens_k": np.array([seq - 1], dtype=np.int32),
        "total_sequence_length": np.array(seq, dtype=np.int32),
        "cos_cache": np.ones((seq, cache_width), dtype=np.float32),
        "sin_cache": np.zeros((seq, cache_width), dtype=np.float32),
    }
    try:
        session.run(None, feed)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidArgument types
        return str(err)
    return None


@pytest.mark.parametrize(
    ("head_size", "partial"), [(32, 0.75), (128, 0.75), (64, 1.0), (96, 1.0), (64, 0.5), (48, 1.0)]
)
def test_the_rule_matches_onnxruntimes_kernel(head_size: int, partial: float) -> None:
    config = {"num_attention_heads": 2, "hidden_size": 2 * head_size, "partial_rotary_factor": partial}
    problem = gqa_rotary_problem(config, "cpu")
    kernel_error = run_gqa_kernel(head_size, int(head_size * partial) // 2)
    assert (problem is None) == (kernel_error is None), (problem, kernel_error)
    if kernel_error is not None:
        assert "cos_cache dimension 1 must be <= head_size / 2 and a multiple of 8" in kernel_error
        assert "\n" not in problem and f"head_size / 2 = {head_size // 2}" in problem


def test_phi4_mini_shapes_pass_and_dml_is_not_checked() -> None:
    phi4_mini = {"hidden_size": 3072, "num_attention_heads": 24, "rope_parameters": {"partial_rotary_factor": 0.75}}
    assert gqa_rotary_problem(phi4_mini, "cpu") is None
    if TINY_PHI4.is_file():  # the embedded Phi-4-shaped model has the same head and rotary
        assert gqa_rotary_problem(json.loads(TINY_PHI4.read_text(encoding="utf-8")), "cpu") is None
    small = {"hidden_size": 64, "num_attention_heads": 2, "partial_rotary_factor": 0.75}
    assert gqa_rotary_problem(small, "dml") is None  # DML rotates in a separate RotaryEmbedding op
    assert gqa_rotary_problem(small, "webgpu") is not None


def test_export_refuses_a_head_32_partial_rotary_checkpoint_before_building(tmp_path: Path) -> None:
    """A random tiny Phi-3 with head 32 and partial_rotary_factor 0.75: one line, nothing written."""
    model_dir = partial_rotary_model(tmp_path / "model", seed=0)
    (model_dir / "manifest.json").write_text(json.dumps({"source": "test"}), encoding="utf-8")
    out_root = tmp_path / "onnx"
    cfg = OnnxVariantConfig.from_conf(execution_provider="cpu", precision="int4", block_size=32)
    with pytest.raises(Refused) as exc:  # a result: run_stage records it (tests/core/test_refusal.py)
        export.run("cpu_int4", cfg, Workspace(model=model_dir, out=out_root))
    message = str(exc.value)
    assert "\n" not in message
    assert "cos_cache would be 12 wide (head size 32 x partial_rotary_factor 0.75 / 2)" in message
    assert "<= head_size / 2 = 16 and a multiple of 8" in message
    assert not out_root.exists(), "refused before the builder wrote anything"
