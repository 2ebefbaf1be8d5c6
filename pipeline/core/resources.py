"""RAM and disk checks that stop a heavy stage, in one line, before it writes anything.

:func:`check_resources` compares what a step needs with what the machine has; :func:`check_stage_ram` takes the
need from :data:`STAGE_RAM`, the measured peak of every heavy stage other than the OpenVINO exports (whose table,
lean and plain, is :data:`pipeline.openvino.lean.RAM_NEEDS`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import StageError, fail, size_text
from pipeline.core.memory import weight_files
from pipeline.core.ram_windows import WINDOWS_RAM

ASSUME_RAM_ENV = "AIPC_ASSUME_RAM_GB"  # GiB to take as available instead of asking the OS (tests; "would it fit?")


def check_resources(what: str, ram_bytes: int, disk_bytes: int, disk_at: Path) -> None:
    """Stop with one line when available RAM or free disk is below what ``what`` needs.

    ``AIPC_ASSUME_RAM_GB=11`` checks against 11 GiB of available RAM instead of what the OS reports: what a
    16 GB laptop with a browser open would refuse (the tests fake a small machine with it).
    The disk need is also recorded (:func:`pipeline.core.artifacts.expect_disk`), so a disk that fills later
    anyway (another writer, ``AIPC_SKIP_RESOURCE_CHECK=1``) is reported with the size needed.
    """
    import psutil

    from pipeline.core.artifacts import expect_disk

    expect_disk(Path(disk_at), disk_bytes)
    if os.environ.get("AIPC_SKIP_RESOURCE_CHECK") == "1":
        return
    assumed = os.environ.get(ASSUME_RAM_ENV)
    available = int(float(assumed) * 2**30) if assumed else psutil.virtual_memory().available
    if available < ram_bytes:
        fail(
            f"{what} needs about {size_text(ram_bytes)} of RAM but {size_text(available)} is available: "
            f"free {size_text(ram_bytes - available)} (close other programs) or set AIPC_SKIP_RESOURCE_CHECK=1"
        )
    disk_at = Path(disk_at)
    while not disk_at.exists():
        disk_at = disk_at.parent
    free = shutil.disk_usage(disk_at).free
    if free < disk_bytes:
        fail(
            f"{what} needs about {size_text(disk_bytes)} of disk under {disk_at} but {size_text(free)} is free: "
            f"free {size_text(disk_bytes - free)} or set AIPC_SKIP_RESOURCE_CHECK=1"
        )


def needs_of(table: dict[str, tuple[float, float, float]], key: str, model_dir: Path) -> tuple[int, int]:
    """(RAM, disk) in bytes from a table of (RAM share of the checkpoint, fixed RAM GiB, disk share)."""
    size = sum(f.stat().st_size for f in weight_files(model_dir)) or 1
    share, fixed, disk = table.get(key, max(table.values()))
    return int(share * size + fixed * 2**30), int(disk * size)


# Peak RSS of the heavy stages on the full-size Phi-3-mini-shaped checkpoint (random bf16, 7.12 GiB; issue 20's
# `dvc repro`, Linux, 2 contended cores, sampled every 2 s), as (share of the stage's input, fixed GiB): the input
# is the checkpoint for the reference and the exports, the artifact folder for a validation. A validation's share
# is its peak over the artifact's size from Phi-3-mini's shapes (IRs: int4 2.6, int8 3.6, fp16 7.1, NPU int4
# 1.9 GiB; ONNX: int4 2.1, fp16 7.1 GiB), rounded up. None of these stages trims mapped pages, so the lean and
# the plain path need the same; the OpenVINO exports, which do, are in pipeline.openvino.lean.
STAGE_RAM: dict[str, dict[str, tuple[float, float]]] = {
    # float32 compute from the mapped 16-bit weights (pipeline.validation.upcast): benchmarks/reference_memory.py
    "reference": {"float32": (1.1, 0.3), "bfloat16": (1.1, 0.3), "float16": (1.1, 0.3)},
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
    # the CPU stand-in, the same passes: 5.56 GiB for the 1.93 GiB NPU IR (8.23 GiB with the state, the whole run)
    "validate_npu_lean": {"int4": (2.75, 0.3)},
    "validate_npu": {"int4": (3.55, 0.3)},
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
    # a family may keep its rows in its own package instead (registry field ``ram``; :func:`stage_rows`)
}


def input_bytes(folder: Path) -> int:
    """Bytes a stage loads from ``folder``: a checkpoint's weight files, or every file of an artifact folder."""
    from pipeline.core.artifacts import folder_bytes

    checkpoint = list(Path(folder).glob("*.safetensors"))
    return sum(f.stat().st_size for f in checkpoint) if checkpoint else folder_bytes(folder)


