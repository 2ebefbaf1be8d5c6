"""Structural checks on an ONNX Runtime GenAI folder: provider entry, graph I/O, MatMulNBits, external data.

``onnx.checker`` rejects every model-builder output (contrib ops, external data layout), so the graph is
read with ``onnx.load(..., load_external_data=False)`` (cheap even for a 2 GB model) and checked directly.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.onnx.config import OnnxVariantConfig
from pipeline.onnx.sliding_window import graph_windows

DEFAULT_BLOCK_SIZE = 32  # builder default when block_size is not set
# Provider-option key the builder writes into genai_config.json for each execution provider (cpu: none).
PROVIDER_ENTRY = {"dml": "dml", "cuda": "cuda", "webgpu": "webgpu", "cpu": None}
MIXED_ALGOS = ("rtn_last", "k_quant_last", "k_quant_mixed", "k_quant_linear")


# Providers whose builder graphs rotate inside GroupQueryAttention (do_rotary with cos/sin caches); on DML the
# builder emits a separate RotaryEmbedding op (onnxruntime_genai builders/base.py, is_fused_rope_supported).
FUSED_ROTARY_PROVIDERS = ("cpu", "cuda", "webgpu")


def gqa_rotary_problem(model_config: dict[str, Any], execution_provider: str) -> str | None:
    """Why onnxruntime's GroupQueryAttention cannot run this model's rotary, or None when it can.

    The kernel checks "cos_cache dimension 1 must be <= head_size / 2 and a multiple of 8"
    (onnxruntime contrib_ops group_query_attention_helper.h). The builder's cos cache is rotary_dim / 2 wide,
    rotary_dim = head_size x partial_rotary_factor: Phi-4-mini's 128 x 0.75 = 96 gives 48, fine; a head of 32
    at 0.75 gives 12, which the kernel refuses at the first run, long after a build that looked fine.
    """
    if execution_provider not in FUSED_ROTARY_PROVIDERS:
        return None
    heads = int(model_config["num_attention_heads"])
    head_size = int(model_config.get("head_dim") or int(model_config["hidden_size"]) // heads)
    rope = model_config.get("rope_parameters") or model_config.get("rope_scaling") or {}
    partial = float(model_config.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1.0)
    cache = int(head_size * partial) // 2
    if cache <= head_size // 2 and cache % 8 == 0:
        return None
    return (
        f"onnxruntime's GroupQueryAttention cannot run this model on {execution_provider}: its cos_cache would be "
        f"{cache} wide (head size {head_size} x partial_rotary_factor {partial:g} / 2), and the kernel needs "
        f"cos_cache dimension 1 <= head_size / 2 = {head_size // 2} and a multiple of 8; "
        "use the OpenVINO families for this model"
    )


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dtype(value_info: Any) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(value_info.type.tensor_type.elem_type).lower()


def quantized_ops(graph: Any) -> dict[str, Any]:
    """MatMulNBits / GatherBlockQuantized nodes by bits, block size and accuracy level."""
    bits: Counter[int] = Counter()
    blocks: Counter[int | None] = Counter()
    levels: Counter[int] = Counter()
    gathers = 0
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = _attrs(node)
            bits[attrs.get("bits", 4)] += 1
            blocks[attrs.get("block_size")] += 1
            levels[attrs.get("accuracy_level", 0)] += 1
        elif node.op_type == "GatherBlockQuantized":
            gathers += 1
    return {
        "matmul_nbits": sum(bits.values()),
        "bits": dict(bits),
        "block_sizes": dict(blocks),
        "accuracy_levels": dict(levels),
        "gather_block_quantized": gathers,
    }


def float_weight_matmuls(graph: Any) -> list[str]:
    """Plain MatMul nodes whose weight is a stored initializer (i.e. left unquantized)."""
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]


def external_data_problems(graph: Any, folder: Path) -> tuple[dict[str, int], list[str]]:
    """Check every externally stored initializer lies inside its data file; return file sizes and problems."""
    files: dict[str, int] = {}
    problems: list[str] = []

    for init in graph.initializer:
        if init.data_location != 1:  # TensorProto.EXTERNAL
            continue
        info = {e.key: e.value for e in init.external_data}
        path = folder / info.get("location", "")
        if not path.is_file():
            problems.append(f"initializer {init.name} points to missing file {info.get('location')}")
            continue
        size = files.setdefault(path.name, path.stat().st_size)
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > size:
            problems.append(f"initializer {init.name} ends at byte {end} beyond {path.name} ({size} bytes)")
    return files, problems


def _stored_root(graph: Any, name: str) -> str | None:
    """The initializer a weight input is read from, through the builder's Reshape / Cast / Transpose views."""
    inits = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    for _ in range(4):
        if name in inits:
            return name
        node = producer.get(name)
        if node is None or node.op_type not in ("Reshape", "Cast", "Transpose", "Identity"):
            return None
        name = node.input[0]
    return name if name in inits else None


