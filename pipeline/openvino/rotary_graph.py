"""The rotary subgraph of a graph, found by structure: the ``Cos``/``Sin`` ops, everything upstream of them
(constants, position inputs and the ops between), and the post-processing of the cos/sin tables (scaling,
reshapes) up to where they meet the queries and keys.

Works on an ``ov.Model`` (:func:`model_graph`) and on an IR's XML (:func:`xml_graph`, read without OpenVINO);
:mod:`pipeline.openvino.rotary` keeps what it finds in f32 and checks it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

ANGLE_OPS = ("Cos", "Sin")
# The upstream walk stops at inputs, state and shapes (what OpenVINO's MarkRopeInputsToKeepInMixedPrecision skips).
SOURCE_OPS = {"Parameter", "ReadValue", "ShapeOf", "Constant", "Const"}
CONSTANT_OPS = {"Constant", "Const"}  # ov.Model / IR XML spelling
NOT_TABLE_OPS = {"ShapeOf", "Result", "Assign"}  # consumers of a table that do not process its values
K = TypeVar("K", bound=Hashable)  # a node key: OpenVINO's instance id (int) or an IR layer id (str)


@dataclass
class RotarySubgraph(Generic[K]):
    """Node keys of the rotary subgraph of one graph (``ov.Model`` or IR XML)."""

    angles: list[K] = field(default_factory=list)  # the Cos/Sin ops
    nodes: set[K] = field(default_factory=set)  # every op that computes the tables, angles included
    constants: set[K] = field(default_factory=set)  # every constant they read (any element type)
    tables: dict[K, str] = field(default_factory=dict)  # last op of each cos/sin table -> "cos"/"sin"


def find_rotary(kinds: dict[K, str], inputs: dict[K, list[K]]) -> RotarySubgraph[K]:
    """Find the rotary subgraph in a graph given as op kinds and input lists (keys are node ids)."""
    consumers: dict[K, list[K]] = {k: [] for k in kinds}
    for node, sources in inputs.items():
        for source in sources:
            consumers[source].append(node)
    found = RotarySubgraph(angles=[k for k, kind in kinds.items() if kind in ANGLE_OPS])
    foldable = constant_foldable(kinds, inputs)

    def take_upstream(start: K) -> None:
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


def constant_foldable(kinds: dict[K, str], inputs: dict[K, list[K]]) -> set[K]:
    """The nodes computed from constants only (iterative: a 32-layer model is too deep to recurse through)."""
    done: dict[K, bool] = {}
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


def rotary_of_model(model: Any) -> tuple[dict[int, Any], RotarySubgraph[int]]:
    """The rotary subgraph of an ``ov.Model`` and its nodes by key."""
    nodes, kinds, inputs = model_graph(model)
    return nodes, find_rotary(kinds, inputs)
