"""The pinned (f32) pass of an IR in runs of decoder layers, for IRs whose float weights would not fit widened.

At ``INFERENCE_PRECISION_HINT=f32`` OpenVINO's CPU plugin keeps int4/int8 weights compressed (it decompresses them
inside its FullyConnected kernels) but widens every f16 weight to f32: Phi-3-mini's fp16 IR (7.1 GiB) becomes 14.0
GiB of packed weights before the first token (OpenVINO 2026.4.1, measured on a Xeon with AMX and an EPYC). There is
no f16-weight decompression at f32 compute to ask for, so the pinned pass compiles the IR a run of layers at a time:
each piece takes the residual stream where the previous piece stopped, every window goes through one piece before
the next is compiled, and only one piece's widened weights are held at once. The arithmetic is the same f32
arithmetic; only where the plugin may fuse across a cut could rounding differ (``tests/openvino/test_rotary.py``
bounds it).

The cuts are found by structure, not by layer names: the residual stream starts at the token-embedding ``Gather``
and goes through the one ``Add`` that consumes each stream value (the norms consume it through ``Power``/``Multiply``),
two ``Add``\\ s per decoder layer. Only the stream crosses a cut: what the layers share (rotary tables, the attention
mask, shape values) each piece computes again from the inputs, with what that needs (the embedding lookup, one
layer's shape). Pieces that took every value an earlier piece computed as parameters instead (tried) peaked at
9.3 GiB on Phi-3-mini's fp16 IR, against 5.9 GiB this way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

# Widened float weights held by one piece of the pinned pass (the rest of a cell's peak is the activations and the
# window's logits). 2.5 GiB cuts Phi-3-mini's fp16 IR into 6 pieces.
PIECE_BYTES = int(2.5 * 2**30)
_FLOAT_WEIGHTS = ("f16", "bf16", "f32")


def widened_bytes(model: Any) -> int:
    """Bytes the f32 pass holds for the model's float weight constants once widened to f32."""
    total = 0
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in _FLOAT_WEIGHTS:
            total += 4 * math.prod(op.get_output_shape(0))
    return total


def _embedding(model: Any) -> Any:
    """The token-embedding ``Gather``: rank-3 float output, indices from the ``input_ids`` parameter."""
    for op in model.get_ordered_ops():
        rank = op.get_output_partial_shape(0).rank if op.get_output_size() else None
        if op.get_type_name() != "Gather" or not rank or not rank.is_static or rank.get_length() != 3:
            continue
        source = op.input_value(1).get_node()
        while source.get_type_name() == "Convert":
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Parameter" and source.get_friendly_name() == "input_ids":
            return op
    return None


def residual_stream(model: Any) -> list[Any]:
    """The residual stream's nodes in order: the embedding, then two ``Add``\\ s per decoder layer ([] if not found)."""
    node = _embedding(model)
    stream = []
    while node is not None:
        stream.append(node)
        adds = [t.get_node() for t in node.output(0).get_target_inputs() if t.get_node().get_type_name() == "Add"]
        node = adds[0] if len(adds) == 1 else None
    return stream if len(stream) >= 3 and len(stream) % 2 == 1 else []


def piece_count(model: Any, budget: int | None = None, name: str = "") -> int:
    """How many runs of layers the pinned pass needs so that one run's widened weights fit ``budget`` (1 = whole).
    Over the budget with no residual stream to cut at, it says so in one line (naming ``name``) and answers 1."""
    from pipeline.core.log import say

    widened, limit = widened_bytes(model), budget or PIECE_BYTES
    stream = residual_stream(model)
    if widened > limit and not stream:
        say(
            f"{name or model.get_friendly_name()}: no residual stream to cut the f32 pass at, so it holds all "
            f"{widened / 2**30:.1f} GiB of float weights widened at once"
        )
    layers = (len(stream) - 1) // 2
    return 1 if layers < 2 else max(1, min(layers, math.ceil(widened / limit)))


def pieces(model: Any, count: int) -> Iterator[Any]:
    """``count`` models that together compute ``model``: the first ends at a residual-stream value, each next one
    takes it as its ``hidden`` parameter, the last ends at the model's own results. ``model`` is left as it was."""
    import openvino as ov

    layers = (len(residual_stream(model)) - 1) // 2
    bounds = [round(i * layers / count) * 2 for i in range(count + 1)]
    for index in range(count):
        piece = model.clone()
        stream = residual_stream(piece)
        parameters = list(piece.get_parameters())
        if index > 0:
            start = stream[bounds[index]].output(0)
            hidden = ov.opset13.parameter(start.get_partial_shape(), start.get_element_type(), name="hidden")
            hidden.output(0).get_tensor().set_names({"hidden"})
            start.replace(hidden.output(0))
            parameters.append(hidden)
        if index < count - 1:
            results = [ov.opset13.result(stream[bounds[index + 1]].output(0))]
        else:
            results = list(piece.get_results())
        yield ov.Model(results, parameters, f"layers {bounds[index] // 2}-{bounds[index + 1] // 2 - 1}")