def _node_precision(node: Any) -> str:
    if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
        return f"int{_attrs(node).get('bits', 4)}"
    return "float"


def embedding_tie(graph: Any) -> dict[str, Any] | None:
    """The input embedding and the LM head of a builder graph: their precisions and whether they read one weight.

    With ``shared_embeddings`` (the builder's default for a tied checkpoint) the embedding's GatherBlockQuantized
    reads the LM head's quantized MatMulNBits weight, so the tied matrix is stored once, at the LM head's bits.
    """
    embed = next((n for n in graph.node if n.op_type in ("GatherBlockQuantized", "Gather") and "embed" in n.name), None)
    head = next(
        (n for n in reversed(graph.node) if n.op_type in ("MatMulNBits", "MatMul") and "lm_head" in n.name), None
    )
    if embed is None or head is None:
        return None
    embed_root, head_root = _stored_root(graph, embed.input[0]), _stored_root(graph, head.input[1])
    return {
        "shared_constant": embed_root is not None and embed_root == head_root,
        "embedding": {"layer": embed.name, "precision": _node_precision(embed)},
        "lm_head": {"layer": head.name, "precision": _node_precision(head)},
    }


def inspect_onnx(folder: Path) -> dict[str, Any]:
    """Summarise a builder output folder: genai_config provider entry, graph I/O and dtypes, quantized ops."""
    import onnx

    folder = Path(folder)
    genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    decoder = genai["model"]["decoder"]
    model = onnx.load(str(folder / decoder["filename"]), load_external_data=False)
    graph = model.graph
    produced = {out for node in graph.node for out in node.output}
    data_files, data_problems = external_data_problems(graph, folder)
    tokenizer_config = folder / "tokenizer_config.json"
    return {
        "filename": decoder["filename"],
        "provider_options": {
            k: v for entry in decoder.get("session_options", {}).get("provider_options", []) for k, v in entry.items()
        },
        "genai_io": {"inputs": decoder.get("inputs", {}), "outputs": decoder.get("outputs", {})},
        "num_hidden_layers": decoder.get("num_hidden_layers"),
        "inputs": {i.name: _dtype(i) for i in graph.input},
        "outputs": {o.name: _dtype(o) for o in graph.output},
        "unproduced_outputs": [o.name for o in graph.output if o.name not in produced],
        "ops": dict(Counter(n.op_type for n in graph.node)),
        "attention_windows": graph_windows(graph),  # GroupQueryAttention local_window_size per layer (-1: full)
        "quantization": quantized_ops(graph),
        "float_weight_matmuls": float_weight_matmuls(graph),
        "tied_embeddings": embedding_tie(graph),
        "external_data": {"files": data_files, "problems": data_problems},
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "tokenizer_class": (
            json.loads(tokenizer_config.read_text(encoding="utf-8")).get("tokenizer_class")
            if tokenizer_config.is_file()
            else None
        ),
    }


def expected_io_dtype(cfg: OnnxVariantConfig) -> str:
    """The dtype of logits and KV cache the builder should write for this request."""
    if cfg.extra_options.get("use_webgpu_fp32") or cfg.precision == "fp32" or cfg.execution_provider == "cpu":
        return "float"
    return "bfloat16" if cfg.extra_options.get("use_cuda_bf16") else "float16"


