"""Rotary-embedding constants of an OpenVINO IR: find them, keep them in f32, check them against transformers.

Phi-3's rotary embedding turns positions into angles with small float constants (inverse
frequencies, LongRoPE factors, the attention scaling). An fp16 IR that stores them in fp16 rotates
queries and keys by slightly wrong angles, an error that grows with the position: a factor 1.05
stored as 1.0498 turns the fastest frequency 0.7 rad too far by position 4000. Upstream stores them in fp16 (see
:func:`keep_rotary_f32_on_save`); this module keeps them in f32 and checks that it did.

The rotary subgraph is found by structure, not by name: the ``Cos``/``Sin`` ops, everything
upstream of them (constants, position inputs and the ops between), and the post-processing of the
cos/sin tables (scaling, reshapes) up to where they meet the queries and keys.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

ANGLE_OPS = ("Cos", "Sin")
# The upstream walk stops at inputs, state and shapes (what OpenVINO's MarkRopeInputsToKeepInMixedPrecision skips).
SOURCE_OPS = {"Parameter", "ReadValue", "ShapeOf", "Constant", "Const"}
CONSTANT_OPS = {"Constant", "Const"}  # ov.Model / IR XML spelling
NOT_TABLE_OPS = {"ShapeOf", "Result", "Assign"}  # consumers of a table that do not process its values
FLOAT_TYPES = {"f64", "f32", "f16", "bf16"}
LOW_PRECISION = {"f16", "bf16"}
# Serialized form of ov::disable_fp16_compression (``DisableFP16Compression``, RTTI "precise"); OpenVINO 2026
# reads it as ``DisablePrecisionConversion`` {dynamic: f16}. The Python API has no setter for it.
PRECISE_KEY = "DisablePrecisionConversion_0"
_PRECISE_TEMPLATE = b"""<?xml version="1.0"?>
<net name="precise" version="11"><layers>
<layer id="0" name="c" type="Const" version="opset1"><data element_type="f32" shape="1" offset="0" size="4"/>
<rt_info><attribute name="precise" version="0"/></rt_info><output><port id="0" precision="FP32"><dim>1</dim></port>
</output></layer><layer id="1" name="r" type="Result" version="opset1"><input><port id="0" precision="FP32">
<dim>1</dim></port></input></layer></layers><edges><edge from-layer="0" from-port="0" to-layer="1" to-port="0"/>
</edges></net>"""
# transformers' rotary embedding per model type (the reference the IR's cos/sin are compared with).
REFERENCE_ROTARY = {"phi3": "transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding"}
# Two correct f32 implementations differ by about position * 2^-24 (one ulp of the angle); a rotary constant
# rounded to fp16 (relative error up to 2^-11) is off by about position * 2^-12. The tolerance sits between.
ANGLE_TOLERANCE_PER_POSITION = 2.0**-20
TOLERANCE_FLOOR = 1e-4


@dataclass
class RotarySubgraph:
    """Node keys of the rotary subgraph of one graph (``ov.Model`` or IR XML)."""

    angles: list[Hashable] = field(default_factory=list)  # the Cos/Sin ops
    nodes: set[Hashable] = field(default_factory=set)  # every op that computes the tables, angles included
    constants: set[Hashable] = field(default_factory=set)  # every constant they read (any element type)
    tables: dict[Hashable, str] = field(default_factory=dict)  # last op of each cos/sin table -> "cos"/"sin"


def find_rotary(kinds: dict[Hashable, str], inputs: dict[Hashable, list[Hashable]]) -> RotarySubgraph:
    """Find the rotary subgraph in a graph given as op kinds and input lists (keys are node ids)."""
    consumers: dict[Hashable, list[Hashable]] = {k: [] for k in kinds}
    for node, sources in inputs.items():
        for source in sources:
            consumers[source].append(node)
    found = RotarySubgraph(angles=[k for k, kind in kinds.items() if kind in ANGLE_OPS])
    foldable = constant_foldable(kinds, inputs)

    def take_upstream(start: Hashable) -> None:
        stack = [start]
        while stack:
            node = stack.pop()
            if node in found.nodes or node in found.constants:
                continue
            if kinds[node] in CONSTANT_OPS:
                found.constants.add(node)
            elif kinds[node] not in SOURCE_OPS:
                found.nodes.add(node)
                stack.extend(inputs[node])

    for angle in found.angles:
        take_upstream(angle)
        ends, frontier = [], [angle]
        while frontier:  # post-processing: ops whose other inputs are all constant-foldable
            node = frontier.pop()
            steps = [
                c
                for c in consumers[node]
                if kinds[c] not in NOT_TABLE_OPS and all(s == node or s in foldable for s in inputs[c])
            ]
            for step in steps:
                take_upstream(step)
            frontier.extend(steps)
            if len(steps) < len(consumers[node]) or not consumers[node]:
                ends.append(node)
        for end in ends:
            found.tables[end] = "cos" if kinds[angle] == "Cos" else "sin"
    return found


def constant_foldable(kinds: dict[Hashable, str], inputs: dict[Hashable, list[Hashable]]) -> set[Hashable]:
    """The nodes computed from constants only (iterative: a 32-layer model is too deep to recurse through)."""
    done: dict[Hashable, bool] = {}
    for root in kinds:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in done:
                continue
            if kinds[node] in CONSTANT_OPS or kinds[node] in SOURCE_OPS or not inputs[node]:
                done[node] = kinds[node] in CONSTANT_OPS
            elif expanded:
                done[node] = all(done[s] for s in inputs[node])
            else:
                stack.append((node, True))
                stack.extend((s, False) for s in inputs[node] if s not in done)
    return {k for k, v in done.items() if v}


def model_graph(model: Any) -> tuple[dict[int, Any], dict[int, str], dict[int, list[int]]]:
    """(nodes, kinds, inputs) of an ``ov.Model``, keyed by OpenVINO's node instance id."""
    nodes = {op.get_instance_id(): op for op in model.get_ordered_ops()}
    kinds = {k: op.get_type_name() for k, op in nodes.items()}
    inputs = {k: [v.get_node().get_instance_id() for v in op.input_values()] for k, op in nodes.items()}
    return nodes, kinds, inputs


