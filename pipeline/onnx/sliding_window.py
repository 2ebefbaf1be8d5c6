"""Sliding-window attention in builder graphs: the window transformers applies, and the fix for the builder's.

transformers 5 gives every Phi-3 layer a causal sliding window when ``config.sliding_window`` is set: position
``q`` attends to key ``k`` when ``0 <= q - k < sliding_window`` (``masking_utils.sliding_window_overlay``), so
Phi-3-mini-4k (2047) drops key 0 first at position 2047. onnxruntime's GroupQueryAttention with
``local_window_size=W`` keeps the same keys (measured: the CPU kernel's logits equal transformers' to 3e-5 at
every position of a 4096-token window with ``W = sliding_window``; ``W - 1`` departs from position 2046 on).
Measurements and the reproduction: ``docs/onnx.md``, "Sliding window".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import write_json_atomic

GQA = "GroupQueryAttention"
FULL = -1  # GroupQueryAttention's "no window"
_LAYER = re.compile(r"layers\.(\d+)/")


def transformers_windows(model_config: dict[str, Any], num_layers: int) -> list[int]:
    """The ``local_window_size`` each layer needs to attend as transformers does (-1: full causal attention).

    A window at least as long as the context never masks a key, so it is full attention (Phi-3-mini-128k's and
    Phi-4-mini's 262144): those graphs are left as built.
    """
    window = model_config.get("sliding_window")
    context = model_config.get("max_position_embeddings")
    if not window or (context and window >= context):
        return [FULL] * num_layers
    types = model_config.get("layer_types") or ["sliding_attention"] * num_layers
    return [window if kind == "sliding_attention" else FULL for kind in types[:num_layers]]


def _gqa_layers(graph: Any) -> Iterator[tuple[int, Any]]:
    """Each layer's GroupQueryAttention node with its layer index (from the builder's node name)."""
    for node in graph.node:
        match = _LAYER.search(node.name)
        if node.op_type == GQA and match:
            yield int(match.group(1)), node


def graph_windows(graph: Any) -> list[int]:
    """``local_window_size`` of the GroupQueryAttention nodes, in layer order (-1 where the attribute is absent)."""
    found = {
        layer: next((a.i for a in node.attribute if a.name == "local_window_size"), FULL)
        for layer, node in _gqa_layers(graph)
    }
    return [found[layer] for layer in sorted(found)]


def window_problems(windows: list[int], model_config: dict[str, Any]) -> list[str]:
    """How the graph's attention windows (:func:`graph_windows`) contradict the ones transformers applies."""
    want = transformers_windows(model_config, len(windows))
    wrong = [layer for layer, size in enumerate(windows) if size != want[layer]]
    if not wrong:
        return []
    return [
        f"GroupQueryAttention local_window_size {[windows[i] for i in wrong]} in layers {wrong}, "
        f"transformers attends with window {[want[i] for i in wrong]} (sliding_window "
        f"{model_config.get('sliding_window')})"
    ]


def _set_attribute(node: Any, name: str, value: int) -> None:
    import onnx

    for attr in [a for a in node.attribute if a.name == name]:
        node.attribute.remove(attr)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def set_transformers_windows(folder: Path, model_config: dict[str, Any]) -> dict:
    """Workaround: give each GroupQueryAttention the sliding window transformers applies to its layer.

    onnxruntime-genai 0.18's builder keeps ``local_window_size`` only on layers that ``config.layer_types`` marks
    ``sliding_attention`` (``builders/base.py``, ``make_attention`` / ``is_local``; since upstream commit
    30bb75cf6 "Refactor context length changes"). Phi3Config has no ``layer_types``, so every layer gets -1:
    full attention, which departs from transformers past ``sliding_window`` (top-1 0.77-0.82 on positions
    2047-4096 of a 4096-token window of the tiny Phi-3). A graph built with the windowed KV cache (the builder's
    default on CPU and CUDA: ``decoder.sliding_window`` in ``genai_config.json``) also lost the kernel's
    ``sliding_window_cache`` mode and the layer list, so its window-sized cache refused every sequence past
    ``window_size + cache_slack``: both are restored. The weights file is untouched.

    Returns:
        What was changed (empty when nothing was), for the manifest.
    """
    import onnx

    genai_path = Path(folder) / "genai_config.json"
    genai = json.loads(genai_path.read_text(encoding="utf-8"))
    path = Path(folder) / genai["model"]["decoder"]["filename"]
    model = onnx.load(str(path), load_external_data=False)  # the proto only: its external data stays as written
    before = graph_windows(model.graph)
    want = transformers_windows(model_config, len(before))
    if before == want:
        return {}
    ring = genai["model"]["decoder"].get("sliding_window")  # the builder's windowed KV cache, if it wrote one
    local = [layer for layer, size in enumerate(want) if size != FULL]
    for layer, node in _gqa_layers(model.graph):
        _set_attribute(node, "local_window_size", want[layer])
        if ring is not None and layer in local:
            _set_attribute(node, "sliding_window_cache", 1)  # the window-sized cache is indexed as a ring
    onnx.save(model, str(path))  # rewrites the proto only: tensors without raw_data keep their external location
    fix: dict[str, Any] = {"local_window_size": {"written_by_builder": before, "now": want}}
    if ring is not None:
        fix["windowed_kv_cache_layers"] = {"written_by_builder": ring.get("layers"), "now": local}
        ring["layers"] = local
        write_json_atomic(genai_path, genai)
    return {**fix, "why": "the builder drops Phi-3's sliding window (no config.layer_types); docs/onnx.md"}
