"""What onnxruntime-genai 0.18 reads of a ``genai_config.json``, as data, and the check every writer runs on it.

Every ``genai_config.json`` this project writes (``export_onnx``'s, from the model builder; ``export_winml``'s) is
checked against :data:`ROOT` before the folder is published: a key the runtime does not read, or a value it would
refuse or misread, fails the export in one line (:func:`check_genai_config`).

Sources, read, not copied:

- microsoft/onnxruntime-genai ``src/config.cpp`` (the ``*_Element`` parsers), ``src/models/session_options.cpp``
  (CPU takes no options), ``src/dml/session_options.cpp`` (DML reads ``luid``, ``device_index``,
  ``enable_graph_capture``), ``src/openvino/session_options.cpp`` (``device_type`` selects the plugin's device,
  ``cache_dir`` is made absolute against the package folder and merged into ``load_config`` as ``CACHE_DIR``),
  ``src/openvino/interface.cpp`` (only ``enable_causallm == "True"`` makes the session stateful), at a0c04eb
  (main of 2026-08-22; VERSION_INFO 0.16.0-dev, newest tag v0.15.2). The installed wheel is 0.18.0 (commit
  00d66ef, not in that snapshot), so every key below is also fed to the 0.18.0 loader (``og.Config``) by
  tests/validation/test_genai_schema.py, which accepts each of them and refuses a misspelt one. The decoder
  inputs and outputs marked "0.18" are the model builder 0.18's (``builders/base.py``), accepted by that loader.
- intel/onnxruntime at cc8e901, the OpenVINO EP: ``contexts.h`` (``valid_provider_keys``) and
  ``openvino_provider_factory.cc``: through the plugin (``AppendExecutionProvider_V2``, how Windows ML and
  onnxruntime-genai run it) :data:`OPENVINO_REFUSED` are errors; ``load_config`` is a JSON object of device
  (CPU, GPU, NPU, AUTO, HETERO, MULTI: others are skipped) to OpenVINO properties; only the entry of the device
  that runs is applied (``basic_backend.cc``); the NPU reads ``MAX_PROMPT_LEN`` / ``MIN_RESPONSE_LEN`` as
  unsigned integers and refuses 0 (``ov_interface.cc``).

What the runtime refuses itself (a misspelt ``model`` or ``search`` key), it refuses only when the folder is loaded,
on the user's machine. What it ignores (a session option ORT does not know, a DML option, a ``load_config`` entry
for another device) it never reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail

RUNTIME = "onnxruntime-genai 0.18"
OPAQUE = "opaque"  # parsed by the runtime; this project never writes it, so it is not checked further
INT, FLOAT, BOOL, STR, INTS = "int", "float", "bool", "str", "int or list of int"

SESSION_OPTIONS: dict[str, Any] = {
    "log_id": STR,
    "enable_profiling": STR,
    "intra_op_num_threads": INT,
    "inter_op_num_threads": INT,
    "log_severity_level": INT,
    "log_verbosity_level": INT,
    "enable_cpu_mem_arena": BOOL,
    "enable_mem_pattern": BOOL,
    "graph_optimization_level": ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"),
    "custom_ops_library": STR,
    "provider_options": "providers",
    # Any other key becomes an ORT session config entry, which ORT keeps without reading unless it knows it: only
    # the entries the 0.18 builder writes (builders/base.py) are taken.
    "session.use_device_allocator_for_initializers": STR,
    "optimization.disable_specified_optimizers": STR,
    "ep.cuda.fpa_intb_gemm": STR,
}
OV_DEVICES = ("CPU", "GPU", "NPU")
PROVIDERS: dict[str, dict[str, Any]] = {
    "CPU": {},  # session_options.cpp: "CPU execution provider does not support provider options"
    "DML": {"luid": STR, "device_index": STR, "enable_graph_capture": ("0", "1")},
    "OpenVINO": {
        "device_type": OV_DEVICES,
        "enable_causallm": ("True", "False"),  # "true" is the EP's too, but the session is then not stateful
        "load_config": "load_config",
        "cache_dir": STR,
        "reshape_input": STR,
        "layout": STR,
    },
    "cuda": {"enable_cuda_graph": ("0", "1")},  # the builder's; the CUDA EP checks the rest itself
    "WebGPU": {"enableGraphCapture": ("0", "1"), "validationMode": STR, "multiRotaryCacheConcatOffset": STR},
}
# config.cpp NormalizeProviderName: case-insensitive, an "ExecutionProvider" suffix dropped ("dml" is DML).
PROVIDER_NAMES = {name.lower(): name for name in PROVIDERS}
OPENVINO_REFUSED = {
    key: "the OpenVINO EP plugin refuses it (set it through load_config)"
    for key in ("precision", "num_of_threads", "num_streams", "model_priority", "enable_opencl_throttling")
} | {
    key: "the OpenVINO EP plugin refuses it (AppendExecutionProvider_V2)"
    for key in ("device_id", "device_luid", "context", "disable_dynamic_shapes", "enable_qdq_optimizer")
}
LOAD_CONFIG_DEVICES = ("CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI")
NPU_UNSIGNED = ("MAX_PROMPT_LEN", "MIN_RESPONSE_LEN")

_DECODER_INPUTS = (
    "input_ids inputs_embeds attention_mask position_ids past_key_names past_value_names past_names "
    "cross_past_key_names cross_past_value_names past_sequence_length current_sequence_length "
    "total_sequence_length encoder_hidden_states encoder_attention_mask rnn_states_prev past_key_values_length "
    "cache_indirection cumulative_sequence_lengths past_sequence_lengths block_table block_table_windowed "
    "attention_metadata past_conv_names hidden_states targets lstm_hidden_state lstm_cell_state per_layer_inputs "
    "targets_length"
    # 0.18
    " past_recurrent_names past_key_scale_names past_value_scale_names state_update_capture_count state_update_active"
)
_DECODER_OUTPUTS = (
    "logits present_key_names present_value_names present_names output_cross_qk_names rnn_states "
    "present_conv_names hidden_states outputs lstm_hidden_state lstm_cell_state outputs_length"
    # 0.18
    " present_key_scale_names present_value_scale_names present_recurrent_names state_update_conv_value_names"
    " state_update_recurrent_capsule_names"
)
DECODER: dict[str, Any] = {
    **dict.fromkeys(("hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads"), INT),
    **{"head_size": INT, "conv_cache_size": INT, "filename": STR, "session_options": SESSION_OPTIONS},
    "inputs": dict.fromkeys(_DECODER_INPUTS.split(), STR),
    "outputs": dict.fromkeys(_DECODER_OUTPUTS.split(), STR),
    "sliding_window": {
        **dict.fromkeys(("window_size", "pad_value", "cache_slack"), INT),
        **{"alignment": ("left", "right"), "slide_key_value_cache": BOOL, "slide_inputs": BOOL, "layers": "ints"},
    },
    **dict.fromkeys(("run_options", "pipeline", "layer_types", "shared_initializers"), OPAQUE),
}
_MODEL_INTS = (
    "vocab_size pad_token_id bos_token_id decoder_start_token_id sep_token_id image_token_id audio_token_id "
    "boa_token_id video_token_id vision_start_token_id num_mels fft_size hop_length win_length subsampling_factor "
    "left_context conv_context pre_encode_cache_size sample_rate chunk_samples blank_id max_symbols_per_step "
    "left_context_samples right_context_samples bot_token_id eot_token_id bor_token_id eor_token_id"
)
MODEL: dict[str, Any] = {
    **dict.fromkeys(_MODEL_INTS.split(), INT),
    **{"type": STR, "tokenizer_dir": STR, "context_length": "positive", "eos_token_id": INTS, "tdt_durations": "ints"},
    **dict.fromkeys(("preemph", "log_eps", "norm_eps"), FLOAT),
    "decoder": DECODER,
    **dict.fromkeys(("encoder", "draft", "vision", "embedding", "speech", "joiner", "vad", "mtp"), OPAQUE),
}
_SEARCH_INTS = "min_length max_length batch_size num_beams num_return_sequences top_k no_repeat_ngram_size random_seed"
SEARCH: dict[str, Any] = {
    **dict.fromkeys(_SEARCH_INTS.split(), INT),
    **dict.fromkeys(("top_p", "temperature", "repetition_penalty", "length_penalty", "diversity_penalty"), FLOAT),
    **dict.fromkeys(("chunk_size", "blank_penalty"), FLOAT),
    **dict.fromkeys(("do_sample", "past_present_share_buffer", "early_stopping"), BOOL),
}
ROOT: dict[str, Any] = {"model": MODEL, "search": SEARCH, "speculative": OPAQUE, "engine": OPAQUE}


def _type_problem(value: Any, kind: Any) -> str | None:
    """Why ``value`` is not of ``kind`` (a type name or a tuple of allowed values), or ``None``."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {
        INT: is_int,
        "positive": is_int and value > 0,
        FLOAT: is_int or (isinstance(value, float) and not isinstance(value, bool)),
        BOOL: isinstance(value, bool),
        STR: isinstance(value, str),
        INTS: is_int or (isinstance(value, list) and all(isinstance(v, int) for v in value)),
        "ints": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }
    if isinstance(kind, tuple):
        return None if value in kind else f"is {value!r}, which the runtime does not take (one of {', '.join(kind)})"
    return None if ok.get(kind, True) else f"is {value!r}, expected {'a positive int' if kind == 'positive' else kind}"


