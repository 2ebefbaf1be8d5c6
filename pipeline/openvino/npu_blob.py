"""The compiled NPU blob: building it, recording what built it, and whether this machine may load it.

A compiled NPU blob belongs to the NPU compiler that made it (in the driver, or in OpenVINO), the driver that
runs it and the OpenVINO that wrote it: a blob from another driver fails to load, or fails later ("No more
devices are left" after a driver update: openvino.genai#2082, model_server#3557). Beside
``openvino_model.npu.blob`` the artifact keeps ``openvino_model.npu.blob.json`` with those versions, the device
and the backend it was compiled for; chat and validate reuse the blob only where every one of them matches this
machine (:func:`stale_reason`), and compile again otherwise (:func:`reusable_blob`). The export stage
(:mod:`pipeline.openvino.export_npu`) and ``aipc compile-npu-blob`` build it with the same functions.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import staged_dir, write_json_atomic
from pipeline.core.errors import fail
from pipeline.core.log import say, step
from pipeline.core.manifest import file_hashes, read_manifest
from pipeline.core.verify import stage_of
from pipeline.validation import devices

BLOB = "openvino_model.npu.blob"
RECORD = "openvino_model.npu.blob.json"
UNAVAILABLE = "unavailable"
# what the record holds, in the order and with the names the one-line message uses
FACTS = {
    "npu_driver": "NPU driver",
    "npu_compiler": "NPU compiler",
    "openvino": "OpenVINO",
    "device": "device",
    "device_architecture": "architecture",
    "compiled_for": "compiled for",
}
# read-only properties of OpenVINO's NPU plugin (openvino.properties.intel_npu.driver_version() etc.)
NPU_PROPERTIES = {
    "npu_driver": "NPU_DRIVER_VERSION",
    "npu_compiler": "NPU_COMPILER_VERSION",
    "device": "FULL_DEVICE_NAME",
    "device_architecture": "DEVICE_ARCHITECTURE",
}


def _version(key: str, value: Any) -> str:
    """A property as text; NPU_COMPILER_VERSION is a uint32 of major (high 16 bits) and minor (low 16 bits)."""
    if key == "npu_compiler" and isinstance(value, int):
        return f"{value >> 16}.{value & 0xFFFF}"
    return str(value)


def machine_versions() -> dict[str, str]:
    """This machine's OpenVINO version and NPU driver, compiler and device, as OpenVINO's NPU plugin reports them.

    A property the plugin cannot give (no NPU backend, as on CI) is ``"unavailable"``. The one place that reads
    them: tests fake the machine by replacing this function.
    """
    import openvino as ov

    core = ov.Core()
    facts = {"openvino": ov.get_version()}
    for key, name in NPU_PROPERTIES.items():
        try:
            facts[key] = _version(key, core.get_property("NPU", name))
        except Exception:  # noqa: BLE001 - without an NPU backend the plugin answers with varied errors
            facts[key] = UNAVAILABLE
    return facts


def compiled_for(settings: dict[str, Any]) -> str:
    """What the blob's subgraphs are compiled for under ``settings``: the NPU, or NPUW's stand-in devices."""
    devices = settings.get("NPUW_DEVICES")
    return f"NPUW on {devices}" if devices else "NPU"


def build_facts(settings: dict[str, Any]) -> dict[str, str]:
    """What a blob compiled here with ``settings`` (the artifact's ``npu_config.json``) would record."""
    return {**machine_versions(), "compiled_for": compiled_for(settings)}


def write_record(folder: Path, settings: dict[str, Any]) -> dict[str, str]:
    """Record beside the blob in ``folder`` what built it (atomically); returns the record."""
    facts = build_facts(settings)
    write_json_atomic(Path(folder) / RECORD, facts)
    return facts


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record beside the blob in ``folder``, or ``None`` when it is missing or unreadable."""
    try:
        record = json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(facts: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{FACTS[k]} {facts.get(k, UNAVAILABLE)}" for k in keys)


def stale_reason(folder: Path, settings: dict[str, Any]) -> str | None:
    """Why the saved blob in ``folder`` must not be loaded here, or ``None`` when this machine built it.

    Args:
        folder: An NPU artifact folder with ``openvino_model.npu.blob``.
        settings: The run settings it loads with (``npu_config.json``).

    Returns:
        One line naming what differs (the blob's value, then this machine's), or ``None`` when all match.
    """
    record = read_record(folder)
    if record is None:
        return f"the saved NPU blob has no record of what built it ({RECORD})"
    here = build_facts(settings)
    differ = [k for k in FACTS if str(record.get(k, UNAVAILABLE)) != here[k]]
    if not differ:
        return None
    return f"the saved NPU blob was built by {_describe(record, differ)}; this machine has {_describe(here, differ)}"


def load_llm_pipeline(model_dir: Path, device: str, properties: dict[str, Any]) -> Any:
    """Create an ``openvino_genai.LLMPipeline`` (separate function so tests can observe the call)."""
    import openvino_genai as ov_genai

    return ov_genai.LLMPipeline(str(model_dir), device, **properties)


def compile_blob(model_dir: Path, settings: dict[str, Any], load: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Compile for the NPU, export the blob into ``model_dir``, and time a load from that blob.

    Args:
        model_dir: The NPU IR folder; the blob is written into it.
        settings: Its run settings (``npu_config.json``).
        load: Creates the pipeline (default :func:`load_llm_pipeline`).

    Returns:
        Blob facts for the manifest: file name, compile and blob-load seconds.
    """
    load = load or load_llm_pipeline
    blob_path = model_dir / BLOB
    start = time.perf_counter()
    pipe = load(model_dir, "NPU", {**settings, "EXPORT_BLOB": "YES", "BLOB_PATH": str(blob_path)})
    compile_s = time.perf_counter() - start
    del pipe
    if not blob_path.is_file():
        fail(f"NPU compile finished but wrote no blob at {blob_path}: update the NPU driver and OpenVINO")
    start = time.perf_counter()
    pipe = load(model_dir, "NPU", {**settings, "BLOB_PATH": str(blob_path)})
    load_s = time.perf_counter() - start
    del pipe
    return {
        "blob": BLOB,
        "compile_s": round(compile_s, 2),
        "load_from_blob_s": round(load_s, 2),
        "skips_compilation": load_s < compile_s,
    }


Compile = Callable[[Path, dict[str, Any]], dict[str, Any]]


def compile_and_record(
    folder: Path, settings: dict[str, Any], npu: devices.DeviceStatus, compile: Compile = compile_blob
) -> dict[str, Any]:
    """Compile the blob into ``folder`` on the NPU and record beside it what built it; returns the manifest facts."""
    with step(f"compiling for the NPU ({npu.full_name}, driver {npu.driver}) and exporting the blob"):
        facts = compile(folder, settings)
    write_record(folder, settings)  # what built it, so a driver or OpenVINO update is noticed before loading
    import openvino as ov

    return {
        **facts,
        "npu_driver": npu.driver,
        "npu_compiler": npu.compiler,
        "openvino": ov.get_version(),
        "record": RECORD,
    }


def rebuild_blob(artifact: Path, settings: dict[str, Any], compile: Compile = compile_blob) -> dict[str, Any]:
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
            ignore=shutil.ignore_patterns(BLOB, RECORD),
        )
        facts = compile_and_record(tmp, settings, status["NPU"], compile)
        manifest["npu_blob"] = facts
        manifest["files"] = file_hashes(tmp)
        manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
        write_json_atomic(tmp / "manifest.json", manifest)
    return facts


def reusable_blob(artifact: Path, settings: dict[str, Any]) -> Path | None:
    """The artifact's saved NPU blob, compiled again first when this machine's NPU stack did not build it.

    Chat and validate load the blob only where its record matches this machine's OpenVINO, NPU driver, compiler
    and device (:func:`stale_reason`); otherwise one line says why and the blob is replaced (:func:`rebuild_blob`).

    Returns:
        The blob's path, or ``None`` when the artifact has none.
    """
    if not (artifact / BLOB).is_file():
        return None
    reason = stale_reason(artifact, settings)
    if reason is not None:
        stage = stage_of(artifact)
        record = f" (then `dvc commit {stage}` records the new blob)" if stage else ""
        say(f"{reason}: compiling again and replacing it{record}")
        rebuild_blob(artifact, settings)
    return artifact / BLOB
