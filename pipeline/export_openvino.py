"""Stage ``export_openvino@<variant>``: export the downloaded model to OpenVINO IR (int4 / int8 / fp16).

Thin wrapper over optimum-intel's own export path (the one ``optimum-cli export openvino`` takes):
``main_export`` writes the float IR and the tokenizer/detokenizer IR, then weight compression with
NNCF runs on it. The IR is inspected afterwards and the stage fails if it does not match the request.
Output: ``artifacts/openvino/<variant>`` with ``manifest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from pipeline.artifacts import ARTIFACTS, folder_bytes, read_manifest, staged_dir, write_manifest
from pipeline.config import ConfigError, OpenVinoVariantConfig, load_params, pick_variant
from pipeline.errors import fail, run_main
from pipeline.ir_inspect import check_matches_request, check_rotary, inspect_ir
from pipeline.lean import check_resources, needs, use_huge_pages
from pipeline.log import say, step

MODEL_DIR = ARTIFACTS / "model"
OUT_ROOT = ARTIFACTS / "openvino"
BASE_DIR = ARTIFACTS / "openvino_base"
HELDOUT_TEXT = Path(__file__).parent / "assets" / "tiny_phi3" / "heldout.txt"
ROTARY_VERIFIED = "rotary constants f32; cos/sin (f32 compute) match transformers' within tolerance"
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_tokenizer.bin",
                   "openvino_detokenizer.xml", "openvino_detokenizer.bin")


def check_group_size(cfg: OpenVinoVariantConfig, model_config: dict) -> None:
    """Fail early when the int4 group size does not divide the model's layer widths."""
    if cfg.weight_format != "int4" or cfg.group_size == -1 or cfg.group_size_fallback != "error":
        return
    widths = {"hidden_size": model_config.get("hidden_size"),
              "intermediate_size": model_config.get("intermediate_size")}
    for name, width in widths.items():
        if width and width % cfg.group_size:
            divisors = [g for g in (32, 64, 128) if width % g == 0]
            raise ConfigError(
                f"group_size {cfg.group_size} does not divide {name} {width}: use one of "
                f"{divisors or [-1]} or set group_size_fallback=adjust")


def calibration_texts(num_samples: int | None) -> list[str]:
    """Offline calibration data: paragraphs of the held-out text shipped with the package."""
    paragraphs = [p.strip() for p in HELDOUT_TEXT.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 80]
    return paragraphs[: num_samples or 64]


def quantization_dict(cfg: OpenVinoVariantConfig) -> dict[str, Any]:
    """The weight-compression config exactly as ``optimum-cli`` builds it (``prepare_wc_config``)."""
    is_int8 = cfg.weight_format == "int8"
    dataset: Any = cfg.dataset
    if dataset == "heldout":
        dataset = calibration_texts(cfg.num_samples)
    return {
        "bits": 8 if is_int8 else 4,
        "ratio": 1.0 if is_int8 else cfg.ratio,
        "sym": cfg.sym,
        "group_size": -1 if is_int8 else cfg.group_size,
        "all_layers": None if is_int8 else cfg.all_layers,
        "dataset": dataset,
        "num_samples": cfg.num_samples,
        "quant_method": "awq" if cfg.awq else "default",
        "sensitivity_metric": cfg.sensitivity_metric,
        "scale_estimation": cfg.scale_estimation or None,
        "gptq": cfg.gptq or None,
        "lora_correction": None,
        "dtype": cfg.weight_format,
        "backup_precision": None if is_int8 else cfg.backup_precision,
        "statistics_path": None,
        "group_size_fallback": cfg.group_size_fallback,
    }


