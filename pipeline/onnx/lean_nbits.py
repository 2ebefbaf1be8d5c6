"""Workaround: quantize the ONNX builder's MatMul weights one at a time instead of all in float first.

onnxruntime-genai 0.18's ``Model.to_nbits`` serializes the whole float graph into one in-memory ModelProto
(``ir.to_proto``) before ONNX Runtime's ``MatMulNBitsQuantizer`` reads it: every MatMul weight materialized at
the graph's io dtype at once, float32 for the CPU provider (Phi-3-mini: 14.2 GiB of weights, an 18.9 GiB peak)
and float16 for DirectML (7.1 GiB, 9.6 GiB peak). The checkpoint itself is loaded in its own bf16, memory-mapped.
No builder option changes this (upstream: https://github.com/microsoft/onnxruntime-genai, builders/base.py
``to_nbits``; no issue filed yet).

:func:`lean_to_nbits` makes the same ModelProto without the weights that only quantized nodes read (they stay
lazy in the builder's graph), and hands ONNX Runtime's own quantizer each weight, in a scratch graph of its own,
just before it quantizes that node. The quantizer's code, its node order and its initializer order are unchanged,
so the files are the same bytes (``tests/onnx/test_lean_nbits.py``; full size: docs/onnx.md). It covers the
builder's default algorithm in QOperator format without per-node overrides (every int4 variant in conf/onnx);
anything else runs the builder's own pass. Phi-3-mini: export_onnx@cpu_int4 5.5 GiB, dml_int4 2.9 GiB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pipeline.core.errors import fail
from pipeline.core.log import say

KNOWN_BUILDER = "0.18.0"  # the onnxruntime-genai whose Model.to_nbits this replaces (constraints.txt)
WEIGHT_INPUT = {"MatMul": 1, "Gather": 0}  # where ONNX Runtime's weight-only quantizer reads each op's weight


def lean_expected(precision: str, algo_config: str | None, extra_options: dict[str, Any], model_config: dict) -> bool:
    """Whether an export with these settings will quantize through :func:`lean_to_nbits` (for the resource check,
    before the builder exists): the default algorithm, QOperator, no mixed precision, a float checkpoint."""
    return (
        precision in ("int4", "int8")
        and algo_config in (None, "default")
        and not extra_options.get("use_qdq")
        and "matmul_mixed_precision" not in extra_options
        and "quantization_config" not in model_config
    )


def lean_applies(model: Any) -> bool:
    """Whether :func:`lean_to_nbits` reproduces the builder's ``to_nbits`` for this builder model."""
    return (
        getattr(model, "quantization_algo", "default") == "default"
        and not getattr(model, "int4_customized_weight_config", None)
        and not getattr(model, "exact_quant_override_names", None)
        and not model.quant_attrs["use_qdq"]
        and getattr(model, "quant_type", None) is None
    )


def detachable_weights(model: Any) -> dict[str, Any]:
    """Initializers read only by nodes the quantizer replaces (top-level MatMul B / Gather data, 2-D, not
    excluded): name -> IR value. Any other reader (a Transpose of a tied float LM head, a subgraph) keeps the
    weight in the proto, where the quantizer finds it as before."""
    attrs, graph = model.quant_attrs, model.model.graph
    quantized = {
        node.name
        for node in graph
        if node.op_type in WEIGHT_INPUT
        and node.op_type in attrs["op_types_to_quantize"]
        and node.name not in attrs["nodes_to_exclude"]
        and (node.op_type == "MatMul" or attrs["bits"] == 4)
    }
    found = {}
    for name, value in graph.initializers.items():
        tensor, uses = value.const_value, list(value.uses())
        if tensor is None or len(tensor.shape) != 2 or not uses:
            continue
        if all(
            user.graph is graph and user.name in quantized and WEIGHT_INPUT[user.op_type] == index
            for user, index in uses
        ):
            found[name] = value
    return found


