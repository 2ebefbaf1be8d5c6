"""The RAM rows on Windows: each stage's private memory, measured, instead of its resident pages.

Windows charges a process for what it allocates (private memory). Pages of a mapped file (a safetensors
checkpoint, an IR's ``.bin``) are file-backed: under pressure the memory manager takes them out of the working set
and drops them, so they need no room of their own. On Linux the lean paths hand such pages back themselves
(``madvise``), which is why their resident peak fits the budget; Windows has no such call here, so its rows were the
resident peaks without trimming, 1.1x to 2x the lean ones, and a 16 GB laptop refused the full-size stages.

These rows come from ``benchmarks/full_pipeline.py``, which samples each stage's private anonymous memory
(``/proc/<pid>/smaps_rollup`` Anonymous + Swap, summed over the stage's process tree) beside its peak: what a
Windows process commits and keeps resident for the same work. Each row is (share of the stage's input, fixed GiB):
the share is the measured private peak over the input's size, rounded up to 0.05, and the fixed part 0.5 GiB,
room for the mapped pages the stage is reading at that moment (the memory manager keeps some resident) and for
heap that glibc's ``malloc_trim`` returned on Linux but a Windows heap may keep. A stage without such a row keeps
its resident row (:func:`pipeline.core.resources.stage_rows`): never expected to need less than measured.

Measured: full-size Phi-3-mini-shaped random bf16 checkpoint (7.12 GiB), the whole default ``aipc repro``
(``python benchmarks/full_pipeline.py --drop-source``, 2026-12-07, AMD EPYC with AVX512-BF16, 2 cores;
``benchmarks/results/full_pipeline.json``, the ``private_gib`` of each stage). Inputs: the checkpoint for the
reference and the exports; the artifact folder for a validation (IRs int4 2.59, int8 3.57, fp16 7.13, NPU int4
1.93 GiB; ONNX dml_int4 1.98, cpu_int4 2.54 GiB).
"""

from __future__ import annotations

WINDOWS_FIXED_GIB = 0.5

# The shared stages' rows, stage -> variant -> (share of the input, fixed GiB), private peak (GiB) in the comment;
# a family keeps its own as ``<stage>_windows`` rows in its package (registry field ``ram``), which
# pipeline.core.resources.stage_rows merges with these
WINDOWS_RAM: dict[str, dict[str, tuple[float, float]]] = {
    "reference": {v: (0.2, WINDOWS_FIXED_GIB) for v in ("float32", "bfloat16", "float16")},  # 1.22 of 7.12
}

# The OpenVINO exports (pipeline.openvino.lean.needs): (share of the checkpoint, fixed GiB) for a float export
# (the base IR 0.81, the fp16 IR 0.81 of 7.12) and for compressing the base IR (int4 3.05, int8 4.03, the NPU's
# int4 2.38 of 7.12)
WINDOWS_EXPORT: dict[str, tuple[float, float]] = {
    "export": (0.15, WINDOWS_FIXED_GIB),
    "compress": (0.6, WINDOWS_FIXED_GIB),
}
