"""A cell's speed figures (:class:`Perf`, one per prompt length), and which cells measure none.

A CPU stand-in runs the files of an absent device on this CPU: its fidelity is the artifact's, but its speed
is this CPU running code built for another device (the NPU library at full size: 0.15 tokens/s on 2 cores, where
the library hands every weight to OpenVINO as an input), which says nothing about the target device nor about the
CPU's own artifacts. Its speed runs were most of a stand-in cell's time (about 8 of the int4 NPU library's 22
minutes), so they run only in ``validate.profile=full`` (or with ``validate.stand_in_speed=true``); otherwise the
cell records why its figures are null (``speed_not_measured``). Every fidelity check runs in both profiles.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from pipeline.core.config import ValidateConfig


@dataclass
class Perf:
    """Generation speed for one prompt length: warm-up runs excluded, median of the measured runs (``runs``)."""

    prompt_tokens: int
    new_tokens: int
    ttft_ms: float
    tpot_ms: float
    tokens_per_s: float
    runs: int = 0  # measured runs behind the medians: ``repeats``, or fewer once ``perf_budget_s`` ran out

    @classmethod
    def from_runs(cls, prompt_tokens: int, new_tokens: int, ttft_ms: list[float], tpot_ms: list[float]) -> Perf:
        """Medians of repeated runs; tokens/s is the decode rate, 1000 / TPOT, for every backend alike."""
        tpot = statistics.median(tpot_ms)
        return cls(
            prompt_tokens,
            new_tokens,
            round(statistics.median(ttft_ms), 3),
            round(tpot, 3),
            round(1000.0 / tpot, 2) if tpot > 0 else 0.0,
            len(tpot_ms),
        )


def not_measured(stand_in_for: str | None, cfg: ValidateConfig) -> str | None:
    """Why a cell runs no speed runs (a stand-in for ``stand_in_for`` outside the full profile), or None: it runs them.

    ``stand_in_for`` is the absent device(s) the cell stands in for, None for a cell on its own target device.
    """
    if not stand_in_for or cfg.measures_stand_in_speed:
        return None
    return (
        f"speed not measured: CPU stand-in (a CPU running code built for {stand_in_for}; "
        "validate.profile=full measures it)"
    )