def xml_graph(root: Any) -> tuple[dict[str, Any], dict[str, str], dict[str, list[str]]]:
    """(layers, kinds, inputs) of a parsed IR ``.xml`` (ElementTree root), keyed by layer id."""
    layers = {layer.get("id"): layer for layer in root.find("layers")}
    kinds = {k: layer.get("type") for k, layer in layers.items()}
    inputs: dict[str, list[str]] = {k: [] for k in layers}
    for edge in root.find("edges"):
        inputs[edge.get("to-layer")].append(edge.get("from-layer"))
    return layers, kinds, inputs


def rotary_of_model(model: Any) -> tuple[dict[int, Any], RotarySubgraph]:
    """The rotary subgraph of an ``ov.Model`` and its nodes by key."""
    nodes, kinds, inputs = model_graph(model)
    return nodes, find_rotary(kinds, inputs)


def element_type(const: Any) -> str:
    """OpenVINO's short name of a constant's element type (``f32``, ``f16``, ``i64``...)."""
    return const.get_output_element_type(0).to_string()


@functools.lru_cache(maxsize=1)
def precise_attribute() -> Any:
    """OpenVINO's "keep this node in its own precision" rt_info value, as an ``OVAny``.

    It is what ``ov::disable_fp16_compression`` sets in C++; Python can only copy it from a node
    that carries it, so it is read from a one-constant IR whose XML names it.
    """
    import numpy as np
    import openvino as ov

    template = ov.Core().read_model(_PRECISE_TEMPLATE, ov.Tensor(np.zeros(4, dtype=np.uint8)))
    [const] = [op for op in template.get_ordered_ops() if op.get_type_name() == "Constant"]
    return const.get_rt_info()[PRECISE_KEY]


def mark_rotary_f32(model: Any) -> int:
    """Mark every node of the rotary subgraph "keep precision"; return how many float constants it reads.

    OpenVINO's ``compress_to_fp16`` (``CompressFloatConstants``) skips the marked constants, and
    plugins that lower precision (GPU and NPU compute in f16) honour the mark on the ops where
    their ``ConvertPrecision`` keeps precision-sensitive nodes in f32.
    """
    nodes, found = rotary_of_model(model)
    attribute = precise_attribute()
    for key in found.nodes | found.constants:
        nodes[key].set_rt_info(attribute, PRECISE_KEY)
    return sum(element_type(nodes[k]) in FLOAT_TYPES for k in found.constants)


