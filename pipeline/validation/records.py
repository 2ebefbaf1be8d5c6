"""Metrics files: one artifact's cells as ``artifacts/metrics/<artifact>.json`` (a DVC metric), one line per cell.

Every validator (OpenVINO, ONNX, NPU library) writes through :func:`publish_cells`; the cells themselves and
their verdicts are :mod:`pipeline.validation.matrix`.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import folder_bytes, write_json_atomic
from pipeline.core.errors import fail
from pipeline.core.log import say
from pipeline.core.memory import peak_rss_bytes
from pipeline.validation.matrix import Cell


@dataclass
class MetricsRecord:
    """One artifact's metrics file: its cells, plus the first cell that ran copied to the top level.

    The top-level copy (``headline``) is what ``dvc metrics diff``, ``dvc exp show`` and ``aipc sweep`` compare
    between runs; ``cells`` holds every device, keyed by column (``CPU``, ``GPU``, ``NPU``, ``DML``, ``CPU stand-in``).
    """

    artifact: str
    family: str
    weight_format: str | None
    size_mb: float | None
    thresholds: dict[str, float | None]
    cells: dict[str, Cell]

    @property
    def headline(self) -> Cell | None:
        """The first cell that ran (config order, stand-in last); ``None`` when every cell was skipped."""
        return next((c for c in self.cells.values() if c.status != "skipped"), None)

    @property
    def status(self) -> str:
        """``failed`` if any cell failed, ``passed`` if one passed, else ``skipped``."""
        states = {c.status for c in self.cells.values()}
        return "failed" if "failed" in states else "passed" if "passed" in states else "skipped"

    @property
    def problems(self) -> list[str]:
        """Every failed cell's problems, prefixed with its column; a failed fidelity's kind first (costly or broken)."""
        return [f"{c.column}: {p}" for c in self.cells.values() for p in explained(c)]

    def as_dict(self) -> dict[str, Any]:
        """The JSON written to ``artifacts/metrics/<artifact>.json``."""
        head = self.headline
        shown = head or next(iter(self.cells.values()))  # all skipped: the first cell, with its reason
        top = {k: v for k, v in asdict(shown).items() if k not in ("column", "status", "perf")}
        status = self.status
        return {
            "artifact": self.artifact,
            "family": self.family,
            "weight_format": self.weight_format,
            "size_mb": self.size_mb,
            **top,
            "headline_cell": head.column if head else None,
            "status": status,
            "passed": None if status == "skipped" else status == "passed",
            "problems": self.problems,
            "thresholds": self.thresholds,
            "cells": {k: asdict(c) for k, c in self.cells.items()},
        }


def explained(cell: Cell) -> list[str]:
    """``cell``'s problems, led by the line that says whether a failed fidelity is costly or broken (recipe_cost)."""
    return [cell.recipe_cost["explanation"], *cell.problems] if cell.recipe_cost else list(cell.problems)


def cell_line(cell: Cell) -> str:
    """One progress line for a cell: its verdict and both fidelity figures."""
    if cell.status == "skipped" or cell.top1_agreement is None:  # skipped, or could not run
        return f"{cell.status}: {cell.reason}"
    parts = [f"{cell.status}: {cell.label}: artifact (f32) top-1 {cell.top1_agreement:.3f}, KL {cell.mean_kl:.2g}"]
    if cell.device_numerics and cell.device_top1_agreement is not None:
        parts.append(
            f"device ({cell.device_numerics['label']}) top-1 {cell.device_top1_agreement:.3f}, "
            f"KL {cell.device_mean_kl:.2g}"
        )
    if cell.long_context:
        parts.append(f"long context min top-1 {min(r['top1_agreement'] for r in cell.long_context):.3f}")
    if cell.greedy_exact_match is not None:
        speed = "speed not measured" if cell.tokens_per_s is None else f"{cell.tokens_per_s} tok/s"
        parts.append(f"exact {cell.greedy_exact_match:.2f}, {speed}, peak RSS {cell.peak_rss_mb} MB")
    return "; ".join(parts)


def publish(record: MetricsRecord, path: Path) -> dict[str, Any]:
    """Write one artifact's metrics, say one line per cell, and fail (one line) if any cell failed.

    Under ``dvc repro`` (``DVC_STAGE`` set) a failed cell is recorded and the stage succeeds, so the report is still
    written; the ``verdict`` stage then fails the run with one line. Run alone (``aipc validate``) it fails here.
    """
    data = record.as_dict()
    write_json_atomic(path, data)
    for cell in record.cells.values():
        say(f"[{record.artifact} @ {cell.column}] {cell_line(cell)}")
    if record.problems:
        message = f"[{record.artifact}] validation failed: {'; '.join(record.problems)}"
        if os.environ.get("DVC_STAGE"):
            say(f"{message} (recorded in {path}; the report is still written, then `verdict` fails the run)")
        else:
            fail(message)
    return data


def publish_cells(
    artifact: str,
    family: str,
    weight_format: str | None,
    folder: Path | None,
    thresholds: dict[str, float | None],
    cells: dict[str, Cell],
    metrics_dir: Path,
    profile: str | None = None,
) -> dict[str, Any]:
    """:func:`publish` the cells of one artifact to ``<metrics_dir>/<artifact>.json``, its size read from ``folder``.

    ``profile`` (``validate.profile``) is written into every cell that gave a verdict (not the skipped ones).
    """
    for cell in cells.values():
        cell.profile = None if cell.status == "skipped" else profile
    size_mb = round(folder_bytes(folder) / 2**20, 3) if folder is not None else None
    record = MetricsRecord(artifact, family, weight_format, size_mb, thresholds, cells)
    return publish(record, Path(metrics_dir) / f"{artifact}.json")


SAMPLE_EVERY_S = 0.02


class _PeakSampler(threading.Thread):
    """Sample this process's RSS until stopped, keep the max (one cell's peak)."""

    def __init__(self) -> None:
        super().__init__(name="aipc-peak-rss", daemon=True)
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.peak = max(self.peak, process.memory_info().rss)
            if self.halt.wait(SAMPLE_EVERY_S):
                return


_SAMPLER: _PeakSampler | None = None


def reset_peak_rss() -> bool:
    """Start measuring the next cell's peak RSS alone: a thread samples RSS every :data:`SAMPLE_EVERY_S` seconds.

    The process's own high-water mark is left alone (Linux could reset ``VmHWM`` through ``/proc/self/clear_refs``,
    but then ``/usr/bin/time``, ``ru_maxrss`` and every outside tool would see only the last cell's peak, not the
    stage's). Returns whether the peak is exact: never, a spike shorter than the interval can be missed.
    """
    global _SAMPLER
    if _SAMPLER is not None:
        _SAMPLER.halt.set()
    _SAMPLER = _PeakSampler()
    _SAMPLER.start()
    return False


def peak_rss_mb() -> float:
    """Peak RSS since :func:`reset_peak_rss` (sampled); without a reset, the process's own peak."""
    if _SAMPLER is not None:
        import psutil

        return round(max(_SAMPLER.peak, psutil.Process().memory_info().rss) / 2**20, 1)
    try:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match:
            return round(int(match.group(1)) / 1024, 1)
    except OSError:
        pass
    return round(peak_rss_bytes() / 2**20, 1)
