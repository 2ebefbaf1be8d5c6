"""The NPU library family's measured rows: its export's and validation's RAM (registry field ``ram``) and the
validation's time (``times``), read by :mod:`pipeline.core.resources` and :mod:`pipeline.core.eta` through the
registry.

RAM rows are (share of the stage's input, fixed GiB): the checkpoint for the export, the artifact folder for the
validation. The library trims no mapped pages, so there are no ``_lean`` rows.
"""

from __future__ import annotations

from pipeline.core.durations import Row

RAM: dict[str, dict[str, tuple[float, float]]] = {
    # layer by layer (npu_lib.<v>.layer_by_layer, the default; pipeline/npu_lib/worker_layers.py), contended 2 cores:
    # int4 3.30-3.35 GiB in 161-288 s, int8 4.81 GiB in 141 s, fp16 7.78-7.94 GiB in 68-189 s,
    # `flock /work/bench/fullsize.lock python benchmarks/npu_lib_memory.py export int4|int8|fp16`
    "export_npu_lib": {"int4": (0.43, 0.3), "int8": (0.64, 0.3), "fp16": (1.08, 0.3)},
    # the library's whole-model from_pretrained (layer_by_layer: false) at load_dtype float32: a float32 copy of the
    # checkpoint (2x) plus the library's quantization, 16.6 / 20.2 / 16.1 GiB (issue 20's run); at a 16-bit
    # load_dtype estimated one checkpoint lower (not measured)
    "export_npu_lib_whole": {"int4": (2.35, 0.3), "int8": (2.85, 0.3), "fp16": (2.3, 0.3)},
    "export_npu_lib_whole_16bit": {"int4": (1.35, 0.3), "int8": (1.85, 0.3), "fp16": (1.3, 0.3)},
    # the library's model loaded from its .pt on the CPU stand-in, as a share of the artifact folder (int4 2.10, int8
    # 3.84, fp16 7.30 GiB): int4 5.81 GiB in 646 s, int8 7.78 GiB in 134 s, fp16 11.68 GiB in 191 s,
    # `flock /work/bench/fullsize.lock python benchmarks/npu_lib_memory.py validate int4|int8|fp16` (int4 7.42 GiB
    # before the worker dropped the library's kernels between prompts, worker_measure.drop_kernels). fp16 stays over
    # 8 GiB: its 7.3 GiB model is loaded whole and the library's CPU kernels add about 3 GiB. The whole run of
    # 2026-12-02: int4 6.08 GiB in 1728 s (a CI rehearsal beside it), int8 8.09 GiB in 567 s (7.94 in the run
    # before, 7.78 by itself; the row stays at 2.0x, 7.98 GiB, so the int8 stand-in still runs under the 8 GiB cap)
    "validate_npu_lib": {"int4": (2.65, 0.3), "int8": (2.0, 0.3), "fp16": (1.6, 0.3)},
}

# (start-up s: the tiny model's run, the library's worker environment included, {variant: Row}), read by
# pipeline.core.eta. The CPU stand-in. quick: its answers in one teacher-forced pass (int4 27 s, int8 15 s). full adds
# the speed runs (8-10 minutes for int4, ~4.5 for int8, at 0.15-0.5 tokens/s) and the answers decoded whole (641 s
# and 171 s in the 2026-12-07 pipeline, 6.7 s per token for int4)
TIMES = {
    "validate_npu_lib": (
        51.7,
        {
            "int4": Row(86.0, 1, "2026-12-07-forced", speed_s=540 + 614),
            "int8": Row(62.0, 1, "2026-12-07-forced", speed_s=270 + 156),
        },
    )
}
