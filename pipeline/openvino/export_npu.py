"""Stage ``export_npu@<variant>``: an OpenVINO IR laid out for the NPU, plus its compiled blob where an NPU exists.

The NPU runs LLMs through OpenVINO GenAI and needs 4-bit symmetric weights, ratio 1.0, group size
128 or channel-wise (-1). Its run settings (MAX_PROMPT_LEN, MIN_RESPONSE_LEN, hints, cache mode)
are stored in ``npu_config.json`` beside the model. Compiling for the NPU takes minutes on first
load; where an NPU is present the stage compiles once and ships the blob (weights included), and
proves that loading from it skips compilation. Without an NPU the manifest says the blob is deferred.
Output: ``artifacts/npu/<variant>`` with ``manifest.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import write_json_atomic
from pipeline.core.config import ConfigError
from pipeline.core.errors import fail, run_main
from pipeline.core.family import Exporter, ExportJob, Needs, export
from pipeline.core.log import say, step
from pipeline.core.memory import use_huge_pages
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.openvino import npu_blob, npu_lane
from pipeline.openvino.config import NpuVariantConfig, OpenVinoVariantConfig
from pipeline.openvino.export import (
    BASE_DIR,
    ROTARY_VERIFIED,
    base_of,
    build_ir,
    inspect_built,
    manifest_fields,
    misfit_widths,
)
from pipeline.openvino.lean import needs
from pipeline.validation import devices

NPU_CONFIG = "npu_config.json"
BLOB = npu_blob.BLOB
DEFERRED = "deferred - no NPU device; compiled on first load on the target"


# the blob code lives in npu_blob; these names are the stage's seams (tests replace them here)
load_llm_pipeline = npu_blob.load_llm_pipeline


def compile_blob(model_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Compile the NPU blob into ``model_dir`` through :func:`load_llm_pipeline` (:func:`npu_blob.compile_blob`)."""
    return npu_blob.compile_blob(model_dir, settings, load=load_llm_pipeline)


def blob_step(
    folder: Path, settings: dict[str, Any], status: dict[str, devices.DeviceStatus], npuw_max_size_mb: float = 0.0
) -> dict[str, Any]:
    """Build the blob where an NPU exists; otherwise record honestly that it is deferred.

    Without an NPU, a small IR (up to ``npuw_max_size_mb``) still goes through the blob round trip on NPUW's CPU
    backend (export with weights, reload, same tokens); that blob is not shipped (:func:`npu_lane.blob_round_trip`).
    """
    npu = status["NPU"]
    if not npu.available:
        say(f"no NPU here ({npu.reason}): blob deferred to the target machine")
        facts: dict[str, Any] = {"blob": DEFERRED, "npu_absent_reason": npu.reason}
        skip = npu_lane.too_large(folder, npuw_max_size_mb)
        if skip:
            return {**facts, "npuw_blob_check": f"not run: {skip}"}
        with step("blob round trip through NPUW on the CPU backend (export with weights, reload, same tokens)"):
            check = npu_lane.blob_round_trip(folder, settings, prompt_ids(folder), scratch=folder.parent)
        if not check["same_tokens_after_reload"]:
            fail(f"the NPUW blob of {folder.name} generated other tokens after reloading: {check['tokens']}")
        return {**facts, "npuw_blob_check": check}
    return npu_blob.compile_and_record(folder, settings, npu, compile_blob)


def npu_request(cfg: NpuVariantConfig, model_config: dict, key: str = "npu.<v>") -> OpenVinoVariantConfig:
    """The compression request for this model: channel-wise when group 128 does not fit and ``adjust`` is set.

    The NPU takes only group 128 or channel-wise (-1), so a smaller group is no fix here; the error says so.
    """
    misfits = misfit_widths(cfg.group_size, model_config)
    if not misfits:
        return cfg.as_openvino()
    problem = f"group_size {cfg.group_size} does not divide " + " or ".join(f"{k} {w}" for k, w in misfits.items())
    if cfg.group_size_fallback == "error":
        raise ConfigError(
            f"{problem}, and the NPU takes only group 128 or channel-wise: set {key}.group_size=-1, "
            f"or {key}.group_size_fallback=adjust"
        )
    say(f"{problem}: channel-wise int4 (group_size -1), the NPU's other layout ({key}.group_size_fallback=adjust)")
    return cfg.as_openvino(group_size=-1)


def prompt_ids(folder: Path) -> list[int]:
    """A short chat prompt in the model's chat template, tokenized by the artifact's own tokenizer IR (for the
    blob round trip)."""
    import openvino_genai as ov_genai

    from pipeline.validation.prompts import load_tokenizer, render_prompt

    text = render_prompt(load_tokenizer(folder), "Can you introduce yourself?")
    ids = ov_genai.Tokenizer(str(folder)).encode(text, add_special_tokens=False).input_ids.data[0]
    return [int(i) for i in ids]


