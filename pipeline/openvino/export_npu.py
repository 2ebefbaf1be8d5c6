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
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import staged_dir, write_json_atomic
from pipeline.core.config import ConfigError
from pipeline.core.errors import fail, run_main
from pipeline.core.log import say, step
from pipeline.core.manifest import read_manifest, write_manifest
from pipeline.core.memory import use_huge_pages
from pipeline.core.resources import check_resources
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.openvino import npu_blob, npu_lane
from pipeline.openvino.config import NpuVariantConfig, OpenVinoVariantConfig
from pipeline.openvino.export import BASE_DIR, ROTARY_VERIFIED, export_into, manifest_fields, misfit_widths
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

    Returns:
        The manifest written next to the IR.
    """
    model_dir, out_root = ws.model_dir, ws.root("npu")
    source = read_manifest(model_dir)
    ov_cfg = npu_request(cfg, json.loads((model_dir / "config.json").read_text(encoding="utf-8")), f"npu.{name}")
    status = status if status is not None else devices.detect()
    base = base_dir if base_dir and base_dir.is_dir() else None
    ram, disk = needs("compress" if base else "export", ov_cfg.weight_format, model_dir)
    blob_disk = needs("compress", ov_cfg.weight_format, model_dir)[1] if status["NPU"].available else 0  # has weights
    what = f"[npu-{name}] {'compressing' if base else 'exporting'} to {ov_cfg.weight_format} for the NPU"
    check_resources(what, ram, disk + blob_disk, out_root)
    with staged_dir(out_root / name) as tmp:
        summary = export_into(tmp, f"npu-{name}", ov_cfg, model_dir, base)
        check_npu_layout(summary)
        write_json_atomic(tmp / NPU_CONFIG, cfg.run_settings())
        blob = blob_step(tmp, cfg.run_settings(), status, npuw_max_size_mb)
        fields = manifest_fields(source, cfg, summary)
        # blob timings differ between runs: the run log gets them (with the export's), the manifest does not
        found = blob.get("npuw_blob_check")
        check: dict[str, Any] = found if isinstance(found, dict) else {}

        fields["timings"] = {
            **fields["timings"],
            **{k: blob.pop(k) for k in ("compile_s", "load_from_blob_s") if k in blob},
            **{f"npuw_blob_{k}": check.pop(k) for k in ("compile_s", "load_from_blob_s", "bytes") if k in check},
        }  # blob bytes vary between compilations too
        manifest = write_manifest(
            tmp,
            stage="export_npu",
            variant=name,
            format="openvino-ir-npu",
            **fields,
            npu_run_settings=cfg.run_settings(),
            npu_blob=blob,
            devices={k: v.as_dict() for k, v in status.items()},
            verified={
                "structure": "int4 symmetric in every layer but embeddings/lm_head (int8 backup)",
                "rotary_embedding": ROTARY_VERIFIED,
            },
        )
    say(f"[npu-{name}] NPU-ready IR in {out_root / name} (blob: {blob['blob']})")
    return manifest


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
