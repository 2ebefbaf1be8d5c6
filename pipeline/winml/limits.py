"""What a Windows ML package tells the OpenVINO EP beyond the device: the NPU's limits and the compiled-model cache.

The NPU runs an LLM with static shapes (NPUW): its prompt holds at most ``MAX_PROMPT_LEN`` tokens and its KV cache
``MAX_PROMPT_LEN + MIN_RESPONSE_LEN``. The NPU IR keeps these, with its hints, in ``npu_config.json`` (the
``export_npu`` stage). The package copies that file and passes the same settings to the EP as ``load_config``
``{"NPU": {...}}``, values written as strings (Olive's Phi-3 NPU recipe does the same; the EP reads
``MAX_PROMPT_LEN`` / ``MIN_RESPONSE_LEN`` as unsigned integers and renames the hints to NPUW's, intel/onnxruntime
``ov_interface.cc`` / ``ov_stateful_patch_utils.cc``), and its ``context_length`` / ``max_length`` are what the NPU
pipeline holds. Without them the EP compiles with its own defaults and ``genai_config.json`` promises the model's
whole context.

The compiled-model cache: every package's provider options carry ``cache_dir`` :data:`PACKAGE_CACHE`. onnxruntime-genai
makes a relative ``cache_dir`` absolute against the package folder and passes it as ``load_config``'s ``CACHE_DIR``
for the device that runs (src/openvino/session_options.cpp), so a second load reads the compiled model instead of
compiling again (minutes on the NPU for Phi-3-mini). OpenVINO fails the load when it cannot create that folder, and a
JSON file cannot name a per-user folder, so this project's own loads (validation) always set ``cache_dir`` to
:func:`user_cache_dir`: a per-user folder keyed by the package's IR hashes, outside the DVC-tracked package.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

NPU_CONFIG = "npu_config.json"
PACKAGE_CACHE = "ov_cache"  # relative to the package folder (onnxruntime-genai resolves it there)
PROMPT, RESPONSE = "MAX_PROMPT_LEN", "MIN_RESPONSE_LEN"
CACHE_ENV = "AIPC_OV_CACHE_DIR"  # where this project's loads keep compiled models (tests point it at a tmp folder)


def npu_settings(folder: Path) -> dict[str, Any] | None:
    """The NPU run settings in ``folder``'s ``npu_config.json``, or ``None`` when there is none."""
    path = Path(folder) / NPU_CONFIG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def held_tokens(settings: dict[str, Any]) -> int:
    """Tokens the NPU pipeline holds: the longest prompt plus the shortest response it reserves room for."""
    return int(settings[PROMPT]) + int(settings[RESPONSE])


def load_config(device: str, settings: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """The EP's ``load_config`` for ``device``: the NPU settings as strings (only for the NPU), else empty."""
    if device != "NPU" or not settings:
        return {}
    return {"NPU": {key: str(value) for key, value in settings.items()}}


def provider_options(device: str, settings: dict[str, Any] | None) -> dict[str, str]:
    """The OpenVINO entry of ``provider_options`` a package for ``device`` carries."""
    options = {"device_type": device, "enable_causallm": "True", "cache_dir": PACKAGE_CACHE}
    config = load_config(device, settings)
    if config:
        options["load_config"] = json.dumps(config, separators=(",", ":"))
    return options


def package_options(genai: dict[str, Any]) -> dict[str, str]:
    """The OpenVINO provider options of a parsed ``genai_config.json`` (empty when it has none)."""
    entries = genai["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    return next((e["OpenVINO"] for e in entries if isinstance(e, dict) and "OpenVINO" in e), {})


def agreement_problems(genai: dict[str, Any], package_settings: dict[str, Any] | None, ir: dict[str, Any]) -> list[str]:
    """How an NPU package's ``genai_config.json``, its ``npu_config.json`` and its IR's settings disagree.

    Args:
        genai: The package's parsed ``genai_config.json``.
        package_settings: The package's ``npu_config.json`` (``None`` when missing).
        ir: The settings the IR was exported with (its manifest's ``npu_run_settings``, copied into the package's).
    """
    if package_settings is None:
        return [f"the package has no {NPU_CONFIG} (built before it carried the NPU limits): rebuild it"]
    problems = []
    if ir and package_settings != ir:
        problems.append(f"{NPU_CONFIG} {package_settings} is not the IR's {ir}")
    written = package_options(genai).get("load_config")
    want = load_config("NPU", package_settings)
    got = json.loads(written) if written else None
    if got != want:
        problems.append(f"genai_config load_config {written or 'missing'}, expected {json.dumps(want)}")
    held = held_tokens(package_settings)
    context, longest = genai["model"].get("context_length"), genai.get("search", {}).get("max_length")
    if (context, longest) != (held, held):
        problems.append(
            f"genai_config context_length {context} / max_length {longest}, expected {held} "
            f"({PROMPT} {package_settings[PROMPT]} + {RESPONSE} {package_settings[RESPONSE]})"
        )
    return problems


def user_cache_dir(folder: Path, device: str, ir_hashes: dict[str, str]) -> Path:
    """This user's compiled-model cache for the package in ``folder`` on ``device``, keyed by its IR's hashes.

    ``%LOCALAPPDATA%\\aipc\\ov_cache`` on Windows, ``$XDG_CACHE_HOME/aipc/ov_cache`` (``~/.cache``) elsewhere, or
    :data:`CACHE_ENV`. The same IR on the same device finds the same folder, whatever the package is called.
    """
    base = os.environ.get(CACHE_ENV)
    if not base:
        home = os.environ.get("LOCALAPPDATA") if sys.platform == "win32" else os.environ.get("XDG_CACHE_HOME")
        base = str(Path(home or Path.home() / ".cache") / "aipc" / "ov_cache")
    key = hashlib.sha256(json.dumps([device, sorted(ir_hashes.items())]).encode()).hexdigest()[:16]
    return Path(base) / f"{Path(folder).name}-{device.lower()}-{key}"


def own_cache_dir(folder: Path, device: str) -> Path:
    """:func:`user_cache_dir` of the package in ``folder``, keyed by the IR hashes its manifest records."""
    manifest = Path(folder) / "manifest.json"
    found = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    return user_cache_dir(folder, device, found.get("source_ir", {}).get("files_sha256", {}))


def prompt_problem(tokens: int, settings: dict[str, Any] | None, device: str) -> str | None:
    """One line when a prompt of ``tokens`` is longer than an NPU package takes, else ``None``."""
    if device != "NPU" or not settings or tokens <= int(settings[PROMPT]):
        return None
    return (
        f"the prompt has {tokens} tokens but this NPU package takes at most {settings[PROMPT]} ({PROMPT}, "
        f"{NPU_CONFIG}): shorten it, or rebuild the NPU IR with a larger limit "
        f"(npu.<v>.max_prompt_len) and the package after it"
    )
