"""How long the validations and the reference took at full size: the rows the time estimates scale (:mod:`.eta`).

Each row is one stage's measured wall time in a whole default pipeline on the full-size Phi-3-mini-shaped random
bf16 checkpoint (:data:`FULL_SIZE_GIB`; ``python benchmarks/full_pipeline.py --drop-source``), the number of
matrix cells that ran in it (the others were skipped in seconds: an absent GPU, an NPU IR too large for NPUW on the
CPU, a stand-in over ``validate.stand_in_max_ram_gib``) and its source (:data:`SOURCES`). The benchmark times whole
stages, not cells, so a cell's share is the stage's time over the cells that ran, after the start-up
(:data:`START_UP_S`, the same stages on the tiny model).

Profiles: the rows are the ``quick`` profile's (the default) where the data allows: the run of 2026-12-07 was
``quick``. ``speed_s`` is what ``validate.profile=full`` adds per CPU stand-in cell (its speed runs, the runs of
2026-12-02 before the profile existed; docs/validation.md "Profiles"). Where a row was measured only with those
speed runs (the DML stand-in, Windows ML), it is an upper bound for ``quick``; rows without ``speed_s`` under the
``full`` profile leave the stand-ins' speed runs out. Variants never run at full size (``validate_onnx@dml_fp16``
and ``validate_npu_lib@fp16``: their stand-ins are over the RAM cap) take the stage's longest cell.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL_SIZE_GIB = 7.12  # the checkpoint the rows were measured on (Phi-3-mini-4k shapes, bf16)


@dataclass(frozen=True)
class Source:
    """Where a row was measured: a short label for the console and the full description."""

    machine: str
    detail: str


SOURCES: dict[str, Source] = {
    "2026-12-07": Source(
        "2 AMD EPYC cores, contended",
        "benchmarks/results/full_pipeline.json: commit a941215, 2026-12-07 13:44, AMD EPYC (AVX512-BF16, no AMX), "
        "2 cores, 23.5 GiB, the quick profile, a CI rehearsal beside it for most of the run (105.6 min)",
    ),
    "2026-12-07-forced": Source(
        "2 AMD EPYC cores, idle",
        "the NPU library's validation stage run alone on the full-size artifacts of the 2026-12-07 pipeline, "
        "idle, 2026-12-07 22:40, AMD EPYC, 2 cores, the quick profile with the stand-in's answers teacher-forced: the "
        "worker's 80.5 s (int4) and 55.9 s (int8) plus the stage's start; a failed cell adds its recipe-cost check",
    ),
    "2026-12-02": Source(
        "2 Intel Xeon cores, contended",
        "benchmarks/results/full_pipeline-2026-12-02.json: commit 5916e13, 2026-12-02 06:09, Intel Xeon (AMX, "
        "AVX512-FP16), 2 cores, before validate.profile (stand-ins ran their speed runs), a CI rehearsal beside it",
    ),
    "2026-12-02-13094e5": Source(
        "2 Intel Xeon cores, contended",
        "benchmarks/results/full_pipeline.json at commit dbb1c52: commit 13094e5, 2026-12-02 11:46, Intel Xeon, "
        "2 cores, before validate.profile, memory probes and tests beside it after its first 48 minutes",
    ),
    "2026-12-02-dml": Source(
        "2 AMD EPYC cores, contended",
        "benchmarks/results/full_pipeline.json at commit 8ff8d55: commit ef73321, 2026-12-02 01:36, AMD EPYC, "
        "2 cores, before validate.profile (the DML stand-in ran, speed runs included), a test suite beside it",
    ),
}


@dataclass(frozen=True)
class Row:
    """One stage's measured full-size wall time (s), the cells that ran in it, and its :data:`SOURCES` key."""

    seconds: float
    cells: int
    source: str
    speed_s: float = 0.0  # added per CPU stand-in cell under validate.profile=full (its speed runs; the NPU
    # library's also its answers decoded whole, which quick checks in one teacher-forced pass)
    with_speed: bool = False  # measured with the stand-in's speed runs: the full profile's time, high for quick


# stage -> variant (the reference dtype): the shared stages' rows; each family keeps its own in its package as
# {stage: (start-up s, {variant: Row})} (its registry line's ``times``: :func:`stage_times` merges them in)
STAGE_TIME: dict[str, dict[str, Row]] = {
    # no cells: the steps below (REFERENCE_STEPS)
    "reference": {"float32": Row(773.0, 0, "2026-12-07")},
}

# The reference's steps and their shares of its time: the idle run of 2026-12-02 (303 s: teacher-forced 20 s, the
# 4096-token window 136 s, greedy 136 s, the rest loading; docs/benchmarks.md "The whole run again")
REFERENCE_STEPS: dict[str, float] = {
    "loading": 11 / 303,
    "teacher-forced": 20 / 303,
    "long-context windows": 136 / 303,
    "greedy answers": 136 / 303,
}

# Start-up of each stage, its time on the tiny model (19 MB), where the cells cost next to nothing: imports,
# compiling, the NPU library's worker environment. benchmarks/results/full_pipeline-tiny.json (2026-12-01, commit
# 01d8e42, AMD EPYC, 2 cores, load 7-10): the fastest variant of each stage; a family's are beside its rows.
START_UP_S: dict[str, float] = {
    "reference": 34.5,
}


def stage_times() -> tuple[dict[str, dict[str, Row]], dict[str, float]]:
    """:data:`STAGE_TIME` and :data:`START_UP_S` with the rows each family keeps in its package (field ``times``)."""
    from pipeline.core.registry import entries

    times, start_up = dict(STAGE_TIME), dict(START_UP_S)
    for rows in entries("times").values():
        for stage, (start, row) in rows.items():
            times[stage], start_up[stage] = row, start
    return times, start_up
