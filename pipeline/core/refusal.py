"""A variant that cannot be built from this model is recorded, not left as a hole in the report.

Some exports refuse because of the model's shape, not the machine: onnxruntime's GroupQueryAttention cannot run a
Phi-4-mini-style partial rotary on the CPU, and a Windows ML package cannot wrap an IR that was refused. The same
inputs give the same refusal, so it is a result: :func:`record_refusal` writes ``refused.json`` as the stage's
output folder (exit 0), the validate stage turns it into a ``refused`` metrics record, and ``report`` and
``verdict`` still run. The row and the verdict say why and how to leave the variant out (``aipc compose ...
~onnx.cpu_int4``), never to run it again. Machine-side failures (RAM, disk, a crash) still stop the stage: a rerun
can fix those.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline.core.artifacts import ARTIFACTS, staged_dir, write_json_atomic
from pipeline.core.errors import StageError
from pipeline.core.log import say

if TYPE_CHECKING:
    from pipeline.core.registry import Family

REFUSED = "refused.json"  # the whole output folder of an export that refused
BARE_WORD = re.compile(r"[\w./:=~+-]+")  # an argument that means the same unquoted in cmd, PowerShell and bash


class Refused(StageError):
    """This variant cannot be built from this model (its shape, not this machine); the message says why."""


def refuse(message: str) -> NoReturn:
    """Raise :class:`Refused` with ``message`` (one line: why this model cannot take this variant)."""
    raise Refused(message)


def read_refusal(folder: Path) -> dict[str, Any] | None:
    """The refusal recorded in an export's output folder, or None when the folder holds an artifact."""
    path = Path(folder) / REFUSED
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"reason": f"{path} cannot be read", "leave_out": ""}
    return record if isinstance(record, dict) else {"reason": f"{path} is not a refusal record", "leave_out": ""}


def check_not_refused(folder: Path) -> None:
    """Raise :class:`Refused` when ``folder`` is a refused export (a stage that builds on it refuses too)."""
    record = read_refusal(folder)
    if record is not None:
        refuse(f"{Path(folder).as_posix()} was refused at export: {record.get('reason') or 'no reason recorded'}")


def composed_overrides() -> list[str]:
    """The overrides that give back this workspace's ``params.yaml``
    (:func:`pipeline.core.composition.workspace_overrides`); ``...`` stands for them where they cannot be found."""
    from pipeline.core.composition import workspace_overrides

    try:
        return workspace_overrides()
    except StageError:
        return ["..."]


def leave_out_command(family: str, variant: str, composed: list[str] | None = None) -> str:
    """``aipc compose <this workspace's overrides> ~<family>.<variant>``: the same pipeline without the variant.

    ``composed``: those overrides when already known (:func:`composed_overrides`, which composes conf/ several times).
    """
    words = ["aipc", "compose", *(composed if composed is not None else composed_overrides()), f"~{family}.{variant}"]
    return " ".join(shell_word(w) for w in words)


def shell_word(arg: str) -> str:
    """``arg`` as it is pasted into cmd, PowerShell or bash: bare when it can be, else in double quotes.

    A Hydra-quoted value (``model.local_path='D:/my models/phi3'``) keeps its single quotes inside the double ones:
    each shell hands them on, and Hydra reads the value between them.
    """
    return arg if BARE_WORD.fullmatch(arg) else f'"{arg}"'


def record_refusal(family: Family, variant: str, reason: str) -> dict[str, Any]:
    """Write ``refused.json`` as the whole output of ``<family>/<variant>``'s export (the stage then exits 0)."""
    record = {
        "artifact": family.artifact(variant),
        "stage": f"{family.export_stage}@{variant}",
        "reason": reason,
        "leave_out": leave_out_command(family.name, variant),
    }
    with staged_dir(family.artifact_root / variant) as tmp:
        write_json_atomic(tmp / REFUSED, record)
    say(f"refused: {reason}")
    say(f"{record['artifact']} gets a 'refused' row in the report; to leave it out: {record['leave_out']}")
    return record


def record_refused_metrics(family: Family, variant: str, reason: str) -> dict[str, Any]:
    """The validate stage's metrics for a refused export: one ``refused`` cell with why and how to leave it out."""
    record = read_refusal(family.artifact_root / variant) or {}
    reason = record.get("reason") or reason  # the export's own words, not "<folder> was refused at export: ..."
    metrics = {
        "artifact": family.artifact(variant),
        "refused": True,
        "cells": {
            "-": {
                "status": "refused",
                "reason": reason,
                "leave_out": record.get("leave_out") or leave_out_command(family.name, variant),
            }
        },
    }
    write_json_atomic(ARTIFACTS / "metrics" / f"{family.artifact(variant)}.json", metrics)
    say(f"{family.artifact(variant)}: not validated, {reason}")
    return metrics