def _walk(data: Any, schema: dict[str, Any], path: str, out: list[str]) -> None:
    if not isinstance(data, dict):
        out.append(f"{path} is {type(data).__name__}, expected an object")
        return
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        kind = schema.get(key)
        if kind is None:
            out.append(f"{where} is not a key {RUNTIME} reads")
        elif isinstance(kind, dict):
            _walk(value, kind, where, out)
        elif kind == "providers":
            _providers(value, where, out)
        elif kind != OPAQUE:
            problem = _type_problem(value, kind)
            if problem:
                out.append(f"{where} {problem}")


def _providers(value: Any, path: str, out: list[str]) -> None:
    if not isinstance(value, list) or not all(isinstance(e, dict) and len(e) == 1 for e in value):
        out.append(f"{path} must be a list of one-key objects ({{provider: options}})")
        return
    for entry in value:
        ((written, options),) = entry.items()
        where, name = f"{path}.{written}", normalized_provider(written)
        if name not in PROVIDERS:
            out.append(f"{where}: provider {name!r} is not one this project checks ({', '.join(PROVIDERS)})")
        elif not isinstance(options, dict):
            out.append(f"{where} must be an object of string options")
        else:
            for key, option in options.items():
                _provider_option(name, key, option, f"{where}.{key}", options, out)