def _io_problems(summary: dict[str, Any], cfg: OnnxVariantConfig, layers: int) -> list[str]:
    inputs, outputs, dtype = summary["inputs"], summary["outputs"], expected_io_dtype(cfg)
    want_in = ["inputs_embeds" if cfg.exclude_embeds else "input_ids", "attention_mask"]
    if cfg.execution_provider == "dml":
        want_in.append("position_ids")  # the DML graph takes explicit positions
    kv_in = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    kv_out = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    head = "hidden_states" if cfg.exclude_lm_head else "logits"
    problems = [f"graph input {n} missing" for n in want_in + kv_in if n not in inputs]
    problems += [f"graph output {n} missing" for n in [head, *kv_out] if n not in outputs]
    wrong = {n: t for n, t in {**inputs, **outputs}.items() if n in (*kv_in, *kv_out, head) and t != dtype}
    if wrong:
        problems.append(
            f"expected {dtype} KV cache and {head}, found {sorted(set(wrong.values()))} "
            f"in {len(wrong)} tensors (e.g. {next(iter(wrong))})"
        )
    for kind in ("inputs", "outputs"):
        for key, name in summary["genai_io"][kind].items():
            names = [name % i for i in range(layers)] if "%d" in name else [name]
            missing = [n for n in names if n not in summary[kind]]
            if missing:
                problems.append(f"genai_config {kind}.{key} names {missing[0]}, which the graph lacks")
    return problems


def _quantization_problems(summary: dict[str, Any], cfg: OnnxVariantConfig) -> list[str]:
    q = summary["quantization"]
    if cfg.precision in ("fp16", "fp32"):
        return [f"{cfg.precision} graph holds {q['matmul_nbits']} MatMulNBits"] if q["matmul_nbits"] else []
    if cfg.extra_options.get("use_qdq"):
        return []
    bits = 4 if cfg.precision == "int4" else 8
    block = cfg.block_size or DEFAULT_BLOCK_SIZE
    problems = []
    if not q["bits"].get(bits):
        problems.append(f"{cfg.precision} requested but the graph has no {bits}-bit MatMulNBits")
    mixed = cfg.algo_config in MIXED_ALGOS or "matmul_mixed_precision" in cfg.extra_options
    if set(q["bits"]) - ({4, 8} if mixed else {bits}):
        problems.append(f"MatMulNBits bit widths {q['bits']} do not match {cfg.precision}")
    if set(q["block_sizes"]) - {block}:
        problems.append(f"MatMulNBits block sizes {q['block_sizes']} differ from the requested {block}")
    if summary["float_weight_matmuls"] and not cfg.extra_options.get("nodes_to_exclude"):
        problems.append(f"unquantized MatMul weights left: {summary['float_weight_matmuls'][:3]}")
    return problems


def check_matches_request(summary: dict[str, Any], cfg: OnnxVariantConfig, num_layers: int) -> list[str]:
    """Return every way the folder contradicts the request (empty when it matches).

    Args:
        summary: :func:`inspect_onnx` output.
        cfg: The variant that was requested.
        num_layers: ``num_hidden_layers`` of the source model (one KV pair per layer).
    """
    problems = []
    entry = PROVIDER_ENTRY[cfg.execution_provider]
    found = list(summary["provider_options"])
    if found != ([entry] if entry else []):
        problems.append(f"genai_config.json provider_options {found}, expected {[entry] if entry else []}")
    elif cfg.execution_provider == "dml":
        capture = summary["provider_options"]["dml"].get("enable_graph_capture")
        if capture != ("0" if cfg.enable_dml_graph is False else "1"):
            problems.append(
                f"DML enable_graph_capture is {capture!r}, requested enable_dml_graph={cfg.enable_dml_graph}"
            )
    if summary["unproduced_outputs"]:
        problems.append(f"declared graph outputs no node produces: {summary['unproduced_outputs']}")
    problems += summary["external_data"]["problems"]
    problems += _io_problems(summary, cfg, num_layers)
    problems += _quantization_problems(summary, cfg)
    return problems
