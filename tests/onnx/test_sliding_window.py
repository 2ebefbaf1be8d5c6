"""Sliding-window attention in the ONNX folders: the kernel's window against transformers' mask, and the export fix.

onnxruntime-genai 0.18's builder writes ``local_window_size -1`` (full attention) on every Phi-3 layer; the export
restores the window transformers applies (pipeline/onnx/sliding_window.py, docs/onnx.md "Sliding window").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_DIR

from pipeline.core.config import ModelConfig
from pipeline.core.workspace import Workspace
from pipeline.hub import download
from pipeline.onnx import export
from pipeline.onnx.config import OnnxVariantConfig
from pipeline.onnx.sliding_window import graph_windows, transformers_windows, window_problems
from pipeline.onnx.validate import sliding_window_note

TINY_CONFIG = json.loads((TINY_DIR / "config.json").read_text(encoding="utf-8"))
WINDOW = TINY_CONFIG["sliding_window"]  # 2047
LENGTH = WINDOW + 80  # positions on both sides of the window


def gqa_graph(window: int, heads: int, head_size: int) -> bytes:
    """One GroupQueryAttention node (no rotary, empty past), as the builder wires it, with ``local_window_size``."""
    from onnx import TensorProto, helper

    hidden = heads * head_size
    node = helper.make_node(
        "GroupQueryAttention",
        ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"],
        ["output", "present_key", "present_value"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=heads,
        local_window_size=window,
    )
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s", hidden]) for n in ("query", "key", "value")]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", heads, "p", head_size]) for n in ("past_key", "past_value")]
    inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["b"]),
               helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("output", "present_key", "present_value")]
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def test_gqa_local_window_size_keeps_the_keys_of_transformers_sliding_window_mask() -> None:
    """``local_window_size=W`` attends where transformers' ``sliding_window=W`` does (``0 <= q - k < W``)."""
    import onnxruntime as ort
    import torch
    from transformers.masking_utils import sliding_window_causal_mask_function

    heads, head_size, length, window = 2, 8, 24, 5
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, length, heads * head_size)).astype(np.float32) for _ in range(3))

    pos = torch.arange(length)
    distance = pos[:, None] - pos[None, :]
    mask = sliding_window_causal_mask_function(window)(0, 0, pos[:, None], pos[None, :])
    assert mask.equal((distance >= 0) & (distance < window)), "transformers' window: W keys, the query's own included"

    def transformers_attention(sliding_window: int) -> np.ndarray:
        mask = sliding_window_causal_mask_function(sliding_window)(0, 0, pos[:, None], pos[None, :])
        split = [torch.from_numpy(x).view(1, length, heads, head_size).transpose(1, 2) for x in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*split, attn_mask=mask)
        return out.transpose(1, 2).reshape(1, length, heads * head_size).numpy()

    session = ort.InferenceSession(gqa_graph(window, heads, head_size), providers=["CPUExecutionProvider"])
    empty = np.zeros((1, heads, 0, head_size), np.float32)
    feed = {"query": q, "key": k, "value": v, "past_key": empty, "past_value": empty,
            "seqlens_k": np.array([length - 1], np.int32), "total_sequence_length": np.array(length, np.int32)}
    got = session.run(["output"], feed)[0]
    np.testing.assert_allclose(got, transformers_attention(window), atol=1e-5)
    for off_by_one in (window - 1, window + 1):  # the comparison tells a window of one key more or less apart
        assert np.abs(got - transformers_attention(off_by_one)).max() > 1e-2


def test_transformers_windows_follow_the_checkpoint() -> None:
    assert transformers_windows(TINY_CONFIG, 2) == [2047, 2047]
    # a window as long as the context never masks a key (Phi-3-mini-128k, Phi-4-mini): full attention, as built
    assert transformers_windows({**TINY_CONFIG, "sliding_window": 262144}, 2) == [-1, -1]
    assert transformers_windows({**TINY_CONFIG, "sliding_window": None}, 2) == [-1, -1]
    mixed = {**TINY_CONFIG, "layer_types": ["sliding_attention", "full_attention"]}
    assert transformers_windows(mixed, 2) == [2047, -1]
    assert window_problems([-1, -1], TINY_CONFIG) == [
        "GroupQueryAttention local_window_size [-1, -1] in layers [0, 1], transformers attends with window "
        "[2047, 2047] (sliding_window 2047)"
    ]
    assert window_problems([2047, 2047], TINY_CONFIG) == []


def window_ids() -> list[int]:
    from transformers import AutoTokenizer

    from pipeline.validation.reference import heldout_ids

    return heldout_ids(AutoTokenizer.from_pretrained(TINY_DIR))[:LENGTH]


def transformers_logits(ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids]), use_cache=False).logits[0].numpy()


def genai_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Teacher-forced logits from onnxruntime-genai: the whole window as one prompt, as validation runs it."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return np.asarray(generator.get_output("logits"), dtype=np.float32)[0]


@pytest.mark.slow
@pytest.mark.parametrize("windowed_kv_cache", [False, True])
def test_exported_graph_follows_transformers_past_the_sliding_window(
    tmp_path: Path, windowed_kv_cache: bool
) -> None:
    """The fp32 CPU graph, full-length cache or the builder's windowed one, equals PyTorch at every position."""
    model_dir = tmp_path / "model"
    download.run(ModelConfig.preset("tiny"), model_dir)
    cfg = OnnxVariantConfig.from_conf(
        execution_provider="cpu", precision="fp32", extra_options={"windowed_kv_cache": windowed_kv_cache}
    )
    manifest = export.run("cpu_fp32", cfg, Workspace(model=model_dir, out=tmp_path / "onnx"))
    folder = tmp_path / "onnx" / "cpu_fp32"
    assert manifest["structure"]["attention_windows"] == [WINDOW, WINDOW]
    assert manifest["sliding_window_fix"]["local_window_size"] == {"written_by_builder": [-1, -1], "now": [WINDOW] * 2}
    ids = window_ids()
    want, got = transformers_logits(ids), genai_logits(folder, ids)
    assert np.abs(got - want).max() < 1e-3, "the graph departs from transformers (full attention past the window?)"
    assert (got[WINDOW:].argmax(-1) == want[WINDOW:].argmax(-1)).all()


@pytest.mark.slow
def test_a_graph_with_the_builders_window_fails_the_export_check(tmp_path: Path) -> None:
    """The structural check reads the window back: a graph left at -1 (the builder's) is named in one line."""
    import onnx

    model_dir = tmp_path / "model"
    shutil.copytree(TINY_DIR, model_dir)
    out = tmp_path / "onnx"
    out.mkdir()
    cfg = OnnxVariantConfig.from_conf(execution_provider="cpu", precision="fp32")
    export.build(model_dir, out, cfg, export.builder_options(cfg))
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert graph_windows(graph) == [-1, -1], "builder 0.18 writes no window for Phi-3 (fixed upstream? drop the fix)"
    assert window_problems(graph_windows(graph), TINY_CONFIG)


def test_the_dml_note_appears_only_where_the_graph_has_a_sliding_window(tmp_path: Path) -> None:
    for windows in ([2047, 2047], [-1, -1]):
        folder = tmp_path / str(windows[0])
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"structure": {"attention_windows": windows}}), encoding="utf-8")
        note = sliding_window_note(folder, "dml")
        assert (note is not None) == (windows[0] > 0)
        assert sliding_window_note(folder, "cpu") is None
    assert "ignores the graph's sliding window (2047)" in str(sliding_window_note(tmp_path / "2047", "dml"))
