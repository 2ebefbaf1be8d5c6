"""The OpenVINO IR and NPU families' measured rows: their validations' RAM (registry field ``ram``) and time
(``times``), read by :mod:`pipeline.core.resources` and :mod:`pipeline.core.eta` through the registry.

RAM rows are (share of the stage's input, fixed GiB): the input is the artifact folder, and a validation's share
is its peak over the IR's size from Phi-3-mini's shapes (int4 2.6, int8 3.6, fp16 7.1, NPU int4 1.9 GiB), rounded
up. A ``<stage>_lean`` row is used on Linux, where the mapped pages are handed back; a ``<stage>_windows`` row on
Windows (measured private memory: :mod:`pipeline.core.ram_windows`). The exports' rows are :data:`.lean.RAM_NEEDS`.
"""

from __future__ import annotations

from pipeline.core.durations import Row
from pipeline.core.ram_windows import WINDOWS_FIXED_GIB

# Linux, the IR's mapped pages handed back once the plugin has packed them (openvino/validate.py), the artifact
# fidelity pass run without the IR's KV-cache state (openvino/teacher_forced.py) and, for fp16, in runs of layers
# (openvino/pieces.py: at f32 the plugin widens f16 weights, 14.4 GiB whole), emulation cells over
# validate.stand_in_max_ram_gib skipped. The whole default run, `benchmarks/full_pipeline.py --work DIR
# --drop-source` (2026-12-02, Xeon with AMX, 2 cores, a CI rehearsal beside it): int4 6.19, int8 7.02, fp16 7.62
# GiB for IRs of 2.59 / 3.57 / 7.13 GiB (fp16 was 17.15 with the f32 pass whole). The fp16 cell's peak is now the
# bf16 copy of its weights that the generation and the device-default pass hold. Off Linux (not measured there)
# the mapped pages stay: about 0.8x the IR more (1.97 -> 1.10 GB on a 1.1 GB IR). fp16_on_f32_cpu: the same
# cell where the CPU computes in f32 by default (AVX2 laptops): the plugin widens the f16 weights to f32 for the
# generation too, 14.4 GiB for the 7.1 GiB IR (measured on this Xeon by pinning f32: compile and a 512-token
# window, 2026-12-02)
OPENVINO_RAM: dict[str, dict[str, tuple[float, float]]] = {
    "validate_lean": {
        "int4": (2.3, 0.3),
        "int8": (1.9, 0.3),
        "fp16": (1.1, 0.3),
        "fp32": (2.4, 0.3),
        "fp16_on_f32_cpu": (2.1, 0.3),
    },
    "validate": {
        "int4": (3.05, 0.3),
        "int8": (2.7, 0.3),
        "fp16": (1.9, 0.3),
        "fp32": (2.4, 0.3),
        "fp16_on_f32_cpu": (2.9, 0.3),
    },
    # Windows, private memory (pipeline.core.ram_windows): int4 5.86 of 2.59, int8 6.83 of 3.57, fp16 7.54 of 7.13
    # (its pinned-f32 answers included, on a bf16 CPU). fp16_on_f32_cpu: the f16 weights widened to f32 are the
    # plugin's own buffers, private: the lean row's 2.1x (14.4 GiB measured with f32 pinned); where it does not
    # fit, the fp16 IR's CPU cells are skipped (validate.py)
    "validate_windows": {
        "int4": (2.3, WINDOWS_FIXED_GIB),
        "int8": (1.95, WINDOWS_FIXED_GIB),
        "fp16": (1.1, WINDOWS_FIXED_GIB),
        "fp32": (2.4, WINDOWS_FIXED_GIB),
        "fp16_on_f32_cpu": (2.1, WINDOWS_FIXED_GIB),
    },
}
# the CPU stand-in, the same passes: 5.56 GiB for the 1.93 GiB NPU IR (8.23 GiB with the state, the whole run)
NPU_RAM: dict[str, dict[str, tuple[float, float]]] = {
    "validate_npu_lean": {"int4": (2.75, 0.3)},
    "validate_npu": {"int4": (3.55, 0.3)},
}

# (start-up s, {variant: Row}), read by pipeline.core.eta (pipeline.core.durations says how the rows were measured).
# Start-up: the tiny model's run; validate_npu takes validate's (its 38.8 s there include the NPU pipeline through
# NPUW, a cell only small IRs run). Cells: CPU and CPU bf16 compute (no GPU; no f16 emulation without
# AVX512-FP16); every profile alike
OPENVINO_TIMES = {
    "validate": (
        16.0,
        {
            "int4": Row(650.9, 2, "2026-12-07"),
            "int8": Row(754.4, 2, "2026-12-07"),
            "fp16": Row(904.7, 2, "2026-12-07"),
        },
    )
}
# the CPU stand-in (the NPU IR is over npuw_max_size_mb) and CPU bf16 compute; full: ~2 min of speed runs
NPU_TIMES = {"validate_npu": (16.0, {"int4": Row(678.2, 2, "2026-12-07", speed_s=120)})}