def normalized_provider(name: str) -> str:
    """The provider name the runtime uses for ``name`` as written (``dml``, ``DmlExecutionProvider``: ``DML``)."""
    lower = name.lower().removesuffix("executionprovider") if len(name) > 17 else name.lower()
    return PROVIDER_NAMES.get(lower, name)


def _provider_option(provider: str, key: str, value: Any, where: str, options: dict, out: list[str]) -> None:
    if key == "device_filtering_options":  # config.cpp: an object of hardware_device_* filters, for every provider
        return
    if provider == "OpenVINO" and key in OPENVINO_REFUSED:
        out.append(f"{where}: {OPENVINO_REFUSED[key]}")
        return
    kind = PROVIDERS[provider].get(key)
    if kind is None:
        reason = "takes no provider options" if not PROVIDERS[provider] else "does not read it: it is ignored"
        out.append(f"{where}: {RUNTIME}'s {provider} provider {reason}")
    elif not isinstance(value, str):  # config.cpp: every provider option is read as a string
        out.append(f"{where} is {value!r}: provider options are strings (write {json.dumps(str(value))})")
    elif kind == "load_config":
        out.extend(f"{where}: {p}" for p in load_config_problems(value, options.get("device_type")))
    else:
        problem = _type_problem(value, kind)
        if problem:
            out.append(f"{where} {problem}")


def load_config_problems(text: str, device: str | None) -> list[str]:
    """What the OpenVINO EP would refuse or skip in a ``load_config`` string, for a session on ``device``."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        return [f"not JSON ({err.msg})"]
    if not isinstance(parsed, dict):
        return ["must be a JSON object of device to properties"]
    out = []
    for name, properties in parsed.items():
        if name not in LOAD_CONFIG_DEVICES:
            out.append(f"device {name!r} is skipped by the EP (one of {', '.join(LOAD_CONFIG_DEVICES)})")
        elif device and name != device:
            out.append(f"the {name} entry is ignored: the EP applies only the entry of the device it runs ({device})")
        elif not isinstance(properties, dict):
            out.append(f"{name} must map to an object of OpenVINO properties")
        else:
            for key in NPU_UNSIGNED:
                value = properties.get(key)
                if (
                    name == "NPU"
                    and value is not None
                    and not (isinstance(value, str) and value.isdigit() and int(value))
                ):
                    out.append(f"NPU {key} is {value!r}: the EP reads a positive integer, written as a string")
    return out


def problems(config: dict[str, Any]) -> list[str]:
    """Every way ``config`` (a parsed ``genai_config.json``) departs from what the runtime reads (empty when none)."""
    out: list[str] = []
    _walk(config, ROOT, "", out)
    model, search = config.get("model") or {}, config.get("search") or {}
    context, longest = model.get("context_length"), search.get("max_length")
    if isinstance(context, int) and isinstance(longest, int) and longest > context:
        out.append(f"search.max_length {longest} is over model.context_length {context}: the runtime refuses it")
    return out


def check_genai_config(path: Path, where: str) -> None:
    """Fail in one line, naming every problem, unless ``path`` is a ``genai_config.json`` the runtime reads as written."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        fail(f"{where} cannot read {Path(path).name}: {err}")
    found = problems(config)
    if found:
        fail(f"{where} {Path(path).name} is not what {RUNTIME} reads: {'; '.join(found)}")
