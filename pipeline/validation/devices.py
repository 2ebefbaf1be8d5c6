"""Device detection in one place: which OpenVINO devices exist here, and why the others do not.

Every validator asks :func:`detect` which devices are present, and records both the device it
asked for and the one that really executed (some runtimes fall back to CPU silently).
"""

from __future__ import annotations

import glob
import platform
from dataclasses import asdict, dataclass
from typing import Any

KNOWN = ("CPU", "GPU", "NPU")


@dataclass
class DeviceStatus:
    """Whether one device can run models here, with versions or the reason it cannot."""

    name: str
    available: bool
    full_name: str | None = None
    driver: str | None = None
    compiler: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for manifests and metrics."""
        return asdict(self)


def _property(core: Any, device: str, name: str) -> str | None:
    try:
        return str(core.get_property(device, name))
    except Exception:  # noqa: BLE001 - a plugin without that property answers with varied errors
        return None


def _absent_reason(device: str) -> str:
    """The most precise reason we can give for ``device`` missing on this machine."""
    system = platform.system()
    if device == "NPU":
        if system == "Linux":
            if not glob.glob("/dev/accel/accel*"):
                return "no NPU device node (/dev/accel/accel*): no NPU in this machine or the intel_vpu driver is not loaded"
            return "NPU device node present but OpenVINO's NPU plugin did not load: install the Intel NPU user-space driver"
        if system == "Windows":
            return "OpenVINO lists no NPU: install or update the Intel NPU driver (Device Manager > Neural processors)"
        return f"OpenVINO has no NPU support on {system}"
    if device == "GPU":
        if system == "Linux" and not glob.glob("/dev/dri/renderD*"):
            return "no GPU render node (/dev/dri/renderD*): no Intel GPU, or the i915/xe driver is not loaded"
        return "OpenVINO lists no GPU: install the Intel GPU compute runtime (OpenCL / Level Zero)"
    return f"OpenVINO lists no {device}"


def detect(core: Any | None = None) -> dict[str, DeviceStatus]:
    """Return the status of CPU, GPU and NPU as OpenVINO sees them on this machine.

    Args:
        core: An ``openvino.Core`` to query (a new one when omitted; tests pass a fake).

    Returns:
        Device name -> :class:`DeviceStatus`, for every name in :data:`KNOWN`.
    """
    if core is None:
        import openvino as ov

        core = ov.Core()
    present = {d.split(".")[0] for d in core.available_devices}
    status = {}
    for device in KNOWN:
        if device not in present:
            status[device] = DeviceStatus(device, False, reason=_absent_reason(device))
            continue
        status[device] = DeviceStatus(
            device,
            True,
            full_name=_property(core, device, "FULL_DEVICE_NAME"),
            driver=_property(core, device, "NPU_DRIVER_VERSION") if device == "NPU" else None,
            compiler=_property(core, device, "NPU_COMPILER_VERSION") if device == "NPU" else None,
        )
    return status


def executed_device(requested: str, executed: str) -> tuple[bool, str]:
    """Check that what ran is what was asked for; returns (ok, honest label of what ran).

    ``AUTO`` and ``HETERO`` requests pass if any device ran; a plain device request passes only
    when exactly that device executed (a silent CPU fallback is a failure).
    """
    ran = {d.strip().split(".")[0] for d in executed.split(",") if d.strip()}
    wanted = requested.split(":")[0].split(".")[0]
    if wanted in ("AUTO", "HETERO", "MULTI"):
        return bool(ran), executed
    return ran == {wanted}, executed


# onnxruntime-genai execution providers -> matrix column, and the package that brings each one.
ONNX_PROVIDER_DEVICES = {"cpu": "CPU", "dml": "DML", "cuda": "CUDA", "webgpu": "WEBGPU"}
ONNX_PROVIDER_PACKAGES = {
    "dml": "onnxruntime-genai-directml",
    "cuda": "onnxruntime-genai-cuda",
    "webgpu": "onnxruntime-genai-webgpu",
}


def compat_command() -> str:
    """The family tool that loads a folder in the DirectML runtime's versions, as a command to paste (its name from
    the registry's ``commands``: the one ending in ``-compat``)."""
    from pipeline.core.registry import entries

    names = [name for commands in entries("commands").values() for name in commands if name.endswith("-compat")]
    return f"`aipc {names[0]} dml_int4`" if names else "the compat command (`aipc --help`, Family tools)"


def onnx_provider_status(provider: str) -> DeviceStatus:
    """Whether the installed onnxruntime-genai can run ``provider`` here, or the reason it cannot."""
    import onnxruntime_genai as og

    checks = {
        "cpu": lambda: True,
        "dml": og.is_dml_available,
        "cuda": og.is_cuda_available,
        "webgpu": og.is_webgpu_available,
    }
    name = ONNX_PROVIDER_DEVICES[provider]
    if checks[provider]():
        return DeviceStatus(name, True, full_name=f"onnxruntime-genai {provider} provider")
    package = ONNX_PROVIDER_PACKAGES[provider]
    if provider == "dml" and platform.system() != "Windows":
        reason = f"DirectML exists only on Windows ({package}); the onnxruntime-genai here has no DML provider"
    elif provider == "dml":  # installing it here would replace the onnxruntime-genai the model builder needs
        reason = (
            f"the main environment keeps the CPU onnxruntime-genai the model builder needs ({package} would "
            f"replace it); {compat_command()} loads the folder in the DirectML runtime's versions"
        )
    else:
        reason = (
            f"the installed onnxruntime-genai has no {name} provider: install {package} on a machine with the device"
        )
    return DeviceStatus(name, False, reason=reason)
