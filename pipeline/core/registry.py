"""The target families, one line each: what the report, verify, publish and the layout test read.

A family is a conf group (``conf/<name>/default.yaml``, a key per variant), an export stage
(``artifacts/<name>/<variant>`` + manifest) and a validate stage (``artifacts/metrics/<name>-<variant>.json``),
both ``foreach`` stages in ``dvc.yaml`` whose ``cmd`` runs the modules named here. Entry points are written
as ``module:function`` strings so that the core never imports a family; :func:`entry` resolves them.
Adding a family: a subpackage with its export and validate entry points (``run(name, cfg, ws)``, ``ws`` a
:class:`pipeline.core.workspace.Workspace`) and a config module (the variant config class is named here as
``module:Class`` too, and :mod:`pipeline.core.config` builds the params with it), a conf group, a ``dvc.yaml``
stage pair, and one entry in :data:`FAMILIES` (``tests/core/test_registry.py`` checks that they agree).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    """One target family: its conf group, its two stages and their entry points, where its outputs go."""

    name: str  # conf group, params.yaml section, folder under artifacts/, metrics prefix
    title: str  # the family in messages ("unknown ONNX variant ...")
    kind: str  # what its artifacts are, for people (metrics cells, model cards)
    export_stage: str  # dvc.yaml stage (foreach over the conf group)
    export: str  # entry point, ``module:function``; ``python -m <module> <variant>`` is the stage's cmd
    validate_stage: str
    validate: str
    config: str  # its variant config class, ``module:Class`` (one ``<name>.<variant>`` section of params.yaml)
    validate_flags: str = ""  # between ``python -m <module>`` and the variant in the validate stage's cmd
    publishable: bool = True  # ``aipc publish`` accepts ``<name>/<variant>``
    export_params: tuple[str, ...] = ()  # other params the export takes, as keyword arguments named by the last part
    # ``module:function``: (artifact manifest, params key) -> the grids its recipe rounds the weights to, or None
    # (pipeline.validation.recipe_cost: the broken-or-costly verdict); "" when the family wraps another's artifact
    rounding: str = ""
    # What the tools and tables outside the family read, so that no module outside its package names it:
    devices: tuple[str, ...] = ()  # what ``validate.devices.<name>`` may list (it must list one); () = no such key
    sweepable: bool = False  # ``sweep.grid`` takes keys under ``<name>.`` (pipeline.core.config.SweepConfig)
    commands: str = ""  # ``module:attr``, a dict {aipc command: function} of the family's own tools
    card: str = ""  # ``module:attr``, a pipeline.core.cards.CardFormat: what a model card says (publishable)
    chat: str = ""  # ``module:function`` opening an artifact folder for ``aipc chat`` (pipeline.chat)
    chat_marker: str = ""  # the file that makes a folder this family's for chat; "" = the folder nobody else claims
    plan: str = ""  # ``module:attr``, a pipeline.core.resources.FamilyPlan: its rows of ``aipc plan``
    # ``module:attr``, its RAM rows {stage row: {variant: (share, fixed GiB)}}: ``<stage>``, ``<stage>_lean`` (Linux)
    # and ``<stage>_windows`` (pipeline.core.resources.stage_rows, merged with the shared stages' STAGE_RAM)
    ram: str = ""
    times: str = ""  # ``module:attr``, {stage: (start-up s, {variant: durations.Row})} (pipeline.core.eta)
    aliases: tuple[str, ...] = ()  # ``aipc <verb>-<...> VARIANT`` names from before the verbs (frozen: no new ones)
    sweep_point: str = ""  # ``module:function`` (checkpoint folder) -> bytes a sweep point peaks at, or ""
    stage_deps: str = ""  # ``module:attr``, a pipeline.core.stage_deps.FamilyDeps: code it runs by path, and why

    @property
    def artifact_root(self) -> Path:
        """Where the export stage writes ``<variant>/`` (relative to the project root)."""
        return Path("artifacts") / self.name

    @property
    def metrics_prefix(self) -> str:
        """The metrics file of variant ``v`` is ``artifacts/metrics/<prefix>-<v>.json``; also the artifact's name."""
        return self.name

    def variant_config(self) -> type:
        """The variant config class (imports the family's config module; the core never imports it directly)."""
        module, _, cls = self.config.partition(":")
        return getattr(importlib.import_module(module), cls)

    def module(self, which: str) -> str:
        """The module of the ``export`` or ``validate`` entry point (``pipeline.openvino.export``)."""
        return getattr(self, which).partition(":")[0]

    def cmd(self, which: str) -> str:
        """The ``dvc.yaml`` command of the ``export`` or ``validate`` stage (``${key}`` is the variant)."""
        flags = self.validate_flags + " " if which == "validate" and self.validate_flags else ""
        return f"python -m {self.module(which)} {flags}${{key}}"

    def artifact(self, variant: str) -> str:
        """The artifact's name in metrics, reports and cards: ``openvino-int4``."""
        return f"{self.metrics_prefix}-{variant}"


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "openvino",
            "OpenVINO",
            "OpenVINO IR",
            "export_openvino",
            "pipeline.openvino.export:run",
            "validate",
            "pipeline.openvino.validate:run_openvino",
            "pipeline.openvino.config:OpenVinoVariantConfig",
            rounding="pipeline.openvino.rounding:ir_rounding",
            devices=("CPU", "GPU", "NPU"),
            sweepable=True,
            card="pipeline.openvino.card:OPENVINO_CARD",
            chat="pipeline.openvino.chat:open_chat",
            plan="pipeline.openvino.plan:OPENVINO_PLAN",
            ram="pipeline.openvino.measured:OPENVINO_RAM",
            times="pipeline.openvino.measured:OPENVINO_TIMES",
            aliases=("export-openvino",),
            sweep_point="pipeline.openvino.plan:sweep_point_bytes",
            stage_deps="pipeline.openvino.deps:DEPS",
        ),
        Family(
            "npu",
            "NPU",
            "NPU-ready IR",
            "export_npu",
            "pipeline.openvino.export_npu:run",
            "validate_npu",
            "pipeline.openvino.validate:run_npu",
            "pipeline.openvino.config:NpuVariantConfig",
            validate_flags="--npu",
            export_params=("validate.npuw_max_size_mb",),
            rounding="pipeline.openvino.rounding:npu_rounding",
            devices=("CPU", "GPU", "NPU"),
            sweepable=True,
            commands="pipeline.openvino.commands:NPU_COMMANDS",
            card="pipeline.openvino.card:NPU_CARD",
            chat="pipeline.openvino.chat:open_chat",
            plan="pipeline.openvino.plan:NPU_PLAN",
            ram="pipeline.openvino.measured:NPU_RAM",
            times="pipeline.openvino.measured:NPU_TIMES",
            aliases=("export-npu", "validate-npu"),
        ),
        Family(
            "onnx",
            "ONNX",
            "ONNX Runtime GenAI model",
            "export_onnx",
            "pipeline.onnx.export:run",
            "validate_onnx",
            "pipeline.onnx.validate:run",
            "pipeline.onnx.config:OnnxVariantConfig",
            rounding="pipeline.onnx.rounding:rounding",
            sweepable=True,
            commands="pipeline.onnx.commands:COMMANDS",
            card="pipeline.onnx.card:CARD",
            chat="pipeline.onnx.chat:open_chat",
            chat_marker="genai_config.json",
            plan="pipeline.onnx.plan:PLAN",
            ram="pipeline.onnx.measured:RAM",
            times="pipeline.onnx.measured:TIMES",
            aliases=("export-onnx", "validate-onnx"),
            stage_deps="pipeline.onnx.deps:DEPS",
        ),
        Family(
            "npu_lib",
            "npu_lib",
            "NPU library model",
            "export_npu_lib",
            "pipeline.npu_lib.export:run",
            "validate_npu_lib",
            "pipeline.npu_lib.validate:run",
            "pipeline.npu_lib.config:NpuLibVariantConfig",
            publishable=False,
            rounding="pipeline.npu_lib.rounding:rounding",
            devices=("NPU",),
            commands="pipeline.npu_lib.commands:COMMANDS",
            plan="pipeline.npu_lib.plan:PLAN",
            ram="pipeline.npu_lib.measured:RAM",
            times="pipeline.npu_lib.measured:TIMES",
            aliases=("export-npu-lib", "validate-npu-lib"),
            stage_deps="pipeline.npu_lib.deps:DEPS",
        ),
        Family(
            "winml",
            "Windows ML",
            "Windows ML package (OpenVINO EP)",
            "export_winml",
            "pipeline.winml.export:run",
            "validate_winml",
            "pipeline.winml.validate:run",
            "pipeline.winml.config:WinmlVariantConfig",
            card="pipeline.winml.card:CARD",
            plan="pipeline.winml.plan:PLAN",
            ram="pipeline.winml.measured:STAGE_RAM",
            times="pipeline.winml.measured:STAGE_TIME",
        ),
    )
}

# Stages outside the families: shared inputs, the base IR the OpenVINO variants compress, and the summary.
SHARED_STAGES = ("download", "reference", "export_openvino_base", "report", "verdict")
# `aipc validate VARIANT` (no family): validate's one-argument form from before the verbs validated an OpenVINO IR
LEGACY_VALIDATE = "openvino"
# artifacts/<folder> -> the shared stage that builds it (pipeline.core.verify; a family's folders come from above)
SHARED_FOLDERS = {"model": "download", "reference": "reference", "openvino_base": "export_openvino_base"}


def entry(family: str, which: str) -> Any:
    """What the ``module:attr`` field ``which`` of ``family`` names: ``export``, ``card``, ... (imports its module)."""
    module, _, function = getattr(FAMILIES[family], which).partition(":")
    return getattr(importlib.import_module(module), function)


def entries(which: str) -> dict[str, Any]:
    """Each family's ``which`` (a ``module:attr`` field), for the families that set it, in registry order."""
    return {name: entry(name, which) for name, f in FAMILIES.items() if getattr(f, which)}
