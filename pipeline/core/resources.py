"""RAM and disk checks that stop a heavy stage, in one line, before it writes anything.

:func:`check_resources` compares what a step needs with what the machine has; :func:`check_stage_ram` takes the
need from :func:`stage_rows`, the measured peak of every heavy stage other than the OpenVINO exports (whose table,
lean and plain, is :data:`pipeline.openvino.lean.RAM_NEEDS`): the shared stages' :data:`STAGE_RAM` and the rows each
family keeps in its package.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import StageError, fail, size_text
from pipeline.core.memory import weight_files
from pipeline.core.ram_windows import WINDOWS_RAM

ASSUME_RAM_ENV = "AIPC_ASSUME_RAM_GB"  # GiB to take as available instead of asking the OS (tests; "would it fit?")


def check_resources(what: str, ram_bytes: int, disk_bytes: int, disk_at: Path) -> None:
    """Stop with one line when available RAM or free disk is below what ``what`` needs.

    ``AIPC_ASSUME_RAM_GB=11`` checks against 11 GiB of available RAM instead of what the OS reports: what a
    16 GB laptop with a browser open would refuse (the tests fake a small machine with it).
    The disk need is also recorded (:func:`pipeline.core.artifacts.expect_disk`), so a disk that fills later
    anyway (another writer, ``AIPC_SKIP_RESOURCE_CHECK=1``) is reported with the size needed.
    """
    import psutil

    from pipeline.core.artifacts import expect_disk

    expect_disk(Path(disk_at), disk_bytes)
    if os.environ.get("AIPC_SKIP_RESOURCE_CHECK") == "1":
        return
    assumed = os.environ.get(ASSUME_RAM_ENV)
    available = int(float(assumed) * 2**30) if assumed else psutil.virtual_memory().available
    if available < ram_bytes:
        fail(
            f"{what} needs about {size_text(ram_bytes)} of RAM but {size_text(available)} is available: "
            f"free {size_text(ram_bytes - available)} (close other programs) or set AIPC_SKIP_RESOURCE_CHECK=1"
        )
    disk_at = Path(disk_at)
    while not disk_at.exists():
        disk_at = disk_at.parent
    free = shutil.disk_usage(disk_at).free
    if free < disk_bytes:
        fail(
            f"{what} needs about {size_text(disk_bytes)} of disk under {disk_at} but {size_text(free)} is free: "
            f"free {size_text(disk_bytes - free)} or set AIPC_SKIP_RESOURCE_CHECK=1"
        )


def needs_of(table: dict[str, tuple[float, float, float]], key: str, model_dir: Path) -> tuple[int, int]:
    """(RAM, disk) in bytes from a table of (RAM share of the checkpoint, fixed RAM GiB, disk share)."""
    size = sum(f.stat().st_size for f in weight_files(model_dir)) or 1
    share, fixed, disk = table.get(key, max(table.values()))
    return int(share * size + fixed * 2**30), int(disk * size)


# Peak RSS of the heavy stages on the full-size Phi-3-mini-shaped checkpoint (random bf16, 7.12 GiB; issue 20's
# `dvc repro`, Linux, 2 contended cores, sampled every 2 s), as (share of the stage's input, fixed GiB): the input
# is the checkpoint for the reference and the exports, the artifact folder for a validation. The core keeps the
# shared stages' rows; each family keeps its own in its package (its registry line's ``ram``: :func:`stage_rows`),
# ``<stage>_lean`` where Linux hands mapped pages back and ``<stage>_windows`` for Windows' private memory.
STAGE_RAM: dict[str, dict[str, tuple[float, float]]] = {
    # float32 compute from the mapped 16-bit weights (pipeline.validation.upcast): benchmarks/reference_memory.py
    "reference": {"float32": (1.1, 0.3), "bfloat16": (1.1, 0.3), "float16": (1.1, 0.3)},
}


def input_bytes(folder: Path) -> int:
    """Bytes a stage loads from ``folder``: a checkpoint's weight files, or every file of an artifact folder."""
    from pipeline.core.artifacts import folder_bytes

    checkpoint = list(Path(folder).glob("*.safetensors"))
    return sum(f.stat().st_size for f in checkpoint) if checkpoint else folder_bytes(folder)


def stage_ram(stage: str, variant: str, input_dir: Path) -> int:
    """Bytes of RAM ``stage`` (a :func:`stage_rows` key) needs for ``variant``, scaled to ``input_dir``'s size."""
    return ram_for(stage, variant, input_bytes(input_dir), sys.platform)


