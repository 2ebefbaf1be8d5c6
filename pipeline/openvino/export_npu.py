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
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import staged_dir, write_json_atomic
from pipeline.core.errors import fail, run_main
from pipeline.core.log import say, step
from pipeline.core.manifest import file_hashes, read_manifest, write_manifest
from pipeline.core.memory import use_huge_pages
from pipeline.core.stage import run_stage
from pipeline.core.verify import stage_of
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.openvino import npu_blob, npu_lane
from pipeline.openvino.config import NpuVariantConfig
from pipeline.openvino.export import BASE_DIR, ROTARY_VERIFIED, check_group_size, export_into, manifest_fields
from pipeline.validation import devices

NPU_CONFIG = "npu_config.json"
BLOB = npu_blob.BLOB
DEFERRED = "deferred - no NPU device; compiled on first load on the target"


def load_llm_pipeline(model_dir: Path, device: str, properties: dict[str, Any]) -> Any:
    """Create an ``openvino_genai.LLMPipeline`` (separate function so tests can observe the call)."""
    import openvino_genai as ov_genai

    return ov_genai.LLMPipeline(str(model_dir), device, **properties)


def compile_blob(model_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Compile for the NPU, export the blob into ``model_dir``, and time a load from that blob.

    Returns:
        Blob facts for the manifest: file name, compile and blob-load seconds.
    """
    blob_path = model_dir / BLOB
    start = time.perf_counter()
    pipe = load_llm_pipeline(model_dir, "NPU", {**settings, "EXPORT_BLOB": "YES", "BLOB_PATH": str(blob_path)})
    compile_s = time.perf_counter() - start
    del pipe
    if not blob_path.is_file():
        fail(f"NPU compile finished but wrote no blob at {blob_path}: update the NPU driver and OpenVINO")
    start = time.perf_counter()
    pipe = load_llm_pipeline(model_dir, "NPU", {**settings, "BLOB_PATH": str(blob_path)})
    load_s = time.perf_counter() - start
    del pipe
    return {
        "blob": BLOB,
        "compile_s": round(compile_s, 2),
        "load_from_blob_s": round(load_s, 2),
        "skips_compilation": load_s < compile_s,
    }


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
    with step(f"compiling for the NPU ({npu.full_name}, driver {npu.driver}) and exporting the blob"):
        facts = compile_blob(folder, settings)
    npu_blob.write_record(folder, settings)  # what built it, so a driver or OpenVINO update is noticed before loading
    import openvino as ov

    return {
        **facts,
        "npu_driver": npu.driver,
        "npu_compiler": npu.compiler,
        "openvino": ov.get_version(),
        "record": npu_blob.RECORD,
    }


def prompt_ids(folder: Path) -> list[int]:
    """A short chat prompt tokenized by the artifact's own tokenizer IR (for the blob round trip)."""
    import openvino_genai as ov_genai

    ids = (
        ov_genai.Tokenizer(str(folder))
        .encode("<|user|>Can you introduce yourself?<|end|><|assistant|>", add_special_tokens=False)
        .input_ids.data[0]
    )
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
    ov_cfg = cfg.as_openvino()
    check_group_size(ov_cfg, json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    status = status if status is not None else devices.detect()
    with staged_dir(out_root / name) as tmp:
        summary = export_into(
            tmp, f"npu-{name}", ov_cfg, model_dir, base_dir if base_dir and base_dir.is_dir() else None
        )
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
    return rebuild_blob(artifact, settings)


def rebuild_blob(artifact: Path, settings: dict[str, Any]) -> dict:
    """Compile ``artifact``'s NPU blob (again) into a copy of the folder and swap the copy in, manifest updated.

    The old blob and its record are left out of the copy; the folder is replaced whole or not at all.
    """
    status = devices.detect()
    if not status["NPU"].available:
        fail(f"no NPU on this machine ({status['NPU'].reason}); run this on the NPU machine")
    manifest = read_manifest(artifact)
    with staged_dir(artifact) as tmp:  # never edit the (DVC-tracked) folder in place
        # content only: copy2 would carry the DVC cache's read-only flag, and Windows then refuses the manifest rewrite
        shutil.copytree(
            artifact,
            tmp,
            dirs_exist_ok=True,
            copy_function=shutil.copyfile,
            ignore=shutil.ignore_patterns(BLOB, npu_blob.RECORD),
        )
        facts = blob_step(tmp, settings, status)
        manifest["npu_blob"] = facts
        manifest["files"] = file_hashes(tmp)
        manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
        write_json_atomic(tmp / "manifest.json", manifest)
    return facts


def reusable_blob(artifact: Path, settings: dict[str, Any]) -> Path | None:
    """The artifact's saved NPU blob, compiled again first when this machine's NPU stack did not build it.

    Chat and validate load the blob only where its record (:mod:`pipeline.openvino.npu_blob`) matches this
    machine's OpenVINO, NPU driver, compiler and device; otherwise one line says why and the blob is replaced.

    Returns:
        The blob's path, or ``None`` when the artifact has none.
    """
    if not (artifact / BLOB).is_file():
        return None
    reason = npu_blob.stale_reason(artifact, settings)
    if reason is not None:
        stage = stage_of(artifact)
        record = f" (then `dvc commit {stage}` records the new blob)" if stage else ""
        say(f"{reason}: compiling again and replacing it{record}")
        rebuild_blob(artifact, settings)
    return artifact / BLOB


if __name__ == "__main__":  # the stage: `python -m pipeline.openvino.export_npu <variant>`
    use_huge_pages()  # restarts this process once, before the heavy imports (Linux)
    run_main(lambda: run_stage("npu", "export"))
