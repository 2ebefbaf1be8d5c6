"""The optimum-intel calls every OpenVINO export makes: float IR export, weight compression config, compression.

Shared by the base IR (:mod:`pipeline.openvino.export_base`) and the variants (:mod:`pipeline.openvino.export`),
so neither imports the other's stage module for them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from pipeline.core.config import ASSETS_DIR
from pipeline.core.log import step
from pipeline.openvino.config import OpenVinoVariantConfig

HELDOUT_TEXT = ASSETS_DIR / "tiny_phi3" / "heldout.txt"
TOKENIZER_FILES = (
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
)


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
    extra = {"ignored_scope": {"patterns": list(cfg.keep_float)}} if cfg.keep_float else {}
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
        **extra,
    }


def export_float(model_dir: Path, out: Path, ov_config: Any, lean: bool = True) -> None:
    """Export model + tokenizer IR with optimum-intel's ``main_export`` (no remote code).

    Lean (default): a bf16 checkpoint asked for fp16 is traced in bf16 (memory-mapped, no copy) and
    its weights rewritten to fp16 in the IR afterwards, and read weight pages are handed back
    (:mod:`pipeline.openvino.lean`, :mod:`pipeline.core.memory`); the IR is the same as the plain path's, which converts the whole model
    to fp16 in PyTorch first (2x the checkpoint in memory). Either way the rotary-embedding constants
    stay f32 (:func:`pipeline.openvino.rotary.keep_rotary_f32_on_save`), where bare ``optimum-cli`` stores them in fp16.
    """
    import warnings

    from optimum.exporters.openvino import main_export

    from pipeline.core import memory
    from pipeline.openvino import lean as lean_path
    from pipeline.openvino.rotary import keep_rotary_f32_on_save

    # torch.jit tracing warns about every Python branch in the model; none of them matter for export.
    warnings.filterwarnings(
        "ignore", message=".*TracerWarning.*|.*Converting a tensor to a Python.*|.*torch.tensor results.*"
    )
    loading: dict[str, Any] = {}
    rewrite_f16 = lean and ov_config.dtype == "fp16" and lean_path.checkpoint_dtype(model_dir) == "bfloat16"
    if rewrite_f16:
        loading["torch_dtype"] = "bfloat16"
    # save_model reads every checkpoint page while holding the GIL; the native trimmer hands each page
    # back once read (without it, a Python thread could only return freed heap: nothing else runs then).
    # Reading the weights ahead, while the model is loaded and traced, keeps save_model off the disk.
    weights = memory.weight_files(model_dir)
    if lean:
        memory.prefetch(weights)
    with memory.MappedPageTrimmer(weights) if lean else contextlib.nullcontext(), keep_rotary_f32_on_save():
        main_export(
            model_name_or_path=str(model_dir),
            output=out,
            task="text-generation-with-past",
            ov_config=ov_config,
            stateful=True,
            convert_tokenizer=True,
            library_name="transformers",
            trust_remote_code=False,
            model_loading_kwargs=loading,
        )
    if rewrite_f16:
        with step("converting the bf16 weights of the IR to fp16 in place"):
            lean_path.bf16_ir_to_f16(out / "openvino_model.xml")


def compress_like_optimum_cli(model_dir: Path, out: Path, quantization_config: Any, lean: bool = True) -> None:
    """Compress the IR in ``out`` in place, as ``optimum-cli`` does after ``main_export``.

    ``main_export(ov_config=OVConfig(quantization_config=...))`` exports but does not quantize;
    the CLI applies the config in a second step (optimum/commands/export/openvino.py, ``_main_quantize``).
    """
    from optimum.exporters.openvino.__main__ import _main_quantize

    from pipeline.core.memory import MappedPageTrimmer, weight_files

    with MappedPageTrimmer(weight_files(out) if lean else []):
        _main_quantize(
            model_name_or_path=str(model_dir),
            task="text-generation-with-past",
            library_name="transformers",
            quantization_config=quantization_config,
            output=out,
            cache_dir=None,
            trust_remote_code=False,
        )
