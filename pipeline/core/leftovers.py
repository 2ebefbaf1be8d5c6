"""The leftovers of killed stages anywhere under ``artifacts/``, removed at every stage start.

A stage writes its output through a temporary sibling that carries its pid (:mod:`pipeline.core.artifacts`);
a killed stage leaves it behind. Every family stage (:func:`pipeline.core.stage.run_stage`) and the reference
and base-IR stages call :func:`sweep_leftovers` first, so leftovers (gigabytes at full size) do not outlast the
next successful run, whichever output it writes. (The download stage, which the reference follows in every run,
sweeps only beside its own output.)
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.artifacts import _STAGING, ARTIFACTS, sweep_stale


def sweep_leftovers(root: Path = ARTIFACTS) -> list[str]:
    """Remove the ``.tmp-*`` / ``.old-*`` leftovers of dead processes anywhere under ``root``; return their names.

    Each one goes through :func:`pipeline.core.artifacts.sweep_stale` for the output it belongs to, so those of
    running processes stay, and a ``.old-*`` whose output is missing is put back.
    """
    finals: set[Path] = set()
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            if match := _STAGING.fullmatch(name):
                finals.add(Path(folder) / match["name"])
        dirs[:] = [d for d in dirs if not _STAGING.fullmatch(d)]  # never into a leftover itself
    return [name for final in sorted(finals) for name in sweep_stale(final)]
