"""Stage ``export_onnx@<variant>``: build an ONNX Runtime GenAI model (DirectML by default; CPU, CUDA, WebGPU).

Thin wrapper over onnxruntime-genai's model builder Python API (``parse_extra_options`` + ``create_model``,
as Olive's ModelBuilder pass calls it). The tokenizer files are then made loadable by onnxruntime-genai
0.13.1 (what ``pip install onnxruntime-genai-directml`` gives Windows users), and the folder is checked
structurally: the stage fails if it does not match the request.
Output: ``artifacts/onnx/<variant>`` with ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import remove_tree, write_json_atomic
from pipeline.core.config import ConfigError
from pipeline.core.errors import fail, run_main
from pipeline.core.family import Exporter, ExportJob, Needs, export
from pipeline.core.log import say, step
from pipeline.core.manifest import tied_embeddings
from pipeline.core.memory import use_huge_pages
from pipeline.core.refusal import refuse
from pipeline.core.resources import needs_of
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.onnx.config import OnnxVariantConfig
from pipeline.onnx.inspect import check_matches_request, gqa_rotary_problem, inspect_onnx
from pipeline.onnx.lean_nbits import lean_expected, lean_quantization
from pipeline.onnx.sliding_window import set_transformers_windows, window_problems
from pipeline.validation.genai_schema import check_genai_config

# Disk for the output, as a share of the checkpoint. RAM is checked against the measured peaks instead
# (pipeline.core.resources.STAGE_RAM, export_onnx / export_onnx_builder), so its parts here are zero.
ONNX_NEEDS = {
    "int4": (0.0, 0.0, 0.45),
    "int8": (0.0, 0.0, 0.6),
    "fp16": (0.0, 0.0, 1.05),
    "bf16": (0.0, 0.0, 1.05),
    "fp32": (0.0, 0.0, 2.1),
}  # precision: (RAM share, RAM GiB, disk share)

LIST_SEPARATOR = {"op_types_to_quantize": "/", "nodes_to_exclude": ","}  # how the builder splits list options
# tokenizer_class values written by transformers 5 that onnxruntime-genai 0.13.1 refuses ("Unsupported tokenizer
# class"), plus PreTrainedTokenizerFast, which 0.13.1 loads but tokenizes wrongly (below).
REWRITTEN_TOKENIZER_CLASSES = (
    "TokenizersBackend",
    "SentencePieceBackend",
    "PythonBackend",
    "MistralCommonBackend",
    "PreTrainedTokenizerFast",
)
# The class written for ONNX Runtime GenAI, per model_type: the one Phi-3's own tokenizer_config.json names.
# Measured with 0.13.1: LlamaTokenizer reproduces all 46 llama.cpp Phi-3 vectors and the prompts; with
# PreTrainedTokenizerFast it inserts an extra "▁" (29871) after special tokens (10 vectors, every prompt differ).
ORT_TOKENIZER_CLASS = {"phi3": "LlamaTokenizer"}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def builder_options(cfg: OnnxVariantConfig) -> dict[str, str]:
    """The builder's ``--extra_options`` for ``cfg`` (current option names only)."""
    options = {"hf_token": "false", "hf_remote": "false"}  # a local folder: no hub token, never remote code
    for key in ("block_size", "accuracy_level", "is_symmetric", "algo_config", "enable_dml_graph"):
        if getattr(cfg, key) is not None:
            options[key] = _text(getattr(cfg, key))
    for key in ("exclude_embeds", "exclude_lm_head"):
        if getattr(cfg, key):
            options[key] = "true"
    for key, value in cfg.extra_options.items():
        options[key] = LIST_SEPARATOR.get(key, ",").join(value) if isinstance(value, list) else _text(value)
    return options


def check_model_request(cfg: OnnxVariantConfig, model_config: dict) -> None:
    """Refuse requests that the builder turns into graphs ONNX Runtime cannot load, before writing anything."""
    tied = cfg.extra_options.get("shared_embeddings", bool(model_config.get("tie_word_embeddings")))
    if cfg.precision == "int4" and cfg.is_symmetric is False and tied:
        raise ConfigError(
            "is_symmetric false with tied (shared) embeddings gives a graph ONNX Runtime refuses "
            "(uint8 Reshape feeding GatherBlockQuantized): set is_symmetric true or "
            "extra_options.shared_embeddings false"
        )
    if model_config.get("model_type") not in ORT_TOKENIZER_CLASS:
        refuse(
            f"model_type {model_config.get('model_type')!r} has no known ONNX Runtime GenAI "
            f"tokenizer class; supported: {', '.join(ORT_TOKENIZER_CLASS)}"
        )
    problem = gqa_rotary_problem(model_config, cfg.execution_provider)
    if problem:
        refuse(problem)  # the model's rotary, not this machine: recorded, and the report still runs


