"""The command line of every family's stage: ``python -m <module> [flag] <variant>``, one function for all.

Each stage module ends with ``run_main(lambda: run_stage(<family>, "export" | "validate"))``:
the variant is checked against params.yaml, the leftovers of killed stages anywhere under ``artifacts/`` are
removed (:mod:`pipeline.core.leftovers`), a validate stage first verifies the artifact and the reference
(manifest sha256s and ``dvc.lock``, before anything is loaded), then the registry's entry point runs with the
variant's section. ``aipc export-onnx`` and friends call the same function.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from pipeline.core.artifacts import ARTIFACTS
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.leftovers import sweep_leftovers
from pipeline.core.refusal import Refused, record_refusal, record_refused_metrics
from pipeline.core.registry import FAMILIES, Family, entry
from pipeline.core.typed import pick_variant


def parse_variant(
    argv: list[str] | None, description: str, family: str, alternative: str | None = None
) -> tuple[Family, str, PipelineConfig]:
    """The family, variant name and params of ``python -m <stage module> [flag] <variant>``.

    Args:
        argv: The command line after the module (``None``: ``sys.argv``).
        description: The stage's one-line description (``--help``).
        family: The family whose conf section holds the variants.
        alternative: A second family the same module serves when its ``validate_flags`` is given
            (``--npu``: the OpenVINO validator on ``artifacts/npu``).

    Returns:
        The chosen family, the variant (checked against params.yaml: one line naming the configured ones
        otherwise) and the loaded params.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("variant", help=f"key under `{family}` in params.yaml, e.g. int4")
    if alternative:
        other = FAMILIES[alternative]
        parser.add_argument(
            other.validate_flags,
            dest="alternative",
            action="store_true",
            help=f"the {other.kind} variant (key under `{alternative}`) instead",
        )
    args = parser.parse_args(argv)
    chosen = FAMILIES[alternative if alternative and args.alternative else family]
    params = load_params()
    pick_variant(getattr(params, chosen.name), args.variant, chosen.title)
    return chosen, args.variant, params


def run_stage(family: str, which: str, argv: list[str] | None = None) -> Any:
    """Run the ``export`` or ``validate`` stage of ``family`` for the variant named on the command line.

    Args:
        family: A key of :data:`pipeline.core.registry.FAMILIES` (``openvino``; its module also takes ``--npu``).
        which: ``export`` or ``validate``.
        argv: The arguments after the module (``None``: ``sys.argv``).

    Returns:
        What the entry point returns (the manifest, or the metrics written).
    """
    module = FAMILIES[family].module(which)
    # another family served by the same module behind a flag (``--npu``: the OpenVINO validator on artifacts/npu)
    sharing = [f.name for f in FAMILIES.values() if f.name != family and f.module(which) == module and f.validate_flags]
    doc = (importlib.import_module(module).__doc__ or which).strip().splitlines()[0]
    chosen, name, params = parse_variant(argv, doc, family, sharing[0] if sharing and which == "validate" else None)
    sweep_leftovers()
    if which == "validate":
        from pipeline.core.verify import verify_for_use

        try:
            verify_for_use(chosen.artifact_root / name, ARTIFACTS / "reference")  # before anything is loaded
        except Refused as refusal:  # the export refused this model: the metrics say so, the report still runs
            return record_refused_metrics(chosen, name, str(refusal))
        return entry(chosen.name, which)(name, params.validate)
    extra = {key.rpartition(".")[2]: _param(params, key) for key in chosen.export_params}
    try:
        return entry(chosen.name, which)(name, getattr(params, chosen.name)[name], **extra)
    except Refused as refusal:  # the model's shape, not the machine: a result, recorded as the stage's output
        return record_refusal(chosen, name, str(refusal))


def _param(params: PipelineConfig, dotted: str) -> Any:
    """``params.validate.npuw_max_size_mb`` for ``"validate.npuw_max_size_mb"``."""
    value: Any = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