def export_float(model_dir: Path, out: Path, ov_config: Any, lean: bool = True) -> None:
    """Export model + tokenizer IR with optimum-intel's ``main_export`` (no remote code).

    Lean (default): a bf16 checkpoint asked for fp16 is traced in bf16 (memory-mapped, no copy) and
    its weights rewritten to fp16 in the IR afterwards, and read weight pages are handed back
    (:mod:`pipeline.lean`); the IR is the same as the plain path's, which converts the whole model
    to fp16 in PyTorch first (2x the checkpoint in memory). Either way the rotary-embedding constants
    stay f32 (:func:`pipeline.rotary.keep_rotary_f32_on_save`), where bare ``optimum-cli`` stores them in fp16.
    """
    import warnings

    from optimum.exporters.openvino import main_export

    from pipeline import lean as lean_path
    from pipeline.rotary import keep_rotary_f32_on_save

    # torch.jit tracing warns about every Python branch in the model; none of them matter for export.
    warnings.filterwarnings("ignore", message=".*TracerWarning.*|.*Converting a tensor to a Python.*|.*torch.tensor results.*")
    loading: dict[str, Any] = {}
    rewrite_f16 = lean and ov_config.dtype == "fp16" and lean_path.checkpoint_dtype(model_dir) == "bfloat16"
    if rewrite_f16:
        loading["torch_dtype"] = "bfloat16"
    # save_model reads every checkpoint page while holding the GIL; the native trimmer hands each page
    # back once read (without it, a Python thread could only return freed heap: nothing else runs then).
    # Reading the weights ahead, while the model is loaded and traced, keeps save_model off the disk.
    weights = lean_path.weight_files(model_dir)
    if lean:
        lean_path.prefetch(weights)
    with lean_path.MappedPageTrimmer(weights) if lean else contextlib.nullcontext(), keep_rotary_f32_on_save():
        main_export(model_name_or_path=str(model_dir), output=out, task="text-generation-with-past",
                    ov_config=ov_config, stateful=True, convert_tokenizer=True, library_name="transformers",
                    trust_remote_code=False, model_loading_kwargs=loading)
    if rewrite_f16:
        with step("converting the bf16 weights of the IR to fp16 in place"):
            lean_path.bf16_ir_to_f16(out / "openvino_model.xml")


def compress_like_optimum_cli(model_dir: Path, out: Path, quantization_config: Any, lean: bool = True) -> None:
    """Compress the IR in ``out`` in place, as ``optimum-cli`` does after ``main_export``.

    ``main_export(ov_config=OVConfig(quantization_config=...))`` exports but does not quantize;
    the CLI applies the config in a second step (optimum/commands/export/openvino.py, ``_main_quantize``).
    """
    from optimum.exporters.openvino.__main__ import _main_quantize

    from pipeline.lean import MappedPageTrimmer, weight_files

    with MappedPageTrimmer(weight_files(out) if lean else []):
        _main_quantize(model_name_or_path=str(model_dir), task="text-generation-with-past",
                       library_name="transformers", quantization_config=quantization_config,
                       output=out, cache_dir=None, trust_remote_code=False)


AUTO_NAMED_LAYER = re.compile(r'(<layer id="(\d+)" name=")([A-Za-z]+)_\d+(" type=")')


def stable_layer_names(xml_path: Path) -> int:
    """Rename auto-named layers (``Convert_28831``) after their layer id (``Convert_19``); returns how many.

    OpenVINO names new nodes from a per-process counter, so the nodes NNCF adds are numbered by whatever the
    process created before: a cold sensitivity cache gives ``Convert_28831`` where a warm one gives
    ``Convert_6498``, and the same inputs would give a different ``.xml`` (and rerun every stage below it).
    Layer ids are the serialized order, the same for the same graph; only the XML changes, the ``.bin`` not.
    """
    text = xml_path.read_text(encoding="utf-8")
    renamed, count = AUTO_NAMED_LAYER.subn(lambda m: f"{m.group(1)}{m.group(3)}_{m.group(2)}{m.group(4)}", text)
    if count:
        tmp = xml_path.with_name(xml_path.name + ".renamed")
        tmp.write_text(renamed, encoding="utf-8", newline="")
        os.replace(tmp, xml_path)
    return count


