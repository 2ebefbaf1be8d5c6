"""The pinned (f32) pass of an IR in runs of decoder layers, for IRs whose float weights would not fit widened.

At ``INFERENCE_PRECISION_HINT=f32`` OpenVINO's CPU plugin keeps int4/int8 weights compressed (it decompresses them
inside its FullyConnected kernels) but widens every f16 weight to f32: Phi-3-mini's fp16 IR (7.1 GiB of weights)
is 14.0 GiB once packed, a 14.4 GiB peak with a 512-token window (OpenVINO 2026.4.1). There is no f16-weight
decompression at f32 compute to ask for, so the pinned pass compiles the IR a run of layers at a time: every
window goes through one piece before the next is compiled, and only one piece's widened weights are held.

The cuts are found by structure, not by layer names: the residual stream starts at the token-embedding ``Gather``
and goes through the one ``Add`` that consumes each stream value (the norms read it through ``Power``/``Multiply``),
two ``Add``\\ s per decoder layer. A piece holds what its run of layers computes; every tensor an earlier piece
computed that it reads (the stream, but also the rotary tables, the attention mask and the shape values the
layers share) comes in as a parameter, and weight subgraphs (constants and their decompression) are copied into
the piece that uses them, so a tied embedding is in the first and the last piece only. Each piece computes the
same ops on the same inputs as the whole model (``tests/openvino/test_rotary.py``: logits bit-identical).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.log import say

# Widened float weights held by one piece of the pinned pass (the rest of a cell's peak is the activations and the
# window's logits). 2.5 GiB cuts Phi-3-mini's fp16 IR into 6 pieces.
PIECE_BYTES = int(2.5 * 2**30)
_FLOAT_WEIGHTS = ("f16", "bf16", "f32")
_KEPT = ("Constant", "Parameter")


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
    widened, limit = widened_bytes(model), budget or PIECE_BYTES
    stream = residual_stream(model)
    if widened > limit and not stream:
        say(
            f"{name or model.get_friendly_name()}: no residual stream to cut the f32 pass at, so it holds all "
            f"{widened / 2**30:.1f} GiB of float weights widened at once"
        )
    layers = (len(stream) - 1) // 2
    return 1 if layers < 2 else max(1, min(layers, math.ceil(widened / limit)))


@dataclass
class Plan:
    """Which piece computes each node (by its index in ``get_ordered_ops``), the tensors that cross cuts, and the
    integer values a later piece reads that are the same for every input (``known``: they become constants)."""

    count: int
    layers: int
    piece_of: dict[int, int] = field(default_factory=dict)  # weight subgraphs, input-only nodes: in none, copied
    crossing: dict[tuple[int, int], set[int]] = field(default_factory=dict)  # (node, port) -> the pieces reading it
    known: dict[tuple[int, int], Any] = field(default_factory=dict)  # (node, port) -> its value (numpy)

    def name(self, tensor: tuple[int, int]) -> str:
        """The tensor name a crossing value has as the output of one piece and the input of the next."""
        return f"cut_{tensor[0]}_{tensor[1]}"

    def bound(self, k: int) -> int:
        """The first decoder layer of piece ``k`` (``bound(count)`` is the number of layers)."""
        return round(k * self.layers / self.count)


def known_value(output: Any) -> Any:
    """The value of an integer tensor that OpenVINO's bounds pin to one value whatever the input (numpy), else None.

    A shape value computed once and shared by every layer (Phi-3's gate/up split lengths, from ``ShapeOf`` of layer
    0's ``gate_up_proj``) is such a value. Handed to a later piece as a parameter it would make that piece's shapes
    depend on data, and the CPU plugin then plans no buffer reuse for them: Phi-3-mini's fp16 f32 pass peaked at
    9.3 GiB that way, 5.9 GiB with the values as constants.
    """
    import numpy as np

    if not output.get_element_type().is_integral():
        return None
    tensor = output.get_tensor()
    low, high = tensor.get_lower_value(), tensor.get_upper_value()
    if low is None or high is None or not np.array_equal(low.data, high.data):
        return None
    return np.array(low.data, copy=True)


def plan(model: Any, count: int) -> Plan:
    """Assign every node computed from the residual stream to the first piece whose last stream value needs it.

    Nodes that depend on the inputs but not on the stream (rotary tables, the sequence length of ``input_ids``) are
    copied into every piece that reads them, as weight subgraphs are: each piece computes them from its own inputs.
    """
    ops = model.get_ordered_ops()
    index = {op.get_instance_id(): i for i, op in enumerate(ops)}
    stream = residual_stream(model)
    result = Plan(count, (len(stream) - 1) // 2)
    ends = [stream[result.bound(k + 1) * 2] for k in range(count - 1)]
    root = index[stream[0].get_instance_id()]
    streamed = set()  # the embedding and every node computed from it
    for i, op in enumerate(ops):
        if i == root or any(index[v.get_node().get_instance_id()] in streamed for v in op.input_values()):
            streamed.add(i)
    for k, end in enumerate(ends):
        pending = [end]
        while pending:
            node = pending.pop()
            i = index[node.get_instance_id()]
            if i in result.piece_of or i not in streamed or node.get_type_name() in _KEPT:
                continue
            result.piece_of[i] = k
            pending.extend(v.get_node() for v in node.input_values())
    for i in streamed:
        if ops[i].get_type_name() not in _KEPT:
            result.piece_of.setdefault(i, count - 1)
    for i, piece in result.piece_of.items():
        for value in ops[i].input_values():
            j = index[value.get_node().get_instance_id()]
            if j in result.piece_of and result.piece_of[j] < piece:
                tensor = (j, value.get_index())
                if tensor not in result.known and (fixed := known_value(value)) is not None:
                    result.known[tensor] = fixed
                if tensor not in result.known:
                    result.crossing.setdefault(tensor, set()).add(piece)
    return result


def pieces(model: Any, count: int) -> Iterator[Any]:
    """``count`` models that together compute ``model`` (left as it was). Piece ``k`` takes the original inputs
    plus every ``cut_<node>_<port>`` an earlier piece computed and it reads, and returns the ones it computes that
    later pieces read (the last piece returns the model's own results)."""
    import openvino as ov

    layout = plan(model, count)
    for k in range(count):
        piece = model.clone()
        ops = piece.get_ordered_ops()
        parameters = list(piece.get_parameters())
        results = []
        for tensor, fixed in layout.known.items():
            if layout.piece_of[tensor[0]] < k:  # read here as the constant it always is
                ops[tensor[0]].output(tensor[1]).replace(ov.opset13.constant(fixed).output(0))
        for tensor, readers in sorted(layout.crossing.items()):
            output = ops[tensor[0]].output(tensor[1])
            if k in readers:  # computed by an earlier piece
                cut = ov.opset13.parameter(output.get_partial_shape(), output.get_element_type())
                output.replace(cut.output(0))  # (hands the value's own tensor names to the parameter)
                cut.output(0).get_tensor().set_names({layout.name(tensor)})
                parameters.append(cut)
            elif layout.piece_of[tensor[0]] == k:  # computed here, read later
                output.get_tensor().set_names({layout.name(tensor)})
                results.append(ov.opset13.result(output))
        if k == count - 1:
            results = list(piece.get_results())
        yield ov.Model(results, parameters, f"layers {layout.bound(k)}-{layout.bound(k + 1) - 1}")