@contextlib.contextmanager
def builders_own_commit() -> Iterator[None]:
    """Keep the project's git commit out of ``model.onnx``.

    The builder stamps ``producer_version`` with ``git rev-parse HEAD`` run five folders above its own file: in a
    virtual environment inside a git checkout (``.venv/lib``) that is this project's commit, so every commit changed
    the graph's bytes. With ``GIT_DIR`` pointing at no repository, git fails and the builder uses the wheel's own
    ``onnxruntime_genai.__commit__``: the same bytes from any checkout, and the right commit.
    """
    from unittest import mock

    with mock.patch.dict(os.environ, {"GIT_DIR": os.devnull}):
        yield


def build(model_dir: Path, out: Path, cfg: OnnxVariantConfig, options: dict[str, str]) -> None:
    """Run the builder's Python API into ``out`` (its scratch cache lives in ``out`` and is removed)."""
    import logging

    try:
        from onnxruntime_genai.models.builder import create_model, parse_extra_options
    except ImportError as err:  # the builder imports onnx_ir without declaring it
        fail(
            f"cannot import the onnxruntime-genai model builder ({err}): run `pip install -e .` "
            "(it needs onnxruntime-genai and onnx-ir)"
        )
    from pipeline.core.memory import MappedPageTrimmer, prefetch, weight_files

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one INFO line per layer otherwise
    cache = out / ".builder-cache"
    args = (None, str(model_dir), str(out), cfg.precision, cfg.execution_provider, str(cache))
    try:
        parsed = parse_extra_options(*args, [f"{k}={v}" for k, v in options.items()])
        weights = weight_files(model_dir)
        prefetch(weights)  # the builder reads the weights lazily while it quantizes: read them ahead
        quantized = cfg.precision in ("int4", "int8")
        # hand back checkpoint pages once read (pipeline.core.memory); quantize one float weight at a time
        with MappedPageTrimmer(weights), lean_quantization() if quantized else contextlib.nullcontext():
            with builders_own_commit():
                create_model(*args, **parsed)
    except (ValueError, RuntimeError, NotImplementedError, KeyError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fail(f"the onnxruntime-genai model builder failed: {first}")
    finally:
        remove_tree(cache)


def make_tokenizer_loadable_by_ort_genai_0_13(folder: Path, model_type: str) -> dict[str, Any]:
    """Workaround: rewrite the ``tokenizer_class`` that transformers 5 saves, which onnxruntime-genai 0.13.1 refuses.

    Upstream: https://github.com/microsoft/onnxruntime-genai/issues/1987 ("Unsupported tokenizer class:
    TokenizersBackend"); onnxruntime-extensions added the transformers 5 names later
    (https://github.com/microsoft/onnxruntime-extensions/pull/1044), too late for 0.13.1.

    Returns:
        What was changed (empty when nothing was), for the manifest.
    """
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    old, new = config.get("tokenizer_class"), ORT_TOKENIZER_CLASS[model_type]
    if old not in REWRITTEN_TOKENIZER_CLASSES:
        return {}
    config["tokenizer_class"] = new
    write_json_atomic(path, config)
    return {"tokenizer_class": {"written_by_builder": old, "now": new}}


class OnnxExporter:
    """The ONNX family's export steps (:func:`pipeline.core.family.export` runs them)."""

    family = "onnx"
    stage = "export_onnx"

    def check(self, job: ExportJob[OnnxVariantConfig]) -> None:
        """Refuse graphs ONNX Runtime cannot load; choose the builder's options and its quantization path."""
        cfg = job.cfg
        check_model_request(cfg, job.model_config)
        job.facts["options"] = builder_options(cfg)
        # int4/int8 through the lean pass (pipeline.onnx.lean_nbits), or the builder's own (every float weight at once)
        job.facts["lean"] = cfg.precision not in ("int4", "int8") or lean_expected(
            cfg.precision, cfg.algo_config, cfg.extra_options, job.model_config
        )

    def needs(self, job: ExportJob[OnnxVariantConfig]) -> Needs:
        """The measured RAM row of the path taken; disk as a share of the checkpoint."""
        cfg = job.cfg
        row = (
            "export_onnx" if job.facts["lean"] else "export_onnx_builder",
            f"{cfg.execution_provider}_{cfg.precision}",
        )
        ram, disk = needs_of(ONNX_NEEDS, cfg.precision, job.model_dir)
        return Needs(f"[{job.name}] building {cfg.precision} ONNX", ram, disk, ram_row=row)

    def build(self, job: ExportJob[OnnxVariantConfig], tmp: Path) -> None:
        """The builder's model, then the tokenizer class and sliding windows onnxruntime-genai needs."""
        cfg = job.cfg
        with step(
            f"[{job.name}] building {cfg.precision} ONNX for {cfg.execution_provider} with the onnxruntime-genai builder"
        ) as t_build:
            build(job.model_dir, tmp, cfg, job.facts["options"])
        job.facts["build_s"] = t_build["seconds"]
        job.facts["tokenizer_fix"] = make_tokenizer_loadable_by_ort_genai_0_13(tmp, job.model_config["model_type"])
        job.facts["window_fix"] = set_transformers_windows(tmp, job.model_config)  # the builder drops Phi-3's window

    def inspect(self, job: ExportJob[OnnxVariantConfig], tmp: Path) -> dict[str, Any]:
        """The graph's structure, checked against the request and the checkpoint's attention windows."""
        name, model_config = job.name, job.model_config
        summary = inspect_onnx(tmp)
        problems = check_matches_request(summary, job.cfg, model_config["num_hidden_layers"])
        problems += window_problems(summary["attention_windows"], model_config)
        if problems:
            fail(f"[{name}] the built ONNX model does not match the request: {'; '.join(problems)}")
        check_genai_config(tmp / "genai_config.json", f"[{name}]")  # keys and values onnxruntime-genai 0.18 reads
        say(
            f"[{name}] {summary['quantization']['matmul_nbits']} MatMulNBits (bits {summary['quantization']['bits']}, "
            f"blocks {summary['quantization']['block_sizes']}), I/O {sorted(set(summary['outputs'].values()))}"
        )
        return summary

    def manifest_fields(self, job: ExportJob[OnnxVariantConfig], summary: dict[str, Any]) -> dict[str, Any]:
        """Source, parameters, builder options, structure, the fixes made and what was verified."""
        return {
            "format": "onnxruntime-genai",
            "source": job.source_fields(),
            "source_files_sha256": job.source_hashes(),
            "parameters": dataclasses.asdict(job.cfg),
            "builder_options": job.facts["options"],
            "structure": summary,
            # the checkpoint's tie, whether the graph keeps one stored matrix for both, each side's precision
            "tied_embeddings": tied_embeddings(summary["tied_embeddings"], job.model_config),
            "tokenizer_fix": job.facts["tokenizer_fix"],
            "sliding_window_fix": job.facts["window_fix"],
            "timings": {"build_s": job.facts["build_s"]},
            "verified": {
                "structure": "provider entry, graph inputs/outputs and dtypes, MatMulNBits bits/block size, "
                "every graph output produced, external data in range, each layer's attention window equals "
                "transformers' (onnx.checker rejects "
                "every builder output, so it is not used)"
            },
        }

    def ready(self, job: ExportJob[OnnxVariantConfig], manifest: dict[str, Any]) -> str:
        """Where the model is."""
        return f"[{job.name}] ONNX Runtime GenAI model ready in {job.out}"


EXPORTER: Exporter[OnnxVariantConfig] = OnnxExporter()  # mypy checks the steps against the Protocol


def run(name: str, cfg: OnnxVariantConfig, ws: Workspace = PROJECT) -> dict:
    """Build variant ``name`` of the checkpoint ``ws.model_dir`` into ``ws.root("onnx")/name``.

    Args:
        name: Variant name (the key under ``onnx`` in params.yaml).
        cfg: Execution provider, precision and builder options.
        ws: Where the checkpoint is and the ONNX folders go.

    Returns:
        The manifest written next to the model.
    """
    return export(EXPORTER, name, cfg, ws)


if __name__ == "__main__":  # the stage: `python -m pipeline.onnx.export <variant>`
    use_huge_pages()  # restarts this process once, before the heavy imports (Linux)
    run_main(lambda: run_stage("onnx", "export"))
