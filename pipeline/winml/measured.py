"""The Windows ML family's measured rows: its validation's RAM (registry field ``ram``) and time (``times``).

Kept in the family's package so that the core's tables (:mod:`pipeline.core.resources`,
:mod:`pipeline.core.durations`) name no family; they merge these rows in when they look a stage up.
"""

from __future__ import annotations

from pipeline.core.durations import Row

# Peak RSS as (share of the wrapped IR, fixed GiB), read by pipeline.core.resources.ram_for: the package's IR
# compiled by the OpenVINO EP (no page trimming through ONNX Runtime), then once more with f32 pinned for teacher
# forcing after the first is freed. The whole run of 2026-12-02 (Intel Xeon, so the plugin offered the CPU): npu
# 4.81 GiB in 271 s (1.93 GiB NPU IR), gpu 6.04 GiB in 338 s (2.59 GiB int4 IR)
STAGE_RAM = {"validate_winml": {"npu": (2.4, 0.3), "gpu": (2.3, 0.3), "cpu": (2.3, 0.3)}}
# (start-up s, rows), read by pipeline.core.eta: start-up is validate's (the run on the tiny model skipped the
# cells). One cell each, the npu and gpu packages overridden to the CPU (no Intel NPU/GPU there): 270.6 and 338.0 s
# with ~2 min of speed runs each, taken off here; cpu: its own device, speed runs in every profile
STAGE_TIME = {
    "validate_winml": (
        16.0,
        {
            "npu": Row(150.6, 1, "2026-12-02", speed_s=120),
            "gpu": Row(218.0, 1, "2026-12-02", speed_s=120),
            "cpu": Row(320.8, 1, "2026-12-02-13094e5"),
        },
    )
}
