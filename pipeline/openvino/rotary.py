"""Rotary-embedding constants of an OpenVINO IR: find them, keep them in f32, check them against transformers.

Phi-3's rotary embedding turns positions into angles with small float constants (inverse
frequencies, LongRoPE factors, the attention scaling). An fp16 IR that stores them in fp16 rotates
queries and keys by slightly wrong angles, an error that grows with the position: a factor 1.05
stored as 1.0498 turns the fastest frequency 0.7 rad too far by position 4000. Upstream stores them in fp16 (see
:func:`keep_rotary_f32_on_save`); this module keeps them in f32 and checks that it did.

The rotary subgraph is found by structure, not by name (:mod:`pipeline.openvino.rotary_graph`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.openvino.rotary_graph import rotary_of_model

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