@contextlib.contextmanager
def keep_rotary_f32_on_save() -> Iterator[None]:
    """Workaround: optimum-intel's fp16 export stores the rotary constants in fp16; keep them in f32.

    ``optimum-cli export openvino --weight-format fp16`` traces the model in f32 and saves it with
    ``openvino.save_model(model, path, compress_to_fp16=True)``
    (https://github.com/huggingface/optimum-intel/blob/main/optimum/exporters/openvino/convert.py, ``_save_model``).
    OpenVINO then converts every f32 constant to fp16 (``ov::pass::compress_model_to_f16`` ->
    ``CompressFloatConstants``,
    https://github.com/openvinotoolkit/openvino/blob/master/src/common/transformations/src/transformations/common_optimizations/compress_float_constants.cpp),
    the rotary inverse frequencies and LongRoPE factors included; it skips only constants marked with
    ``disable_fp16_compression``
    (https://github.com/openvinotoolkit/openvino/blob/master/src/common/transformations/include/transformations/rt_info/disable_fp16_compression.hpp).
    Inside this context, every model optimum saves is marked first (:func:`mark_rotary_f32`), so the
    rotary constants stay f32 and all other constants are compressed exactly as before.
    """
    from optimum.exporters.openvino import convert

    original: Callable[..., Any] = convert.save_model

    def save_model(model: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        mark_rotary_f32(model)
        return original(model, path, *args, **kwargs)

    convert.save_model = save_model
    try:
        yield
    finally:
        convert.save_model = original


def low_precision_constants(model: Any) -> list[str]:
    """Names and types of the fp16/bf16 constants that feed the rotary embedding (empty when all are f32)."""
    nodes, found = rotary_of_model(model)
    return sorted(
        f"{nodes[k].get_friendly_name()} ({element_type(nodes[k])})"
        for k in found.constants
        if element_type(nodes[k]) in LOW_PRECISION
    )


def position_sets(config: dict[str, Any]) -> dict[str, list[int]]:
    """Position sequences to check, named; each is one call, as transformers would see it.

    transformers' LongRoPE picks the long factors when ``max(position_ids) + 1`` exceeds
    ``original_max_position_embeddings`` (``dynamic_rope_update`` -> ``longrope_frequency_update``),
    and so does optimum's traced graph: a prompt up to that length, a longer one, and one decode
    step at the last position cover both factor sets.
    """
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    longest = int(config.get("max_position_embeddings") or 4096)
    original = int(
        rope.get("original_max_position_embeddings") or config.get("original_max_position_embeddings") or longest
    )
    if rope.get("rope_type", rope.get("type")) == "longrope" and longest > original:
        return {
            f"0-{original - 1} (short factors)": list(range(original)),
            f"0-{min(longest, 2 * original) - 1} (long factors)": list(range(min(longest, 2 * original))),
            f"{longest - 1} (decode, long factors)": [longest - 1],
        }
    return {f"0-{min(longest, 4096) - 1}": list(range(min(longest, 4096))), f"{longest - 1} (decode)": [longest - 1]}


def reference_tables(config: dict[str, Any], positions: list[int]) -> dict[str, Any]:
    """transformers' cos/sin tables (f32, ``[len(positions), head_dim]``) for ``positions``."""
    import importlib

    import torch
    import transformers

    module, _, name = REFERENCE_ROTARY[config["model_type"]].rpartition(".")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # Phi-3 configs warn about original_max_position_embeddings
    try:
        hf_config = transformers.AutoConfig.for_model(**config)
    finally:
        transformers.logging.set_verbosity(verbosity)
    rotary = getattr(importlib.import_module(module), name)(hf_config)
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.tensor([positions]))
    return {"cos": cos[0].numpy(), "sin": sin[0].numpy()}


def tables_model(model: Any) -> tuple[Any, list[str]]:
    """An ``ov.Model`` that computes only the IR's cos/sin tables (all inputs kept), and each output's kind."""
    import openvino as ov

    nodes, found = rotary_of_model(model)
    ends = list(found.tables)
    sub = ov.Model([nodes[k].output(0) for k in ends], model.get_parameters(), "rotary_tables")
    return sub, [found.tables[k] for k in ends]


def ir_tables(model: Any, positions: list[int], core: Any = None) -> list[tuple[str, Any]]:
    """The IR's own cos/sin tables for ``positions``: only the rotary subgraph is compiled, at f32 precision."""
    import numpy as np
    import openvino as ov

    sub, kinds = tables_model(model)
    if not kinds:
        return []
    compiled = (core or ov.Core()).compile_model(sub, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = compiled(table_inputs(sub, positions))
    return [(kind, np.asarray(outputs[i]).reshape(len(positions), -1)) for i, kind in enumerate(kinds)]


def table_inputs(model: Any, positions: list[int]) -> dict[str, Any]:
    """Inputs for one call over ``positions`` (batch 1): the positions, a full attention mask, zeros elsewhere."""
    import numpy as np

    feed = {}
    for param in model.get_parameters():
        name = param.get_friendly_name()
        rank = param.get_output_partial_shape(0).rank.get_length()
        shape = (1,) if rank == 1 else (1, len(positions), *[1] * (rank - 2))
        values = (
            np.array([positions])
            if name == "position_ids"
            else (np.ones(shape) if name == "attention_mask" else np.zeros(shape))
        )
        feed[name] = values.astype(param.get_output_element_type(0).to_dtype())
    return feed


def compare_with_transformers(model: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Max |IR - transformers| of the cos/sin tables per position set, with the tolerance each must meet.

    Returns ``{"skipped": reason}`` when transformers has no reference for the model type, or the
    IR takes no ``position_ids`` or has no Cos/Sin.
    """
    if config.get("model_type") not in REFERENCE_ROTARY:
        return {"skipped": f"no transformers reference for model_type {config.get('model_type')!r}"}
    if "position_ids" not in {p.get_friendly_name() for p in model.get_parameters()}:
        return {"skipped": "the IR takes no position_ids input"}
    import numpy as np

    result: dict[str, Any] = {"positions": {}}
    for label, positions in position_sets(config).items():
        tables = ir_tables(model, positions)
        if not tables:
            return {"skipped": "the IR has no Cos/Sin ops"}
        want = reference_tables(config, positions)
        diff = max(float(np.max(np.abs(got - want[kind]))) for kind, got in tables)
        tolerance = max(TOLERANCE_FLOOR, max(positions) * ANGLE_TOLERANCE_PER_POSITION)
        result["positions"][label] = {"max_abs_diff": diff, "tolerance": tolerance}
    result["max_abs_diff"] = max(v["max_abs_diff"] for v in result["positions"].values())
    return result
