"""``aipc plan``: which stages of this pipeline fit a machine's RAM, before anything runs.

Every heavy stage checks RAM itself before it writes anything (:mod:`pipeline.core.resources`); this asks the same
rows for every configured stage at once, for this machine or another one (``--os windows --ram-gib 11``: a 16 GB
Windows laptop with a browser open), with each input's size read from ``artifacts/`` where it exists and otherwise
scaled from the checkpoint by what full-size Phi-3-mini measured. A stage that does not fit says what makes it fit.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.artifacts import ARTIFACTS, folder_bytes
from pipeline.core.config import PipelineConfig, load_params
from pipeline.core.errors import fail, size_text
from pipeline.core.refusal import composed_overrides, leave_out_command
from pipeline.core.registry import FAMILIES, entries, entry
from pipeline.core.resources import PlanContext, input_bytes, ram_for

GIB = 2**30
PHI3_MINI_CHECKPOINT = 7.12 * GIB  # bf16 safetensors of Phi-3-mini-4k: the size planned for before the download
OS_NAMES = {"windows": "win32", "linux": "linux", "macos": "darwin"}


def sized(folder: Path, estimate: float, scaled: bool) -> int:
    """An input's bytes: the folder's when it exists (unless ``scaled``: planning another size), else ``estimate``."""
    return input_bytes(folder) if not scaled and folder.is_dir() and folder_bytes(folder) else int(estimate)


def plan_rows(
    params: PipelineConfig, platform: str, checkpoint_bytes: int | None = None
) -> list[tuple[str, int, bool]]:
    """(stage, RAM bytes, optional) for each configured heavy stage; optional: a CPU stand-in, skipped when short.

    ``checkpoint_bytes``: plan for a checkpoint of that size (every artifact scaled from it), not the one in
    ``artifacts/model`` (or, before the download, full-size Phi-3-mini's).
    """
    scaled = checkpoint_bytes is not None
    checkpoint = checkpoint_bytes or sized(ARTIFACTS / "model", PHI3_MINI_CHECKPOINT, scaled)

    def folder(family: str, variant: str, key: str) -> int:  # its share of the checkpoint from the family's plan
        share = entry(family, "plan").folder_share.get(key, 1.0) if FAMILIES[family].plan else 1.0
        return sized(ARTIFACTS / family / variant, share * checkpoint, scaled)

    ctx = PlanContext(checkpoint, platform, folder)
    rows = [("reference", ram_for("reference", params.validate.reference_dtype, checkpoint, platform), False)]
    for name, family_plan in entries("plan").items():  # each family's rows from its package (registry ``plan``)
        rows += family_plan.rows(getattr(params, name), ctx)
    return rows


def fix_for(stage: str, optional: bool, cap_gib: float, composed: list[str]) -> str:
    """What makes a stage that does not fit run anyway, or go (``composed``: this workspace's overrides)."""
    if optional and stage.endswith(" CPU cells"):
        return "its CPU cells are skipped with one line (the f16 weights widened to f32); its GPU cell runs"
    if optional:
        return f"a CPU stand-in: skipped with one line (validate.stand_in_max_ram_gib={cap_gib:g}); the rest runs"
    name, _, variant = stage.partition("@")
    family = next((f.name for f in FAMILIES.values() if name in (f.export_stage, f.validate_stage)), None)
    if family is None:  # a shared stage (the reference, the base IR): nothing to leave out
        return "close other programs"
    return f"close other programs, or leave it out: {leave_out_command(family, variant, composed)}"


def plan_text(params: PipelineConfig, ram_gib: float, os_name: str, checkpoint_bytes: int | None = None) -> str:
    """The table ``aipc plan`` prints: each stage's need, whether it fits ``ram_gib`` of available RAM, the fix."""
    platform = OS_NAMES.get(os_name, sys.platform)
    rows = plan_rows(params, platform, checkpoint_bytes)
    model = f"a {size_text(checkpoint_bytes)} checkpoint" if checkpoint_bytes else f"model {params.model.name}"
    lines = [f"RAM plan for {model} on {os_name} with {ram_gib:g} GiB available (the rows every stage checks itself):"]
    width = max(len(stage) for stage, _, _ in rows)
    misfits, cap = 0, params.validate.stand_in_max_ram_gib
    composed = composed_overrides() if any(need > ram_gib * GIB for _, need, _ in rows) else []
    for stage, need, optional in rows:
        fits = need <= ram_gib * GIB
        misfits += not fits and not optional
        verdict = "fits" if fits else f"does not fit: {fix_for(stage, optional, cap, composed)}"
        lines.append(f"  {stage:<{width}}  {size_text(need):>9}  {verdict}")
    lines.append(f"{misfits} required stage(s) do not fit" if misfits else "every required stage fits")
    return "\n".join(lines)


def cmd_plan(ram_gib: str | None = None, os: str | None = None, checkpoint_gib: str | None = None) -> None:
    """Which stages fit a machine's RAM (default: a 16 GB laptop with 11 GiB free, this OS), and what fixes the rest.

    Args:
        ram_gib: Available RAM to plan for, in GiB (default 11: a 16 GB laptop with a browser open).
        os: Plan for another OS: windows, linux or macos (default: this one).
        checkpoint_gib: Plan for a checkpoint of this size in GiB (7.12: full-size Phi-3-mini) instead of the
            configured model's (artifacts/model, or Phi-3-mini's before the download).
    """
    numbers = {}
    for flag, value, default in (("ram_gib", ram_gib, 11.0), ("checkpoint_gib", checkpoint_gib, 0.0)):
        try:
            numbers[flag] = float(value) if value is not None else default
        except ValueError:
            fail(f"--{flag} {value!r} is not a number: give GiB, e.g. --{flag} 11")
    if os is not None and os not in OS_NAMES:
        fail(f"--os {os!r} is not one of {', '.join(OS_NAMES)}")
    name = os or {v: k for k, v in OS_NAMES.items()}.get(sys.platform, sys.platform)
    size = int(numbers["checkpoint_gib"] * GIB) or None
    print(plan_text(load_params(), numbers["ram_gib"], name, size))
