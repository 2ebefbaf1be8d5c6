"""What built a saved NPU blob, and whether this machine may load it.

A compiled NPU blob belongs to the NPU compiler that made it (in the driver, or in OpenVINO), the driver that
runs it and the OpenVINO that wrote it: a blob from another driver fails to load, or fails later ("No more
devices are left" after a driver update: openvino.genai#2082, model_server#3557). Beside
``openvino_model.npu.blob`` the artifact keeps ``openvino_model.npu.blob.json`` with those versions, the device
and the backend it was compiled for; chat and validate reuse the blob only where every one of them matches this
machine (:func:`stale_reason`), and compile again otherwise (:func:`pipeline.openvino.export_npu.reusable_blob`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import write_json_atomic

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
    differ = [k for k in FACTS if str(record.get(k)) != here[k]]
    if not differ:
        return None
    return f"the saved NPU blob was built by {_describe(record, differ)}; this machine has {_describe(here, differ)}"