def stage_ram(stage: str, variant: str, input_dir: Path) -> int:
    """Bytes of RAM ``stage`` (a :data:`STAGE_RAM` key) needs for ``variant``, scaled to ``input_dir``'s size."""
    return ram_for(stage, variant, input_bytes(input_dir), sys.platform)


def ram_for(stage: str, variant: str, size: int, platform: str) -> int:
    """Bytes of RAM ``stage`` needs for ``variant`` on ``platform`` (``sys.platform``), its input ``size`` bytes.

    An unknown variant takes the stage's largest share, so a new variant is checked, conservatively. A stage
    with a ``<stage>_lean`` row uses it where mapped pages can be handed back (Linux ``madvise``); on Windows a
    stage with a :data:`pipeline.core.ram_windows.WINDOWS_RAM` row uses that (measured private memory).
    """
    rows = stage_rows()
    lean = f"{stage}_lean" in rows and platform.startswith("linux")
    table = rows[f"{stage}_lean" if lean else stage]
    if platform == "win32" and stage in WINDOWS_RAM:
        table = WINDOWS_RAM[stage]
    share, fixed = table.get(variant, max(table.values()))
    return int(share * size + fixed * 2**30)


def stage_rows() -> dict[str, dict[str, tuple[float, float]]]:
    """:data:`STAGE_RAM` with the rows each family keeps in its package (its registry line's ``ram``)."""
    from pipeline.core.registry import entries

    return {**STAGE_RAM, **{stage: row for rows in entries("ram").values() for stage, row in rows.items()}}


@dataclass(frozen=True)
class PlanContext:
    """What ``aipc plan`` sizes a family's rows from (:mod:`pipeline.cli.plan` builds it)."""

    checkpoint: int  # bytes of the checkpoint planned for
    platform: str  # ``sys.platform`` of the machine planned for
    folder: Callable[[str, str, str], int]  # (family, variant, its folder_share key) -> bytes of that artifact

    def ram(self, stage: str, variant: str, size: int) -> int:
        """:func:`ram_for` on the planned platform."""
        return ram_for(stage, variant, size, self.platform)


@dataclass(frozen=True)
class FamilyPlan:
    """A family's part of ``aipc plan`` (its registry line's ``plan``, in its package)."""

    # an artifact folder's size over its checkpoint's, measured on full-size Phi-3-mini, by a key its rows choose
    folder_share: dict[str, float]
    # (the family's params section, the context) -> (stage, RAM bytes, optional: a CPU stand-in skipped when short)
    rows: Callable[[dict[str, Any], PlanContext], list[tuple[str, int, bool]]]


def check_stage_ram(stage: str, variant: str, input_dir: Path, what: str | None = None) -> None:
    """Stop ``stage`` (a :data:`STAGE_RAM` key) in one line, before it writes anything, if RAM is short.

    Args:
        stage: The stage, e.g. ``validate_onnx``.
        variant: Its variant (weight format, ``<provider>_<precision>``, or the reference's dtype).
        input_dir: The checkpoint (reference, exports) or the artifact folder (validations) it loads.
        what: What the message calls the step (default ``<stage>@<variant>``).
    """
    check_resources(what or f"{stage}@{variant}", stage_ram(stage, variant, input_dir), 0, Path(input_dir))


RAM_SKIP = "not run here"  # how a cell's skip reason starts when RAM, not an absent device, is why


def skip_for_ram(what: str, need: int, cap_gib: float, loads: Path) -> str | None:
    """Why an optional cell (a CPU stand-in, an emulated precision) is not run here, or None when it fits.

    Optional cells are skipped, never fatal: when ``need`` is over ``cap_gib`` (``validate.stand_in_max_ram_gib``;
    0 = no cap), so that they never take a 16 GB laptop past half its memory, and when RAM is short. ``loads``: the
    artifact the cell reads.
    """
    if cap_gib and need > cap_gib * 2**30:
        return (
            f"{RAM_SKIP}: {what} needs about {size_text(need)} of RAM, over "
            f"validate.stand_in_max_ram_gib={cap_gib:g} GiB (raise it to run it anyway)"
        )
    try:
        check_resources(what, need, 0, loads)
    except StageError as err:
        return f"{RAM_SKIP}: {err}"
    return None


def fit_cell_ram(stage: str, variant: str, input_dir: Path, stand_in: bool, cap_gib: float) -> str | None:
    """Why a validation cell of ``stage`` is not run here for RAM, or None when it fits.

    A cell on its target device that cannot fit stops the stage in one line (:func:`check_stage_ram`). A CPU
    stand-in runs only because the target device is absent, so it is skipped instead (:func:`skip_for_ram`);
    ``dvc repro`` goes on without it.
    """
    if not stand_in:
        check_stage_ram(stage, variant, input_dir)
        return None
    need = stage_ram(stage, variant, input_dir)
    return skip_for_ram(f"the CPU stand-in of {stage}@{variant}", need, cap_gib, input_dir)
