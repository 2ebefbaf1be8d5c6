"""Checks on an exported OpenVINO IR: weight precision per layer, NNCF rt_info, the rotary embedding."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.core.manifest import tied_embeddings

# Ops that carry the weight of a linear or embedding layer.
WEIGHT_CONSUMERS = {"MatMul", "Gather"}
# Ops between a stored weight constant and its consumer (decompression subgraph).
DECOMPRESSION_OPS = {"Convert", "Subtract", "Multiply", "Reshape", "Unsqueeze", "Transpose"}
PRECISION_OF = {
    "u4": "int4",
    "i4": "int4",
    "nf4": "int4",
    "u8": "int8",
    "i8": "int8",
    "f16": "float",
    "bf16": "float",
    "f32": "float",
}


def _weight_constant(node: Any, depth: int = 0) -> Any | None:
    """Follow a weight input back through the decompression subgraph to its largest constant."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node
    if kind not in DECOMPRESSION_OPS or depth > 6:
        return None
    best = None
    for value in node.input_values():
        const = _weight_constant(value.get_node(), depth + 1)
        if const is not None and (best is None or _size(const) > _size(best)):
            best = const
    return best


def _size(const: Any) -> int:
    size = 1
    for dim in const.get_output_shape(0):
        size *= int(dim)
    return size


def weight_layers(model: Any) -> list[dict[str, Any]]:
    """List every weight layer (MatMul / Gather fed by a constant of rank >= 2) with its precision."""
    layers, seen = [], set()
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHT_CONSUMERS:
            continue
        # Gather(weight, indices) for embeddings; MatMul(activation, weight) for linear layers.
        for index in [0] if op.get_type_name() == "Gather" else [1]:
            const = _weight_constant(op.input_value(index).get_node())
            if const is None or len(const.get_output_shape(0)) < 2 or _size(const) < 64:
                continue
            etype = const.get_output_element_type(0).get_type_name()
            key = (const.get_friendly_name(), op.get_friendly_name())
            if key in seen:
                continue
            seen.add(key)
            layers.append(
                {
                    "layer": op.get_friendly_name(),
                    "op": op.get_type_name(),
                    "element_type": etype,
                    "precision": PRECISION_OF.get(etype, etype),
                    "shape": [int(d) for d in const.get_output_shape(0)],
                }
            )
    return layers


def _rt_to_plain(value: Any) -> Any:
    """Convert an OpenVINO rt_info node into plain Python values."""
    if hasattr(value, "astype") and hasattr(value, "value"):
        return _parse_scalar(str(value.value))
    try:
        items = value.items()
    except AttributeError:
        return _parse_scalar(str(value))
    return {str(k): _rt_to_plain(v) for k, v in items}


