"""Issue 30.4: every genai_config.json we write is checked against what onnxruntime-genai 0.18 reads.

The schema (pipeline/validation/genai_schema.py) was read from the runtime's source at a snapshot older than the
installed wheel, so these tests hold it against the installed 0.18 loader itself (``og.Config`` parses the file and
raises on a key it does not read): every key of the schema is accepted there, and what the schema calls a key the
runtime refuses is refused there too. Keys the runtime takes without reading (an unknown session option, a DML option)
pass ``og.Config``: the schema is what refuses them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.errors import StageError
from pipeline.validation import genai_schema as schema
from tests.conftest import TINY_DIR

BASE: dict[str, Any] = {
    "model": {
        "type": "phi3",
        "context_length": 64,
        "vocab_size": 10,
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
        "pad_token_id": 2,
        "decoder": {
            "filename": "model.onnx",
            "head_size": 4,
            "hidden_size": 8,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "num_key_value_heads": 2,
            "session_options": {
                "log_id": "onnxruntime-genai",
                "provider_options": [{"OpenVINO": {"device_type": "NPU", "enable_causallm": "True"}}],
            },
            "inputs": {"input_ids": "input_ids"},
            "outputs": {"logits": "logits"},
        },
    },
    "search": {"max_length": 64},
}
SAMPLES = {schema.INT: 1, "positive": 8, schema.FLOAT: 0.5, schema.BOOL: True, schema.STR: "x", schema.INTS: [1]}
SAMPLES["ints"] = [0]


def loader_error(config: dict[str, Any], tmp_path: Path) -> str | None:
    """The installed onnxruntime-genai's refusal of ``config`` (its message), or ``None`` when it parses it."""
    import onnxruntime_genai as og

    folder = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "genai_config.json").write_text(json.dumps(config), encoding="utf-8")
    try:
        og.Config(str(folder))
    except Exception as err:  # the runtime's own refusal
        return str(err)
    return None


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    config = copy.deepcopy(BASE)
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return config