def ram_for(stage: str, variant: str, size: int, platform: str) -> int:
    """Bytes of RAM ``stage`` needs for ``variant`` on ``platform`` (``sys.platform``), its input ``size`` bytes.

    An unknown variant takes the stage's largest share, so a new variant is checked, conservatively. A stage
    with a ``<stage>_lean`` row uses it where mapped pages can be handed back (Linux ``madvise``); on Windows a
    stage with a ``<stage>_windows`` row uses that (measured private memory: :mod:`pipeline.core.ram_windows`).
    """
    rows = stage_rows()
    lean = f"{stage}_lean" in rows and platform.startswith("linux")
    table = rows[f"{stage}_lean" if lean else stage]
    if platform == "win32" and f"{stage}_windows" in rows:
        table = rows[f"{stage}_windows"]
    share, fixed = table.get(variant, max(table.values()))
    return int(share * size + fixed * 2**30)


def stage_rows() -> dict[str, dict[str, tuple[float, float]]]:
    """:data:`STAGE_RAM` and the Windows rows (``<stage>_windows``) with those each family keeps in its package
    (its registry line's ``ram``)."""
    from pipeline.core.registry import entries

    families = {stage: row for rows in entries("ram").values() for stage, row in rows.items()}
    return {**STAGE_RAM, **{f"{stage}_windows": row for stage, row in WINDOWS_RAM.items()}, **families}


@dataclass(frozen=True)
class PlanContext:
    """What ``aipc plan`` sizes a family's rows from (:mod:`pipeline.cli.plan` builds it)."""

    checkpoint: int  # bytes of the checkpoint planned for
    platform: str  # ``sys.platform`` of the machine planned for
    folder: Callable[[str, str, str], int]  # (family, variant, its folder_share key) -> bytes of that artifact

    def ram(self, stage: str, variant: str, size: int) -> int:
        """:func:`ram_for` on the planned platform."""
        return ram_for(stage, variant, size, self.platform)


@dataclass(frozen=True)
class FamilyPlan:
    """A family's part of ``aipc plan`` (its registry line's ``plan``, in its package)."""

    # an artifact folder's size over its checkpoint's, measured on full-size Phi-3-mini, by a key its rows choose
    folder_share: dict[str, float]
    # (the family's params section, the context) -> (stage, RAM bytes, optional: a CPU stand-in skipped when short)
    rows: Callable[[dict[str, Any], PlanContext], list[tuple[str, int, bool]]]


def check_stage_ram(stage: str, variant: str, input_dir: Path, what: str | None = None) -> None:
    """Stop ``stage`` (a :func:`stage_rows` key) in one line, before it writes anything, if RAM is short.

    Args:
        stage: The stage, e.g. ``validate_onnx``.
        variant: Its variant (weight format, ``<provider>_<precision>``, or the reference's dtype).
        input_dir: The checkpoint (reference, exports) or the artifact folder (validations) it loads.
        what: What the message calls the step (default ``<stage>@<variant>``).
    """
    check_resources(what or f"{stage}@{variant}", stage_ram(stage, variant, input_dir), 0, Path(input_dir))


RAM_SKIP = "not run here"  # how a cell's skip reason starts when RAM, not an absent device, is why


def skip_for_ram(what: str, need: int, cap_gib: float, loads: Path) -> str | None:
    """Why an optional cell (a CPU stand-in, an emulated precision) is not run here, or None when it fits.

    Optional cells are skipped, never fatal: when ``need`` is over ``cap_gib`` (``validate.stand_in_max_ram_gib``;
    0 = no cap), so that they never take a 16 GB laptop past half its memory, and when RAM is short. ``loads``: the
    artifact the cell reads.
    """
    if cap_gib and need > cap_gib * 2**30:
        return (
            f"{RAM_SKIP}: {what} needs about {size_text(need)} of RAM, over "
            f"validate.stand_in_max_ram_gib={cap_gib:g} GiB (raise it to run it anyway)"
        )
    try:
        check_resources(what, need, 0, loads)
    except StageError as err:
        return f"{RAM_SKIP}: {err}"
    return None


def fit_cell_ram(stage: str, variant: str, input_dir: Path, stand_in: bool, cap_gib: float) -> str | None:
    """Why a validation cell of ``stage`` is not run here for RAM, or None when it fits.

    A cell on its target device that cannot fit stops the stage in one line (:func:`check_stage_ram`). A CPU
    stand-in runs only because the target device is absent, so it is skipped instead (:func:`skip_for_ram`);
    ``dvc repro`` goes on without it.
    """
    if not stand_in:
        check_stage_ram(stage, variant, input_dir)
        return None
    need = stage_ram(stage, variant, input_dir)
    return skip_for_ram(f"the CPU stand-in of {stage}@{variant}", need, cap_gib, input_dir)
