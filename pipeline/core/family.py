"""What an export family supplies, and the one export skeleton every family runs (issue 31).

Every export stage is the same seven steps: read the source's manifest, check the request (refusals and config
errors before any folder exists), check RAM and disk, open the staging folder, build into it, inspect what was built
(the stage fails when it does not match the request), and write the manifest. :func:`export` owns those steps, as
Olive's ``Pass.run`` owns the steps around each pass's ``_run_for_config``; a family supplies an :class:`Exporter`:
what is really its own (its checks, its RAM and disk needs, how it builds, what it inspects, its manifest fields).
Each family's ``export`` module holds ``EXPORTER: Exporter[...] = ...``, so mypy checks it against the Protocol.

The validate side is :mod:`pipeline.validation.template` (``Validator``): the core never imports the validation
layer, whose cells and measurements a validator's steps take and return.

Refusals (:class:`pipeline.core.refusal.Refused`, the model's shape) pass through :func:`export`: the stage runner
records them (:func:`pipeline.core.stage.run_stage`). A machine that lacks a tool the family needs
(:class:`NotBuiltHere`, the NPU library's environment) is recorded here as a manifest with ``status: skipped``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pipeline.core.artifacts import staged_dir
from pipeline.core.log import say
from pipeline.core.manifest import read_manifest, write_manifest
from pipeline.core.resources import check_resources, check_stage_ram
from pipeline.core.workspace import Workspace

CfgT = TypeVar("CfgT")


@dataclass
class ExportJob(Generic[CfgT]):
    """One variant's export as it goes through the steps: the request, the source, what each step hands the next."""

    name: str  # the variant (key under the family's section of params.yaml)
    cfg: CfgT  # its config
    ws: Workspace
    out: Path  # the artifact folder, ``ws.root(family) / name``
    source: dict[str, Any] = field(default_factory=dict)  # the checkpoint's manifest ({}: the family reads its own)
    model_config: dict[str, Any] = field(default_factory=dict)  # the checkpoint's config.json
    facts: dict[str, Any] = field(default_factory=dict)  # what a step decided or measured for a later one

    @property
    def model_dir(self) -> Path:
        """The checkpoint folder."""
        return self.ws.model_dir

    def source_fields(self, keys: tuple[str, ...] = ("model", "source", "repo_id", "revision", "license")) -> dict:
        """The manifest's ``source`` record: the checkpoint's name, revision and licence."""
        return {k: self.source.get(k) for k in keys}

    def source_hashes(self) -> dict[str, str]:
        """The manifest's ``source_files_sha256``: every checkpoint file's hash."""
        return {k: v["sha256"] for k, v in self.source["files"].items()}


@dataclass(frozen=True)
class Needs:
    """What a build needs of this machine, checked before anything is written (:mod:`pipeline.core.resources`)."""

    what: str  # the step in the one-line error: "[int4] building int4 ONNX"
    ram_bytes: int = 0
    disk_bytes: int = 0  # under the family's artifact root
    ram_row: tuple[str, str] | None = None  # a measured STAGE_RAM (stage, variant) row, checked first


class NotBuiltHere(Exception):
    """This machine lacks a tool the family needs: the variant is recorded as ``status: skipped`` (exit 0)."""

    def __init__(self, reason: str, tag: str, fields: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason, self.tag, self.fields = reason, tag, fields  # tag: how the stage's lines name the variant


@runtime_checkable
class Exporter(Protocol[CfgT]):
    """One family's export steps; :func:`export` runs them in order around the staging folder."""

    @property
    def family(self) -> str:
        """The registry name: the artifacts go to ``ws.root(family)``."""
        ...

    @property
    def stage(self) -> str:
        """The dvc.yaml stage, the manifest's ``stage``."""
        ...

    def check(self, job: ExportJob[CfgT]) -> None:
        """Refuse or reject the request before any folder exists (``refuse``, ``ConfigError``, :class:`NotBuiltHere`);
        record in ``job.facts`` what the later steps need."""
        ...

    def needs(self, job: ExportJob[CfgT]) -> Needs | None:
        """RAM and disk the build needs (None: nothing worth checking)."""
        ...

    def build(self, job: ExportJob[CfgT], tmp: Path) -> None:
        """Write the artifact into the staging folder ``tmp`` (its timings into ``job.facts``)."""
        ...

    def inspect(self, job: ExportJob[CfgT], tmp: Path) -> dict[str, Any]:
        """Read back what was built; fail in one line when it does not match the request. Returns the summary."""
        ...

    def manifest_fields(self, job: ExportJob[CfgT], summary: dict[str, Any]) -> dict[str, Any]:
        """The manifest's fields after ``stage`` and ``variant``, in the order they are written (``format`` first)."""
        ...

    def ready(self, job: ExportJob[CfgT], manifest: dict[str, Any]) -> str:
        """The stage's last line: where the artifact is."""
        ...


def read_checkpoint(job: ExportJob[Any]) -> None:
    """Fill ``job.source`` and ``job.model_config`` from the checkpoint (its manifest names a missing download)."""
    job.source = read_manifest(job.model_dir)
    job.model_config = json.loads((Path(job.model_dir) / "config.json").read_text(encoding="utf-8"))


def check_needs(needs: Needs | None, job: ExportJob[Any]) -> None:
    """Stop in one line when the machine lacks the RAM or disk ``needs`` names (before anything is written)."""
    if needs is None:
        return
    if needs.ram_row:
        check_stage_ram(*needs.ram_row, job.model_dir, needs.what)
    check_resources(needs.what, needs.ram_bytes, needs.disk_bytes, job.out.parent)


def export(
    exporter: Exporter[CfgT], name: str, cfg: CfgT, ws: Workspace, *, from_checkpoint: bool = True
) -> dict[str, Any]:
    """Run ``exporter``'s steps for variant ``name``: the one export skeleton of every family.

    Args:
        exporter: The family's steps.
        name: Variant name (the key under the family's section of params.yaml).
        cfg: Its config.
        ws: Where the checkpoint is and the artifacts go (``ws.root(exporter.family) / name``).
        from_checkpoint: Read the checkpoint's manifest and config.json first; ``False`` for a family whose
            source is another artifact (Windows ML wraps an IR: its ``check`` reads and verifies that).

    Returns:
        The manifest written into the artifact folder (plus its run-only fields), or the ``skipped`` one.
    """
    job: ExportJob[CfgT] = ExportJob(name, cfg, ws, ws.root(exporter.family) / name)
    if from_checkpoint:
        read_checkpoint(job)
    try:
        exporter.check(job)
    except NotBuiltHere as skip:
        return write_skipped(exporter.stage, job, skip)
    check_needs(exporter.needs(job), job)
    with staged_dir(job.out) as tmp:  # the folder appears whole or not at all
        exporter.build(job, tmp)
        summary = exporter.inspect(job, tmp)
        fields = exporter.manifest_fields(job, summary)
        manifest = write_manifest(tmp, stage=exporter.stage, variant=name, **fields)
    say(exporter.ready(job, manifest))
    return manifest


def write_skipped(stage: str, job: ExportJob[Any], skip: NotBuiltHere) -> dict[str, Any]:
    """Record a variant this machine cannot build: a manifest with ``status: skipped`` and the reason."""
    with staged_dir(job.out) as tmp:
        manifest = write_manifest(
            tmp, stage=stage, variant=job.name, status="skipped", reason=skip.reason, **skip.fields
        )
    say(f"{skip.tag} skipped: {skip.reason}")
    return manifest
