"""The ONNX family's measured rows: its export's and validation's RAM (registry field ``ram``) and the validation's
time (``times``), read by :mod:`pipeline.core.resources` and :mod:`pipeline.core.eta` through the registry.

RAM rows are (share of the stage's input, fixed GiB): the checkpoint for the export, the artifact folder for the
validation (its share is its peak over the folder's size from Phi-3-mini's shapes: int4 2.1, fp16 7.1 GiB, rounded
up). No ONNX stage trims mapped pages, so there are no ``_lean`` rows.
"""

from __future__ import annotations

from pipeline.core.durations import Row

RAM: dict[str, dict[str, tuple[float, float]]] = {
    # int4 quantized one float weight at a time (pipeline.onnx.lean_nbits): `python benchmarks/onnx_memory.py
    # --only export-cpu_int4 export-dml_int4 export-dml_fp16`, 5.54 / 2.94 / 0.85 GiB (2026-12-01, 2 shared cores)
    "export_onnx": {"dml_int4": (0.42, 0.3), "cpu_int4": (0.8, 0.3), "dml_fp16": (0.15, 0.5)},
    # the builder's own int4 pass (algo_config rtn/k_quant*, matmul_mixed_precision, use_qdq, a quantized
    # checkpoint): its whole graph in one ModelProto, fp16 for DirectML (9.6 GiB), fp32 for the CPU (18.9 GiB)
    "export_onnx_builder": {"dml_int4": (1.35, 0.3), "cpu_int4": (2.7, 0.3)},
    # CPU cells without ONNX Runtime's arena (pipeline/onnx/validate.py), the reference's 4096-token window included:
    # `python benchmarks/onnx_memory.py --only validate-cpu_int4 validate-dml_int4 --validate-override
    # validate.max_new_tokens=4 validate.perf_new_tokens=2 validate.repeats=1 validate.warmup=0`: cpu_int4 7.77 GiB
    # (2.54 GiB folder), dml_int4 7.89 GiB (1.98 GiB); dml_fp16 on the CPU stand-in keeps a float32 copy of the
    # weights (no fp16 MatMul on x86): >= 17.9 GiB (7.12 GiB folder; stopped there to spare the shared machine)
    # (the whole-pipeline run, benchmarks/full_pipeline.py: dml_int4 8.11 GiB, so its CPU stand-in is over the cap)
    "validate_onnx": {"dml_int4": (4.0, 0.3), "cpu_int4": (3.1, 0.3), "dml_fp16": (2.7, 0.3)},
}

# (start-up s: the tiny model's run, {variant: Row}), read by pipeline.core.eta. cpu_int4: its CPU cell; dml_int4:
# the CPU stand-in, speed runs included (over the RAM cap since)
TIMES = {
    "validate_onnx": (
        12.8,
        {
            "cpu_int4": Row(607.8, 1, "2026-12-07"),
            "dml_int4": Row(636.9, 1, "2026-12-02-dml", with_speed=True),
        },
    )
}