class _OneWeightAtATime:
    """Stands in for the quantizer's node quantizer: hands ONNX Runtime a left-out weight in a scratch graph of
    its own just for the node that reads it, then moves the quantized initializers it added into the model's graph.

    Not in the model's graph itself: protobuf (upb) allocates a message in its parent's arena, and an element
    removed from a repeated field keeps its memory there until the whole ModelProto is freed.
    """

    def __init__(self, inner: Any, weights: dict[str, Any]) -> None:
        self.inner, self.weights = inner, weights

    def quantize(self, node: Any, graph_stack: list[Any]) -> list[Any]:
        import onnx
        import onnx_ir as ir

        name = node.input[WEIGHT_INPUT[node.op_type]] if node.op_type in WEIGHT_INPUT else None
        value = self.weights.get(name) if name else None
        if value is None:
            return self.inner.quantize(node, graph_stack)
        scratch = onnx.GraphProto()
        ir.serde.serialize_tensor_into(scratch.initializer.add(), from_=value.const_value)
        nodes = self.inner.quantize(node, [*graph_stack, scratch])  # found innermost first; new tensors go there
        for tensor in scratch.initializer[1:]:  # the quantized weight, scales, zero points, in the quantizer's order
            graph_stack[-1].initializer.add().CopyFrom(tensor)
        return nodes


def lean_to_nbits(model: Any) -> Any:
    """The builder's ``to_nbits`` for ``model`` (a builder ``Model``), one float weight in memory at a time."""
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    attrs, weights = model.quant_attrs, detachable_weights(model)
    saved = {name: value.const_value for name, value in weights.items()}
    try:
        for value in weights.values():
            value.const_value = None  # the proto gets the value's info but not its data (ir.serde skips it)
        with _quiet("onnx_ir.serde"):  # one warning per left-out weight otherwise
            proto = ir.to_proto(model.model)
        for name, value in weights.items():
            value.const_value = saved[name]
        quant = MatMulNBitsQuantizer(
            model=proto,
            bits=attrs["bits"],
            block_size=attrs["matmul_block_size"],
            is_symmetric=attrs["is_symmetric"],
            accuracy_level=attrs["accuracy_level"],
            nodes_to_exclude=list(attrs["nodes_to_exclude"]),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=attrs["op_types_to_quantize"],
            algo_config=None,
        )
        quant.node_quantizer = _OneWeightAtATime(quant.node_quantizer, weights)
        quant.process()
    finally:
        for name, value in weights.items():
            value.const_value = saved[name]
    model_proto = quant.model.model
    left = {i for node in model_proto.graph.node for i in node.input} & weights.keys()
    if left:  # a node the quantizer kept as it was still reads a weight left out of the proto
        raise RuntimeError(f"the lean int4 pass left {len(left)} weights unquantized, e.g. {sorted(left)[0]}")
    model.prepack_matmulnbits_weights(model_proto)
    return ir.from_proto(model_proto)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Raise ``logger``'s level to ERROR for the duration."""
    import logging

    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def lean_quantization() -> Iterator[None]:
    """While active, the builder quantizes with :func:`lean_to_nbits` where it applies (its own pass elsewhere).

    Fails in one line on a builder other than :data:`KNOWN_BUILDER`: the replaced method is private to it.
    """
    import sys
    from importlib import metadata

    import onnxruntime_genai.models.builder  # noqa: F401  (puts its folder on sys.path: its modules are "builders.*")

    base = sys.modules["builders.base"]  # what create_model instantiates (not onnxruntime_genai.models.builders.base)
    version = metadata.version("onnxruntime-genai")
    if version != KNOWN_BUILDER:
        fail(
            f"onnxruntime-genai {version} is installed, but the ONNX export's lean int4 pass "
            f"(pipeline/onnx/lean_nbits.py) is written for {KNOWN_BUILDER}: install the version in constraints.txt"
        )
    original = base.Model.to_nbits

    def to_nbits(self: Any) -> Any:
        if not lean_applies(self):
            say("the builder's own int4 pass (holds every float weight at once): algorithm or overrides not covered")
            return original(self)
        return lean_to_nbits(self)

    base.Model.to_nbits = to_nbits
    try:
        yield
    finally:
        base.Model.to_nbits = original
