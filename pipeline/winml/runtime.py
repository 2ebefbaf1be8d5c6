"""The runtime of a Windows ML package here: onnxruntime-genai with ONNX Runtime's OpenVINO EP plugin.

The plugin (PyPI ``onnxruntime-ep-openvino``) is registered with ``register_execution_provider_library``, as
Windows ML registers the OpenVINO EP it downloads. It lists only Intel devices (vendor 0x8086; its
``GetSupportedDevices`` skips every other vendor; ONNX Runtime reads the CPU's vendor with CPUID, through
pytorch/cpuinfo), so on an AMD or Arm machine it offers nothing and the cells are skipped with that reason. The
tests run the same code there with the vendor emulated (tests/winml/test_winml.py, ``emulate_intel_vendor``); the stage
never does. A device type it does not list fails hard (there is no fallback), so a package built
for the NPU or GPU runs here with the provider options overridden to CPU, and its cell says so.

The plugin bundles its own ``libopenvino`` (``openvino.dll``): in one process with the ``openvino`` package only
one of the two is loaded (same soname), and the other's plugins then run on it. That is safe only when both are
the very same build, which :func:`check_bundled_openvino` enforces from :data:`BUNDLED_OPENVINO`.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.config import PROJECT_ROOT
from pipeline.core.package_sets import PackageSet, read_constraints
from pipeline.winml import limits

EP_NAME = "OpenVINOExecutionProvider"
PLUGIN = "onnxruntime-ep-openvino"
INTEL = 0x8086
# The OpenVINO release each plugin version bundles (read from the wheel's libopenvino; PyPI onnxruntime-ep-openvino).
BUNDLED_OPENVINO = {"1.8.1": "2026.4.1"}
# Full-precision compute for artifact fidelity, passed through the EP's ``load_config`` (OpenVINO properties per
# device); the same settings as pipeline/openvino/numerics.py PINNED. The plugin ignores the old ``precision`` option
# (its own message: "Provider option {} is ignored. Please set it via the load_config as: ... INFERENCE_PRECISION_HINT").
# What runs a package here, installed in the main venv (pyproject): the plugin, the openvino it must match, the runtimes.
PACKAGES = (PLUGIN, "openvino", "onnxruntime", "onnxruntime-genai")


def package_set() -> PackageSet:
    """The Windows ML / OpenVINO EP set under the project's pins (tests/windows/test_windows_resolver.py)."""
    return PackageSet("Windows ML / OpenVINO EP set", PACKAGES, read_constraints(PROJECT_ROOT / "constraints.txt"))


PINNED = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


@dataclass
class PluginStatus:
    """Which OpenVINO devices the plugin offers here, or why none."""

    version: str | None
    devices: list[str] = field(default_factory=list)  # OpenVINO device names (``CPU``, ``GPU``, ``NPU``)
    reason: str | None = None
    # Set only by the tests (tests/winml/test_winml.py ``emulate_intel_vendor``): the devices were offered because ONNX
    # Runtime's CPU device was made to read vendor Intel on a CPU of another vendor; every cell says so.
    emulated: str | None = None


def check_bundled_openvino(plugin: str | None, openvino: str | None) -> str | None:
    """One line when the plugin's bundled OpenVINO is not the installed ``openvino`` (they share one process)."""
    bundled = BUNDLED_OPENVINO.get(plugin or "")
    if plugin is None or openvino is None or bundled == openvino.split("-")[0]:
        return None
    return (
        f"{PLUGIN} {plugin} bundles OpenVINO {bundled or 'of an unknown release'} but openvino {openvino} is "
        f"installed; both load libopenvino into one process: install the pinned set (`python bootstrap.py install`)"
    )


def no_device_reason(hardware: list[tuple[str, str, int]], version: str) -> str:
    """Why the plugin offers nothing: ``hardware`` is ONNX Runtime's (type, vendor, vendor id) of every device."""
    found = ", ".join(f"{kind} {vendor or '?'} (vendor 0x{vid:04x})" for kind, vendor, vid in hardware) or "none"
    return (
        f"the OpenVINO EP plugin ({PLUGIN} {version}) offers only Intel devices (vendor 0x8086) "
        f"and this machine has {found}"
    )


@functools.cache
def plugin_status() -> PluginStatus:
    """Register the plugin (once per process) and list the OpenVINO devices it offers."""
    try:
        version = metadata.version(PLUGIN)
        import onnxruntime as ort
        import onnxruntime_ep_openvino as plugin
        import onnxruntime_genai as og
    except (ImportError, metadata.PackageNotFoundError) as err:
        return PluginStatus(None, reason=f"{PLUGIN} is not installed ({err}): run `python bootstrap.py install`")
    with contextlib.suppress(metadata.PackageNotFoundError):
        mismatch = check_bundled_openvino(version, metadata.version("openvino"))
        if mismatch:
            return PluginStatus(version, reason=mismatch)
    path = plugin.get_library_path()
    ort.register_execution_provider_library(EP_NAME, path)
    og.register_execution_provider_library(EP_NAME, path)
    listed = ort.get_ep_devices()
    devices = [str(d.ep_metadata.get("ov_device")) for d in listed if d.ep_name == EP_NAME]
    if devices:
        return PluginStatus(version, sorted(set(devices)))
    hardware = sorted({(d.device.type.name, d.device.vendor, int(d.device.vendor_id)) for d in listed})
    return PluginStatus(version, reason=no_device_reason(hardware, version))


def load_model(folder: str, device: str, pinned: bool, cache_dir: Path | None = None) -> Any:
    """``og.Model`` of the package on the OpenVINO EP, ``device`` overriding its device_type.

    The package's own provider options stay (its NPU ``load_config`` applies only where the NPU runs). ``pinned``:
    f32 compute, added to ``load_config`` for ``device``. ``cache_dir``: the compiled-model cache, instead of the
    package's folder-relative one (onnxruntime-genai passes it as ``CACHE_DIR`` for the device that runs); by
    default this user's folder for the package (:func:`limits.own_cache_dir`): never inside the DVC-tracked package.
    """
    import json

    import onnxruntime_genai as og

    written = json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))
    load = json.loads(limits.package_options(written).get("load_config") or "{}")
    config = og.Config(folder)
    config.clear_providers()
    config.append_provider("OpenVINO")
    config.set_provider_option("OpenVINO", "device_type", device)
    config.set_provider_option("OpenVINO", "enable_causallm", "True")
    if pinned:
        load[device] = {**load.get(device, {}), **PINNED}
        config.set_provider_option("OpenVINO", "load_config", json.dumps(load))
    config.set_provider_option("OpenVINO", "cache_dir", str(cache_dir or limits.own_cache_dir(Path(folder), device)))
    return og.Model(config)