@dataclass(frozen=True)
class NpuExporter:
    """The NPU family's export steps: the OpenVINO IR's, laid out for the NPU, then its blob (or a deferred one)."""

    status: dict[str, devices.DeviceStatus] | None = None  # device status (detected when None; tests pass a fake)
    base_dir: Path | None = BASE_DIR  # the uncompressed base IR to compress from (None or missing: from PyTorch)
    npuw_max_size_mb: float = 0.0  # the largest IR whose blob round trip runs through NPUW on the CPU
    family: str = "npu"
    stage: str = "export_npu"

    def check(self, job: ExportJob[NpuVariantConfig]) -> None:
        """The NPU's layout for this model (channel-wise where group 128 does not fit and ``adjust`` is set)."""
        job.facts["request"] = npu_request(job.cfg, job.model_config, f"npu.{job.name}")
        job.facts["status"] = self.status if self.status is not None else devices.detect()
        job.facts["base"] = base_of(self.base_dir)

    def needs(self, job: ExportJob[NpuVariantConfig]) -> Needs:
        """The IR's RAM and disk, plus the blob's disk where an NPU compiles one (it carries the weights)."""
        fmt, base = job.facts["request"].weight_format, job.facts["base"]
        ram, disk = needs("compress" if base else "export", fmt, job.model_dir)
        blob_disk = needs("compress", fmt, job.model_dir)[1] if job.facts["status"]["NPU"].available else 0
        what = f"[npu-{job.name}] {'compressing' if base else 'exporting'} to {fmt} for the NPU"
        return Needs(what, ram, disk + blob_disk)

    def build(self, job: ExportJob[NpuVariantConfig], tmp: Path) -> None:
        """The int4 IR (as :class:`~pipeline.openvino.export.OpenVinoExporter` builds it)."""
        job.facts["timings"] = build_ir(tmp, f"npu-{job.name}", job.facts["request"], job.model_dir, job.facts["base"])

    def inspect(self, job: ExportJob[NpuVariantConfig], tmp: Path) -> dict[str, Any]:
        """The IR against the request and the NPU's layout; then its run settings and the blob compiled from it.

        The blob is built only from an IR that passed: where an NPU exists, loading from it is the proof that
        compilation is skipped; without one, the NPUW round trip proves the same tokens after reloading.
        """
        summary = inspect_built(tmp, f"npu-{job.name}", job.facts["request"])
        summary["timings"] = job.facts["timings"]
        check_npu_layout(summary)
        write_json_atomic(tmp / NPU_CONFIG, job.cfg.run_settings())
        job.facts["blob"] = blob_step(tmp, job.cfg.run_settings(), job.facts["status"], self.npuw_max_size_mb)
        return summary

    def manifest_fields(self, job: ExportJob[NpuVariantConfig], summary: dict[str, Any]) -> dict[str, Any]:
        """The IR's fields, its run settings, the blob's record and the devices seen."""
        fields, blob = manifest_fields(job.source, job.cfg, summary), job.facts["blob"]
        # blob timings differ between runs: the run log gets them (with the export's), the manifest does not
        found = blob.get("npuw_blob_check")
        check: dict[str, Any] = found if isinstance(found, dict) else {}
        fields["timings"] = {
            **fields["timings"],
            **{k: blob.pop(k) for k in ("compile_s", "load_from_blob_s") if k in blob},
            **{f"npuw_blob_{k}": check.pop(k) for k in ("compile_s", "load_from_blob_s", "bytes") if k in check},
        }  # blob bytes vary between compilations too
        return {
            "format": "openvino-ir-npu",
            **fields,
            "npu_run_settings": job.cfg.run_settings(),
            "npu_blob": blob,
            "devices": {k: v.as_dict() for k, v in job.facts["status"].items()},
            "verified": {
                "structure": "int4 symmetric in every layer but embeddings/lm_head (int8 backup)",
                "rotary_embedding": ROTARY_VERIFIED,
            },
        }

    def ready(self, job: ExportJob[NpuVariantConfig], manifest: dict[str, Any]) -> str:
        """Where the IR is, and whether its blob was compiled or deferred."""
        return f"[npu-{job.name}] NPU-ready IR in {job.out} (blob: {job.facts['blob']['blob']})"


EXPORTER: Exporter[NpuVariantConfig] = NpuExporter()  # mypy checks the steps against the Protocol


def run(
    name: str,
    cfg: NpuVariantConfig,
    ws: Workspace = PROJECT,
    *,
    status: dict[str, devices.DeviceStatus] | None = None,
    base_dir: Path | None = BASE_DIR,
    npuw_max_size_mb: float = 0.0,
) -> dict:
    """Export NPU variant ``name`` of ``ws.model_dir`` to ``ws.root("npu")/name`` (with a blob where an NPU exists).

    Args:
        name: Variant name (key under ``npu`` in params.yaml).
        cfg: NPU layout and run settings.
        ws: Where the checkpoint is and the NPU artifacts go.
        status: Device status (detected when omitted; tests pass a fake).
        base_dir: Uncompressed base IR to compress from (``None`` or missing: export from PyTorch).
        npuw_max_size_mb: The largest IR whose blob round trip runs through NPUW on the CPU (no NPU here).

    Returns:
        The manifest written next to the IR.
    """
    return export(NpuExporter(status, base_dir, npuw_max_size_mb), name, cfg, ws)


def check_npu_layout(summary: dict[str, Any]) -> None:
    """Fail unless every weight layer is int4, except embeddings and lm_head kept at 8 bits."""
    mode = summary["nncf"].get("weight_compression", {}).get("mode")
    if mode != "int4_sym":
        fail(f"NPU IR must be int4_sym, NNCF recorded mode {mode!r}")
    stray = [
        layer["layer"]
        for layer in summary["layers"]
        if layer["precision"] != "int4" and not ("embed" in layer["layer"] or "lm_head" in layer["layer"])
    ]
    if stray:
        fail(f"NPU IR has non-int4 weight layers besides embeddings/lm_head: {', '.join(stray[:3])}")


def compile_deferred(artifact: Path) -> dict:
    """On the target machine: turn a deferred NPU artifact into one with a compiled blob (in place)."""
    settings = json.loads((artifact / NPU_CONFIG).read_text(encoding="utf-8"))
    return npu_blob.rebuild_blob(artifact, settings, compile_blob)


if __name__ == "__main__":  # the stage: `python -m pipeline.openvino.export_npu <variant>`
    use_huge_pages()  # restarts this process once, before the heavy imports (Linux)
    run_main(lambda: run_stage("npu", "export"))