def schema_keys(node: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every key of the schema the loader can be asked about, with a value of its kind."""
    for key, kind in node.items():
        if isinstance(kind, dict):
            yield from schema_keys(kind, (*path, key))
        elif isinstance(kind, tuple):
            yield (*path, key), kind[0]
        elif kind in SAMPLES:
            yield (*path, key), SAMPLES[kind]


def test_the_installed_runtime_is_the_one_the_schema_names() -> None:
    import onnxruntime_genai as og

    assert schema.RUNTIME == f"onnxruntime-genai {'.'.join(og.__version__.split('.')[:2])}"


def test_every_key_of_the_schema_is_one_the_installed_loader_reads(tmp_path: Path) -> None:
    keys = list(schema_keys(schema.ROOT))
    assert len(keys) > 100
    refused = {".".join(path): loader_error(with_value(path, value), tmp_path) for path, value in keys}
    assert {k: v for k, v in refused.items() if v} == {}


@pytest.mark.parametrize(
    "path",
    [("model", "decoder", "head_sise"), ("model", "contxt_length"), ("search", "max_lenght"), ("model", "decoder", "inputs", "beam_idx")],
)
def test_a_typo_key_is_refused_in_one_line_as_the_runtime_refuses_it(tmp_path: Path, path: tuple[str, ...]) -> None:
    config = with_value(path, 4)
    assert f'Unknown value "{path[-1]}"' in (loader_error(config, tmp_path) or "")
    (tmp_path / "genai_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(StageError) as exc:
        schema.check_genai_config(tmp_path / "genai_config.json", "[winml npu]")
    line = str(exc.value)
    assert line == (
        f"[winml npu] genai_config.json is not what onnxruntime-genai 0.18 reads: "
        f"{'.'.join(path)} is not a key onnxruntime-genai 0.18 reads"
    )


IGNORED = {  # what the loader takes without a word, and what the schema says instead
    "a misspelt session option becomes an ORT config entry nobody reads": (
        ("model", "decoder", "session_options", "graph_optimisation_level"),
        "ORT_DISABLE_ALL",
        "session_options.graph_optimisation_level is not a key onnxruntime-genai 0.18 reads",
    ),
    "a load_config entry for a device the session does not run": (
        ("model", "decoder", "session_options", "provider_options"),
        [{"OpenVINO": {"device_type": "GPU", "load_config": '{"NPU": {"MAX_PROMPT_LEN": "1024"}}'}}],
        "the NPU entry is ignored: the EP applies only the entry of the device it runs (GPU)",
    ),
    "an OpenVINO option the plugin refuses when the session is created": (
        ("model", "decoder", "session_options", "provider_options"),
        [{"OpenVINO": {"device_type": "NPU", "precision": "FP16"}}],
        "OpenVINO.precision: the OpenVINO EP plugin refuses it (set it through load_config)",
    ),
    "enable_causallm spelt as the EP takes it but the runtime does not": (
        ("model", "decoder", "session_options", "provider_options"),
        [{"OpenVINO": {"device_type": "NPU", "enable_causallm": "true"}}],
        "enable_causallm is 'true', which the runtime does not take (one of True, False)",
    ),
    "an NPU limit of 0, which the EP refuses": (
        ("model", "decoder", "session_options", "provider_options"),
        [{"OpenVINO": {"device_type": "NPU", "load_config": '{"NPU": {"MAX_PROMPT_LEN": "0"}}'}}],
        "NPU MAX_PROMPT_LEN is '0': the EP reads a positive integer, written as a string",
    ),
    "a DML option the runtime does not read": (
        ("model", "decoder", "session_options", "provider_options"),
        [{"dml": {"enable_graph_capture": "1", "disable_metacommands": "1"}}],
        "dml.disable_metacommands: onnxruntime-genai 0.18's DML provider does not read it: it is ignored",
    ),
    "a max_length over the context, refused only when a generator is made": (
        ("search", "max_length"),
        128,
        "search.max_length 128 is over model.context_length 64: the runtime refuses it",
    ),
}


@pytest.mark.parametrize("case", list(IGNORED))
def test_what_the_loader_lets_through_the_schema_refuses(tmp_path: Path, case: str) -> None:
    path, value, message = IGNORED[case]
    config = with_value(path, value)
    assert loader_error(config, tmp_path) is None  # the runtime parses it and says nothing
    found = schema.problems(config)
    assert any(message in p for p in found), found


def test_a_value_the_loader_refuses_is_refused_by_the_schema(tmp_path: Path) -> None:
    as_object = [{"OpenVINO": {"device_type": "NPU", "load_config": {"NPU": {"MAX_PROMPT_LEN": "1024"}}}}]
    for path, value in [
        (("model", "decoder", "session_options", "provider_options"), as_object),
        (("model", "decoder", "session_options", "graph_optimization_level"), "ORT_DISABLE"),
        (("search", "past_present_share_buffer"), "true"),
        (("model", "context_length"), 0),
    ]:
        config = with_value(path, value)
        assert loader_error(config, tmp_path), path
        assert schema.problems(config), path


@pytest.mark.parametrize("ep, precision", [("dml", "int4"), ("cpu", "int4"), ("cuda", "fp16"), ("webgpu", "int4")])
def test_the_model_builders_configs_pass(tmp_path: Path, ep: str, precision: str) -> None:
    """What export_onnx ships: the builder's genai_config.json for each provider (``config_only`` skips the weights)."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    args = (None, str(TINY_DIR), str(tmp_path), precision, ep, str(tmp_path / "cache"))
    create_model(*args, **parse_extra_options(*args, ["config_only=true", "hf_remote=false"]))
    config = json.loads((tmp_path / "genai_config.json").read_text(encoding="utf-8"))
    assert config["model"]["decoder"]["session_options"]["provider_options"] or ep == "cpu"
    assert schema.problems(config) == []
    assert loader_error(config, tmp_path) is None
