"""Stage ``export_winml@<variant>``: wrap an OpenVINO IR into a Windows ML package (ONNX Runtime GenAI + OpenVINO EP).

The IR (``artifacts/<source>/<source_variant>``, built by ``export_openvino`` or ``export_npu``) is copied, byte for
byte, beside an ``openvino_model.onnx`` whose single EPContext node points to it, with a ``genai_config.json`` for
the target device and the tokenizer files (:mod:`pipeline.winml.package`). Files are copied, never hard-linked:
DVC's cache files are read-only, and on Windows a read-only hard link cannot be deleted. The package is checked
structurally and the stage fails in one line if it does not match.
Output: ``artifacts/winml/<variant>`` with ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail, run_main
from pipeline.core.family import Exporter, ExportJob, export
from pipeline.core.log import step
from pipeline.core.stage import run_stage
from pipeline.core.verify import verify_folder
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.validation.genai_schema import check_genai_config
from pipeline.winml import limits, package
from pipeline.winml.config import WinmlVariantConfig

# Copied beside the context model. tokenizer_config.json's class is the one ONNX Runtime GenAI tokenizes Phi-3
# right with (LlamaTokenizer, the class Phi-3's own tokenizer_config.json names; see pipeline/onnx/export.py).
COPIED = (*package.IR_FILES, *package.TOKENIZER_FILES, "chat_template.jinja", limits.NPU_CONFIG)
ORT_TOKENIZER_CLASS = {"phi3": "LlamaTokenizer"}


def source_ir(cfg: WinmlVariantConfig, artifacts: Path) -> tuple[Path, dict[str, Any]]:
    """The IR folder the variant wraps, verified against its manifest (one line when it is missing or altered)."""
    folder = artifacts / cfg.source / cfg.source_variant
    if not (folder / package.IR_FILES[0]).is_file():
        fail(
            f"no OpenVINO IR in {folder}: build it first (`dvc repro export_{cfg.source}@{cfg.source_variant}`) "
            f"or point source/source_variant at a configured {cfg.source} variant"
        )
    return folder, verify_folder(folder, lock_file=artifacts.parent / "dvc.lock")  # one line if altered


def write_package(tmp: Path, ir_dir: Path, cfg: WinmlVariantConfig) -> dict[str, Any]:
    """Copy the IR and tokenizer into ``tmp`` and write the context model and genai_config; return what was changed."""
    import openvino as ov

    for name in COPIED:
        if (ir_dir / name).is_file():
            shutil.copyfile(ir_dir / name, tmp / name)  # new, writable files: never a link into DVC's cache
    config = json.loads((ir_dir / "config.json").read_text(encoding="utf-8"))
    generation_file = ir_dir / "generation_config.json"
    generation = json.loads(generation_file.read_text(encoding="utf-8")) if generation_file.is_file() else {}
    npu = limits.npu_settings(ir_dir) if cfg.device_type == "NPU" else None
    if cfg.device_type == "NPU" and npu is None:
        fail(f"the NPU IR in {ir_dir} has no {limits.NPU_CONFIG} (its limits): rebuild it with `dvc repro export_npu`")
    sdk = ov.get_version().split("-")[0]  # 2026.4.1, as Olive records ov.get_version(); no build hash
    (tmp / package.ONNX_FILE).write_bytes(package.context_model(tmp / package.IR_FILES[0], cfg.device_type, sdk))
    inputs, outputs = package.ir_ports(tmp / package.IR_FILES[0])
    io = ([p[0] for p in inputs], [p[0] for p in outputs])
    genai = package.genai_config(config, generation, io, cfg.device_type, npu)
    (tmp / "genai_config.json").write_text(json.dumps(genai, indent=4) + "\n", encoding="utf-8", newline="\n")
    tokenizer = tmp / "tokenizer_config.json"
    tok = json.loads(tokenizer.read_text(encoding="utf-8"))
    new = ORT_TOKENIZER_CLASS.get(config["model_type"])
    if not new:
        fail(f"model_type {config['model_type']!r} has no known ONNX Runtime GenAI tokenizer class")
    changed = {"tokenizer_class": {"source": tok.get("tokenizer_class"), "now": new}}
    tokenizer.write_text(json.dumps({**tok, "tokenizer_class": new}, indent=2) + "\n", encoding="utf-8", newline="\n")
    return {"sdk_version": sdk, "io": io, **changed}


def verify_package(folder: Path, device_type: str, source_ir: dict[str, str]) -> dict[str, Any]:
    """Inspect ``folder`` and fail in one line if it is not a well-formed package of ``source_ir``; the summary.

    Its ``genai_config.json`` is first checked against what onnxruntime-genai reads (:mod:`genai_schema`); an NPU
    package's provider options must carry the ``npu_config.json`` beside it.
    """
    check_genai_config(Path(folder) / "genai_config.json", f"[winml {Path(folder).name}]")
    summary = package.inspect_package(folder)
    io: list[list[str]] = [[], []]
    unreadable = []
    if summary["ir_files"].get(package.IR_FILES[0]):
        try:
            inputs, outputs = package.ir_ports(Path(folder) / package.IR_FILES[0])
            io = [[p[0] for p in inputs], [p[0] for p in outputs]]
        except RuntimeError as err:  # OpenVINO's multi-line report: its last line says what is wrong
            unreadable = [f"OpenVINO cannot read the IR ({str(err).strip().splitlines()[-1]})"]
    npu = limits.npu_settings(folder) if device_type == "NPU" else None
    problems = package.check_package(summary, device_type, source_ir, io, npu) + unreadable
    if problems:
        fail(f"[winml {Path(folder).name}] not a valid Windows ML package: {'; '.join(problems)}")
    return summary


class WinmlExporter:
    """The Windows ML family's export steps: its source is an IR artifact, not the checkpoint."""

    family = "winml"
    stage = "export_winml"

    def check(self, job: ExportJob[WinmlVariantConfig]) -> None:
        """The IR to wrap exists and matches its manifest (one line when it is missing or altered)."""
        ir_dir, ir_manifest = source_ir(job.cfg, job.ws.artifacts)
        job.facts.update(ir_dir=ir_dir, ir_manifest=ir_manifest)
        job.facts["ir_hashes"] = {f: ir_manifest["files"][f]["sha256"] for f in package.IR_FILES}

    def needs(self, job: ExportJob[WinmlVariantConfig]) -> None:
        """Nothing worth checking: the package is a copy of the IR and a small context model."""
        return None

    def build(self, job: ExportJob[WinmlVariantConfig], tmp: Path) -> None:
        """The IR and tokenizer copied, the context model and genai_config written."""
        ir_dir, device = job.facts["ir_dir"], job.cfg.device_type
        with step(f"[winml {job.name}] wrapping {ir_dir} for the OpenVINO EP on {device}") as t_pack:
            job.facts["written"] = write_package(tmp, ir_dir, job.cfg)
        job.facts["package_s"] = t_pack["seconds"]

    def inspect(self, job: ExportJob[WinmlVariantConfig], tmp: Path) -> dict[str, Any]:
        """The package's structure against the source IR (:func:`verify_package`)."""
        return verify_package(tmp, job.cfg.device_type, job.facts["ir_hashes"])

    def manifest_fields(self, job: ExportJob[WinmlVariantConfig], summary: dict[str, Any]) -> dict[str, Any]:
        """The source IR's record, the EP's SDK version, the tokenizer fix and what was verified."""
        cfg, ir_manifest, written = job.cfg, job.facts["ir_manifest"], job.facts["written"]
        return {
            "format": "onnxruntime-genai + OpenVINO EP (EPContext over OpenVINO IR)",
            "source": ir_manifest.get("source", {}),
            "source_ir": {"folder": f"{cfg.source}/{cfg.source_variant}", "files_sha256": job.facts["ir_hashes"]},
            "source_ir_parameters": ir_manifest.get("parameters", {}),
            # the NPU IR's run settings as its export recorded them: validation checks npu_config.json against them
            "npu_run_settings": ir_manifest.get("npu_run_settings"),
            # The IR is the source's byte for byte (checked above): what its manifest read back from it (weight
            # layers by precision; the embedding tie: the checkpoint's, whether the IR keeps one shared matrix, each
            # side's precision) holds for the package as it is.
            "weight_layers": ir_manifest.get("weight_layers"),
            "tied_embeddings": ir_manifest.get("tied_embeddings"),
            "parameters": dataclasses.asdict(cfg),
            "ep_sdk_version": written["sdk_version"],
            "tokenizer_fix": {"tokenizer_class": written["tokenizer_class"]},
            "structure": summary,
            "timings": {"package_s": job.facts["package_s"]},
            "verified": {
                "structure": "one com.microsoft EPContext node (embed_mode 0, ep_cache_context openvino_model.xml, "
                "source OpenVINOExecutionProvider, main_context 1) with the IR's inputs and outputs; genai_config "
                "provider_options OpenVINO device_type + enable_causallm 'True' + cache_dir (+ the NPU IR's "
                "npu_config.json as load_config, context_length = MAX_PROMPT_LEN + MIN_RESPONSE_LEN), "
                "ORT_DISABLE_ALL; genai_config.json keys and values as onnxruntime-genai 0.18 reads them; IR files "
                "equal the source IR's manifest sha256; tokenizer files present"
            },
        }

    def ready(self, job: ExportJob[WinmlVariantConfig], manifest: dict[str, Any]) -> str:
        """Where the package is."""
        return f"[winml {job.name}] Windows ML package ready in {job.out}"


EXPORTER: Exporter[WinmlVariantConfig] = WinmlExporter()  # mypy checks the steps against the Protocol


def run(name: str, cfg: WinmlVariantConfig, ws: Workspace = PROJECT) -> dict:
    """Package variant ``name``: the IR of ``cfg.source``/``cfg.source_variant`` for ``cfg.device_type``.

    Args:
        name: Variant name (the key under ``winml`` in params.yaml).
        cfg: The IR to wrap and the target device.
        ws: The artifacts folder holding the source IR (``ws.artifacts``) and where the packages go
            (``ws.root("winml")``).

    Returns:
        The manifest written into the package.
    """
    return export(EXPORTER, name, cfg, ws, from_checkpoint=False)  # its source is the IR: check reads it


if __name__ == "__main__":  # the stage: `python -m pipeline.winml.export <variant>`
    run_main(lambda: run_stage("winml", "export"))
