"""The Windows ML package itself: the EPContext model and ``genai_config.json`` around an OpenVINO IR, and its checks.

Layout of Olive's ``OpenVINOEncapsulation`` pass (microsoft/Olive, olive/passes/openvino/encapsulation.py and
``create_genai_config`` in ov_utils.py): ``openvino_model.onnx`` holds one ``com.microsoft`` ``EPContext`` node
whose ``ep_cache_context`` names the IR beside it (``embed_mode=0``); its inputs and outputs are the IR's. The
``genai_config.json`` runs it with the OpenVINO execution provider (``enable_causallm`` must be the string
``"True"``) and ORT's graph optimizations off. Everything is written from the IR and the model's configs, with
no timestamps, so the same IR gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.hashes import sha256_file
from pipeline.winml import limits

ONNX_FILE = "openvino_model.onnx"
IR_FILES = ("openvino_model.xml", "openvino_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
EP_SOURCE = "OpenVINOExecutionProvider"
# Olive's opset imports for the context model (encapsulation.py, ``opset_imports`` default), ir_version 10.
OPSET_IMPORTS = (
    ("com.microsoft.nchwc", 1),
    ("", 11),
    ("ai.onnx.ml", 5),
    ("com.ms.internal.nhwc", 11),
    ("ai.onnx.training", 1),
    ("ai.onnx.preview.training", 1),
    ("com.microsoft.experimental", 1),
    ("com.microsoft", 1),
    ("org.pytorch.aten", 1),
)
ONNX_TYPES = {"i64": 7, "i32": 6, "f32": 1, "f16": 10, "bf16": 16, "boolean": 9, "u8": 2, "i8": 3}  # TensorProto


def ir_ports(xml: Path) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    """The IR's inputs and outputs as (name, element type, shape), dynamic dimensions as ``None``."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))

    def port(p: Any) -> tuple[str, str, list[Any]]:
        dims = [None if d.is_dynamic else d.get_length() for d in p.get_partial_shape()]
        return p.get_any_name(), p.get_element_type().get_type_name(), dims

    return [port(p) for p in model.inputs], [port(p) for p in model.outputs]


def context_model(xml: Path, device_type: str, sdk_version: str) -> bytes:
    """The serialized ``openvino_model.onnx``: one EPContext node over the IR's inputs and outputs."""
    from onnx import helper

    inputs, outputs = ir_ports(xml)

    def info(kind: str, i: int, port: tuple[str, str, list[Any]]) -> Any:
        name, dtype, dims = port
        shape = [f"{kind}_{i}_{j}" if d is None else d for j, d in enumerate(dims)]  # Olive's names for free dims
        return helper.make_tensor_value_info(name, ONNX_TYPES[dtype], shape)

    node = helper.make_node(
        "EPContext",
        inputs=[p[0] for p in inputs],
        outputs=[p[0] for p in outputs],
        name="ContextNode",
        domain="com.microsoft",
        embed_mode=0,
        ep_cache_context=xml.name,
        ep_sdk_version=sdk_version,
        main_context=1,
        max_size=0,
        source=EP_SOURCE,
        DeviceClass=device_type,
    )
    graph = helper.make_graph(
        [node],
        "EP_Context_Model",
        [info("input", i, p) for i, p in enumerate(inputs)],
        [info("output", i, p) for i, p in enumerate(outputs)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSET_IMPORTS])
    model.ir_version = 10
    return bytes(model.SerializeToString(deterministic=True))