def _parse_scalar(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def nncf_rt_info(model: Any) -> dict[str, Any]:
    """Return NNCF's ``rt_info['nncf']`` as a plain dict (empty when NNCF did not touch the IR)."""
    if not model.has_rt_info(["nncf"]):
        return {}
    return _rt_to_plain(model.get_rt_info()["nncf"])


def inspect_rotary(model: Any, config: dict[str, Any] | None) -> dict[str, Any]:
    """The rotary embedding of an IR: its float constants' types, and its cos/sin against transformers'.

    ``config`` is the model's ``config.json`` (optimum writes it beside the IR); without it the
    comparison is skipped. Only the cos/sin subgraph is compiled (:func:`pipeline.openvino.rotary.ir_tables`).
    """
    from pipeline.openvino import rotary

    nodes, found = rotary.rotary_of_model(model)
    types = {nodes[k].get_friendly_name(): rotary.element_type(nodes[k]) for k in found.constants}
    summary: dict[str, Any] = {
        "angle_ops": len(found.angles),
        "float_constants": dict(sorted((n, t) for n, t in types.items() if t in rotary.FLOAT_TYPES)),
        "low_precision_constants": rotary.low_precision_constants(model),
    }
    summary["vs_transformers"] = (
        rotary.compare_with_transformers(model, config) if config else {"skipped": "no config.json beside the IR"}
    )
    return summary


def check_rotary(summary: dict[str, Any]) -> list[str]:
    """Return the ways the IR's rotary embedding is wrong (empty when its constants are f32 and cos/sin match)."""
    rope = summary.get("rotary")
    if rope is None:
        return []
    problems = []
    if rope["angle_ops"] == 0:
        problems.append("no rotary embedding (Cos/Sin ops) found in the IR")
    if rope["low_precision_constants"]:
        names = rope["low_precision_constants"]
        problems.append(
            f"{len(names)} fp16/bf16 constant(s) feed the rotary embedding, e.g. {names[0]}: "
            "it must stay f32 (export through pipeline.openvino.rotary.keep_rotary_f32_on_save)"
        )
    for label, check in rope["vs_transformers"].get("positions", {}).items():
        if not check["max_abs_diff"] <= check["tolerance"]:
            problems.append(
                f"rotary cos/sin differ from transformers' by {check['max_abs_diff']:.3g} at positions "
                f"{label} (tolerance {check['tolerance']:.2g})"
            )
    return problems


def embedding_tie(model: Any) -> dict[str, Any] | None:
    """How the IR holds the input embedding and the LM head: their precisions and whether they share one constant.

    A tied checkpoint (``tie_word_embeddings``) has one matrix for both; the IR keeps the tie when the embedding's
    Gather and the LM head's MatMul (the last weight MatMul) read the same stored constant, so it is stored once
    and quantized once (NNCF's backup precision for both, int8 by default).
    """
    gathers: list[tuple[Any, Any]] = []  # (op, the weight constant it reads)
    matmuls: list[tuple[Any, Any]] = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in WEIGHT_CONSUMERS:
            const = _weight_constant(op.input_value(0 if kind == "Gather" else 1).get_node())
            if const is not None and len(const.get_output_shape(0)) >= 2:
                (gathers if kind == "Gather" else matmuls).append((op, const))
    if not gathers or not matmuls:
        return None
    (embed, embed_const), (head, head_const) = max(gathers, key=lambda g: _size(g[1])), matmuls[-1]

    def precision(const: Any) -> str:
        etype = const.get_output_element_type(0).get_type_name()
        return PRECISION_OF.get(etype, etype)

    return {
        "shared_constant": embed_const.get_friendly_name() == head_const.get_friendly_name(),
        "embedding": {"layer": embed.get_friendly_name(), "precision": precision(embed_const)},
        "lm_head": {"layer": head.get_friendly_name(), "precision": precision(head_const)},
    }


def inspect_ir(xml_path: Path, rotary: bool = True) -> dict[str, Any]:
    """Summarise an IR: layer counts by precision, NNCF rt_info, per-layer list, rotary embedding."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    layers = weight_layers(model)
    counts = Counter(layer["precision"] for layer in layers)
    summary: dict[str, Any] = {
        "weight_layers": {
            "int4": counts.get("int4", 0),
            "int8": counts.get("int8", 0),
            "float": counts.get("float", 0),
            "total": len(layers),
        },
        "nncf": nncf_rt_info(model),
        "layers": layers,
    }
    config_path = Path(xml_path).parent / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    summary["tied_embeddings"] = tied_embeddings(embedding_tie(model), config)
    if rotary:
        summary["rotary"] = inspect_rotary(model, config)
    return summary


def kept_float_problems(summary: dict[str, Any], keep_float: list[str]) -> list[str]:
    """The ways the IR ignores a ``keep_float`` request: a pattern that names no layer, a named layer compressed."""
    problems = []
    for pattern in keep_float:
        named = [layer for layer in summary["layers"] if re.match(pattern, layer["layer"])]
        compressed = [f"{layer['layer']} ({layer['precision']})" for layer in named if layer["precision"] != "float"]
        if not named:
            problems.append(f"keep_float pattern {pattern!r} names no weight layer of the IR")
        elif compressed:
            problems.append(
                f"keep_float pattern {pattern!r}: {len(compressed)} layers compressed, e.g. {compressed[0]}"
            )
    return problems


def check_matches_request(
    summary: dict[str, Any], weight_format: str, ratio: float = 1.0, keep_float: list[str] | None = None
) -> list[str]:
    """Return the ways an IR summary contradicts the requested weight format (empty when it matches)."""
    counts = summary["weight_layers"]
    problems, kept = [], 0
    if keep_float:
        problems = kept_float_problems(summary, keep_float)
        kept = sum(any(re.match(p, layer["layer"]) for p in keep_float) for layer in summary["layers"])
    if counts["total"] == 0:
        problems.append("no weight layers found in the IR")
    if weight_format == "fp16" and (counts["int4"] or counts["int8"]):
        problems.append(f"fp16 IR holds {counts['int4']} int4 and {counts['int8']} int8 layers")
    if weight_format == "int8" and (counts["int4"] or counts["int8"] == 0 or counts["float"] > kept):
        problems.append(f"int8 IR should be all int8 but the keep_float layers, found {counts}")
    if weight_format == "int4":
        if counts["int4"] == 0:
            problems.append("int4 requested but the IR has no 4-bit weight layer (quantization was skipped)")
        if "weight_compression" not in summary["nncf"]:
            problems.append("int4 IR has no NNCF weight_compression rt_info")
    return problems