def export_into(tmp: Path, name: str, cfg: OpenVinoVariantConfig, model_dir: Path,
                base_dir: Path | None = None, lean: bool = True) -> dict[str, Any]:
    """Export and compress into the (temporary) folder ``tmp``; return the IR summary and timings.

    With ``base_dir`` (the ``export_openvino_base`` output), int4/int8 variants compress that IR
    instead of re-exporting from PyTorch; the result is the same as the from-scratch path.

    Raises:
        StageError: When tokenizer conversion failed or the IR does not match the request.
    """
    from optimum.intel import OVConfig

    from pipeline.export_openvino_base import compress_from_base, statistics_path

    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    check_group_size(cfg, model_config)
    qdict = quantization_dict(cfg) if cfg.compressed else None
    if qdict and qdict["dataset"] is not None:
        qdict["statistics_path"] = statistics_path(read_manifest(model_dir), cfg.dataset, cfg.num_samples)
    ov_config = OVConfig(quantization_config=qdict) if qdict else OVConfig(dtype=cfg.weight_format)
    t_export: dict = {"seconds": 0.0}
    t_compress: dict = {"seconds": 0.0}
    if qdict and base_dir is not None:
        with step(f"[{name}] compressing the base IR to {cfg.weight_format} with NNCF") as t_compress:
            compress_from_base(base_dir, model_dir, tmp, ov_config.quantization_config, lean)
    else:
        with step(f"[{name}] exporting {model_dir} to OpenVINO IR") as t_export:
            export_float(model_dir, tmp, ov_config, lean)
        if qdict:
            with step(f"[{name}] compressing weights to {cfg.weight_format} with NNCF") as t_compress:
                compress_like_optimum_cli(model_dir, tmp, ov_config.quantization_config, lean)
    missing = [f for f in TOKENIZER_FILES if not (tmp / f).is_file()]
    if missing:
        fail(f"tokenizer conversion produced no {', '.join(missing)}: check openvino-tokenizers matches openvino")
    if qdict:
        stable_layer_names(tmp / "openvino_model.xml")
    summary = inspect_ir(tmp / "openvino_model.xml")
    problems = check_matches_request(summary, cfg.weight_format, cfg.ratio) + check_rotary(summary)
    if problems:
        fail(f"[{name}] exported IR does not match the request: {'; '.join(problems)}")
    say(f"[{name}] weight layers: {summary['weight_layers']}")
    summary["timings"] = {"export_s": t_export["seconds"], "compress_s": t_compress["seconds"]}
    return summary


def manifest_fields(source: dict, cfg: Any, summary: dict) -> dict[str, Any]:
    """Manifest entries shared by every OpenVINO IR artifact (source, parameters, structure)."""
    return {
        "source": {k: source.get(k) for k in ("model", "source", "repo_id", "revision", "license")},
        "source_files_sha256": {k: v["sha256"] for k, v in source["files"].items()},
        "parameters": vars(cfg).copy(), "weight_layers": summary["weight_layers"],
        "nncf_rt_info": summary["nncf"], "layers": summary["layers"], "timings": summary["timings"],
        "rotary_embedding": summary.get("rotary"),
    }


def run(name: str, cfg: OpenVinoVariantConfig, model_dir: Path = MODEL_DIR, out_root: Path = OUT_ROOT,
        base_dir: Path | None = BASE_DIR, lean: bool = True) -> dict:
    """Export variant ``name`` of the model in ``model_dir`` to ``out_root/name``.

    Args:
        name: Variant name (the key under ``openvino`` in params.yaml).
        cfg: Its weight format and compression parameters.
        model_dir: The ``download`` stage output.
        out_root: Parent folder of the IR folders.
        base_dir: Uncompressed base IR to compress from (``None``: export from PyTorch).
        lean: Use the low-memory path (:mod:`pipeline.lean`); ``False`` runs the plain upstream calls.

    Returns:
        The manifest written next to the IR.
    """
    source = read_manifest(model_dir)
    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    check_group_size(cfg, model_config)  # before any folder is created
    base = base_dir if base_dir and base_dir.is_dir() else None
    from_base = bool(base) and cfg.compressed
    check_resources(f"[{name}] {'compressing' if from_base else 'exporting'} to {cfg.weight_format}",
                    *needs("compress" if from_base else "export", cfg.weight_format, model_dir, lean), out_root)
    with staged_dir(out_root / name) as tmp:
        summary = export_into(tmp, name, cfg, model_dir, base, lean)
        manifest = write_manifest(
            tmp, stage="export_openvino", variant=name, format="openvino-ir", **manifest_fields(source, cfg, summary),
            compressed_from="openvino_base" if from_base else "pytorch",
            size_bytes=folder_bytes(tmp), verified={"structure": "weight precisions and rt_info match request",
                                                    "rotary_embedding": ROTARY_VERIFIED})
    say(f"[{name}] IR ready in {out_root / name}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    """DVC entry point: ``python -m pipeline.export_openvino <variant>``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="key under `openvino` in params.yaml, e.g. int4")
    args = parser.parse_args(argv)
    run(args.variant, pick_variant(load_params().openvino, args.variant, "OpenVINO"))


if __name__ == "__main__":
    use_huge_pages()  # restarts this process once, before the heavy imports (Linux)
    run_main(main)