def genai_config(
    config: dict[str, Any],
    generation: dict[str, Any],
    io: tuple[list[str], list[str]],
    device: str,
    npu_settings: dict[str, Any] | None = None,
) -> dict:
    """``genai_config.json`` as Olive's ``create_genai_config`` writes it (``beam_idx`` is the EP's, not GenAI's).

    Beyond Olive's defaults: the compiled-model cache for every device, and for the NPU its IR's limits
    (``npu_settings``, its ``npu_config.json``) as ``load_config`` with the context they hold (:mod:`limits`).
    """
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    held = limits.held_tokens(npu_settings) if device == "NPU" and npu_settings else None
    context = held or config["max_position_embeddings"]
    eos = generation.get("eos_token_id", config.get("eos_token_id", -1))
    pad = generation.get("pad_token_id")
    if pad is None:
        pad = eos[0] if isinstance(eos, list) and eos else eos
    inputs, outputs = io
    return {
        "model": {
            "bos_token_id": config.get("bos_token_id", -1),
            "context_length": context,
            "decoder": {
                "session_options": {
                    "log_id": "onnxruntime-genai",
                    "graph_optimization_level": "ORT_DISABLE_ALL",
                    "provider_options": [{"OpenVINO": limits.provider_options(device, npu_settings)}],
                },
                "filename": ONNX_FILE,
                "head_size": hidden // heads,
                "hidden_size": hidden,
                "inputs": {name: name for name in inputs if name != "beam_idx"},
                "outputs": {name: name for name in outputs},
                "num_attention_heads": heads,
                "num_hidden_layers": config["num_hidden_layers"],
                "num_key_value_heads": config.get("num_key_value_heads", heads),
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": config["model_type"],
            "vocab_size": config["vocab_size"],
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def inspect_package(folder: Path) -> dict[str, Any]:
    """Summarise a package: the context model's nodes and I/O, the genai_config decoder entry, the IR it points to."""
    import onnx

    folder = Path(folder)
    genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    decoder = genai["model"]["decoder"]
    model = onnx.load(str(folder / decoder["filename"]))
    nodes = [
        {
            "op_type": n.op_type,
            "domain": n.domain,
            "attributes": {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute},
            "inputs": list(n.input),
            "outputs": list(n.output),
        }
        for n in model.graph.node
    ]
    for node in nodes:  # bytes -> str for JSON (string attributes come back as bytes)
        node["attributes"] = {k: v.decode() if isinstance(v, bytes) else v for k, v in node["attributes"].items()}
    context = nodes[0]["attributes"].get("ep_cache_context") if nodes else None
    ir = [context, str(context).replace(".xml", ".bin")] if context else []
    return {
        "filename": decoder["filename"],
        "session_options": decoder.get("session_options", {}),
        "genai_io": {"inputs": decoder.get("inputs", {}), "outputs": decoder.get("outputs", {})},
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "nodes": nodes,
        "ir_files": {name: sha256_file(folder / name) if (folder / name).is_file() else None for name in ir},
        "tokenizer_files": [name for name in TOKENIZER_FILES if (folder / name).is_file()],
    }


def check_package(
    summary: dict[str, Any],
    device_type: str,
    source_ir: dict[str, str],
    ir_io: list[list[str]],
    npu_settings: dict[str, Any] | None = None,
) -> list[str]:
    """Every way the package contradicts the layout the OpenVINO EP needs (empty when it matches).

    Args:
        summary: :func:`inspect_package` output.
        device_type: The device the variant targets (``NPU``, ``GPU``, ``CPU``).
        source_ir: sha256 of ``openvino_model.xml`` / ``.bin`` of the IR the package was built from.
        ir_io: The IR's input names and output names (what the EPContext node must carry).
        npu_settings: The NPU IR's run settings (its ``npu_config.json``), for an NPU package.
    """
    problems = []
    options = summary["session_options"]
    want = [{"OpenVINO": limits.provider_options(device_type, npu_settings)}]
    if options.get("provider_options") != want:
        problems.append(f"genai_config.json provider_options {options.get('provider_options')}, expected {want}")
    if options.get("graph_optimization_level") != "ORT_DISABLE_ALL":
        problems.append(
            f"graph_optimization_level {options.get('graph_optimization_level')!r}, expected ORT_DISABLE_ALL"
        )
    nodes = summary["nodes"]
    if [(n["op_type"], n["domain"]) for n in nodes] != [("EPContext", "com.microsoft")]:
        problems.append(
            f"{ONNX_FILE} must hold one com.microsoft EPContext node, found {[n['op_type'] for n in nodes]}"
        )
        return problems
    attrs = nodes[0]["attributes"]
    expected = {"embed_mode": 0, "ep_cache_context": IR_FILES[0], "source": EP_SOURCE, "main_context": 1}
    problems += [f"EPContext {k}={attrs.get(k)!r}, expected {v!r}" for k, v in expected.items() if attrs.get(k) != v]
    for name, digest in summary["ir_files"].items():
        if digest is None:
            problems.append(f"the IR file {name} the EPContext node points to is missing")
        elif name in source_ir and digest != source_ir[name]:
            problems.append(
                f"{name} differs from the source IR's (sha256 {digest[:12]}, source {source_ir[name][:12]})"
            )
    if [summary["inputs"], summary["outputs"]] != ir_io or [nodes[0]["inputs"], nodes[0]["outputs"]] != ir_io:
        problems.append(
            f"EPContext inputs/outputs {summary['inputs']} -> {summary['outputs']} are not the IR's {ir_io}"
        )
    for kind in ("inputs", "outputs"):
        missing = [n for n in summary["genai_io"][kind].values() if n not in summary[kind]]
        if missing:
            problems.append(f"genai_config {kind} name {missing[0]}, which the graph lacks")
    missing = [n for n in TOKENIZER_FILES if n not in summary["tokenizer_files"]]
    if missing:
        problems.append(f"tokenizer files missing: {', '.join(missing)}")
    return problems
