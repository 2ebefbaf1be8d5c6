"""Stage ``validate_npu_lib@<variant>``: load the NPU library's model (hash-checked, allow-listed) and measure it.

The model pickle of :mod:`pipeline.npu_lib.export` is loaded only when the whole folder matches the hash
``dvc.lock`` recorded for ``export_npu_lib@<variant>``, then only in the library's own environment
(:mod:`pipeline.npu_lib.env`) by :mod:`pipeline.npu_lib.worker`, with ``torch.load(weights_only=True)`` and an
allow-list of the library's classes. The cells and verdicts are :mod:`pipeline.validation.matrix`'s, the metrics file :mod:`pipeline.validation.records`'s.
Output: ``artifacts/metrics/npu_lib-<variant>.json`` (``status: skipped`` with the reason where the library cannot run).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import ValidateConfig
from pipeline.core.errors import fail, run_main
from pipeline.core.hashes import LOCK_FILE, dvc_dir_md5, locked_md5
from pipeline.core.log import say, step
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.npu_lib import env as npu_lib_env
from pipeline.npu_lib.export import KIND, call_worker
from pipeline.validation import fidelity, matrix, records, speed
from pipeline.validation.template import NotRun, ValidationJob, Validator, ValidatorSteps, fit_ram, validate


def checked_model_file(folder: Path, manifest: dict, lock_file: Path = LOCK_FILE) -> Path:
    """The model pickle, once the whole folder matches the hash ``dvc.lock`` recorded for it (nothing unpickled before).

    The expected hash comes from ``dvc.lock`` (git-tracked, written by DVC after the export stage ran), not
    from the folder: a pickle swapped together with its manifest is refused here. The worker then checks
    the pickle's sha256 against the verified manifest again, right before loading it.
    """
    name, path = folder.name, folder / manifest["model_file"]
    rebuild = f"repair with `aipc repair export_npu_lib@{name}`"
    if not path.is_file():
        fail(f"{path} missing: {rebuild}")
    expected = locked_md5(f"export_npu_lib@{name}", folder, lock_file)
    if expected is None:
        fail(
            f"refusing to load {path}: {lock_file} records no export_npu_lib@{name} output for {folder}, so "
            f"nothing vouches for the pickle and it is not unpickled (build it with `dvc repro export_npu_lib@{name}`)"
        )
    actual = dvc_dir_md5(folder)
    if actual != expected:
        fail(
            f"refusing to load {path}: {folder} hashes to {actual[:12]}..., not the {expected[:12]}... that {lock_file} "
            f"recorded for export_npu_lib@{name}; a file was modified, so the pickle is not unpickled ({rebuild})"
        )
    return path


def skipped_record(name: str, weight_format: str | None, reason: str, cfg: ValidateConfig) -> records.MetricsRecord:
    """Metrics of a target that was not built (or cannot run) here: every target device ``skipped`` with the reason."""
    cells = {d: matrix.Cell(d, d, "skipped", f"{KIND}, skipped", reason=reason) for d in cfg.devices["npu_lib"]}
    return records.MetricsRecord(
        f"npu_lib-{name}", "npu_lib", weight_format, None, cfg.thresholds(weight_format or "int4"), cells
    )


FORCED_NOTE = (
    "answers checked in one teacher-forced pass over PyTorch's (quick profile, stand-in): each ends at its first "
    "token that departs; validate.profile=full decodes them whole"
)


def measurement(
    result: dict[str, Any], logits_file: Path, ref_logprobs: fidelity.ReferenceLogprobs
) -> matrix.Measurement:
    """The worker's result and saved logits as a matrix measurement (fidelity computed here, not in the worker)."""
    perf = {
        k: matrix.Perf.from_runs(v["prompt_tokens"], v["new_tokens"], v["ttft_ms"], v["tpot_ms"])
        for k, v in result["perf"].items()
    }
    notes = []
    if result["device_executed"] != "NPU":
        notes.append(
            f"the library ran on {result['device_executed']} with only a warning "
            f"({'; '.join(result['warnings']) or 'none recorded'})"
        )
    if result.get("forced_answers"):
        notes.append(FORCED_NOTE)
    note = "; ".join(notes) or None
    return matrix.Measurement(
        artifact_numerics=library_numerics(result.get("compute")),
        executed=result["device_executed"],
        load_s=result["load_s"],
        peak_rss_mb=result["peak_rss_mb"],
        perf=perf,
        fidelity=fidelity.compare(ref_logprobs, fidelity.load_npz_logits(logits_file)).as_dict(),
        outputs=result["outputs"],
        tokenizer_matches_reference=result["tokenizer_matches_reference"],
        sample=result["text"],
        note=note,
    )


def library_numerics(compute: str | None) -> dict[str, Any]:
    """What the library's run computed with, and the compute precision it is judged at.

    The library casts every matmul's activations to fp16 and compiles its kernels at the device's default (the NPU's
    f16; on a CPU the plugin's default, bf16 on AVX512-BF16 / AMX CPUs), and takes no precision setting: its
    fidelity is never an f32 figure. It is held to the weight format's limits widened by that compute precision's
    device-numerics allowance (:meth:`pipeline.validation.matrix.Thresholds.widened`), as an OpenVINO cell's device
    numerics are: bf16 where the kernels compute in bf16, else f16 (the activations' precision).
    """
    ran = compute or "unknown"
    return {
        "label": f"fp16 activations, {ran} compute (the library's; it cannot run at f32)",
        "compute": ran,
        "judged_as": "bf16" if ran == "bf16" else "f16",
    }


def worker_args(
    model_file: Path,
    manifest: dict,
    folder: Path,
    reference_path: Path,
    cfg: ValidateConfig,
    logits_file: Path,
    measure_speed: bool = True,
    forced_answers: bool = False,
) -> list[str]:
    """Command-line arguments of the worker's ``validate`` command (``measure_speed=False``: no speed runs;
    ``forced_answers``: answers by one teacher-forced pass, :func:`pipeline.npu_lib.worker_measure.forced_answer`)."""
    return [
        "--model-file",
        str(model_file.resolve()),
        "--sha256",
        manifest["model_sha256"],
        "--tokenizer",
        str(folder.resolve()),
        "--reference",
        str(Path(reference_path).resolve()),
        "--logits",
        str(logits_file.resolve()),
        "--max-new-tokens",
        str(cfg.max_new_tokens),
        "--new-tokens",
        str(cfg.perf_new_tokens),
        "--warmup",
        str(cfg.warmup),
        "--repeats",
        str(cfg.repeats),
        "--budget-s",
        str(cfg.perf_budget_s),
        *([] if measure_speed else ["--no-speed"]),
        *(["--forced-answers"] if forced_answers else []),
    ]


@dataclass(frozen=True)
class NpuLibValidator(ValidatorSteps):
    """The NPU library family's validation steps: the worker loads the hash-checked pickle and measures it."""

    envs_root: Path | None = None  # where the isolated environment lives (default: npu_lib_env.envs_root)
    status: dict | None = None  # device status (detected when None; tests pass a fake)
    family: str = "npu_lib"

    def weight_format(self, manifest: dict[str, Any]) -> str | None:
        """The library's dtype."""
        return manifest["parameters"].get("dtype")

    def plan(self, job: ValidationJob) -> list[matrix.CellPlan]:
        """The target devices; RAM first, then the pickle's hash and the environment (or a ``skipped`` record)."""
        name, cfg, dtype = job.name, job.cfg, job.weight_format
        if job.manifest.get("status") == "skipped":
            raise NotRun(record=skipped_record(name, dtype, job.manifest["reason"], cfg))
        status = self.status
        if status is None:
            from pipeline.validation import devices

            status = devices.detect()
        plans = matrix.plan_cells(cfg.devices["npu_lib"], status, cfg.cpu_stand_in)
        job.row = dtype
        # RAM first: a target cell that cannot fit stops here, a stand-in is skipped with the line
        fit_ram(plans, job, "validate_npu_lib", lambda plan: True)
        job.facts["model_file"] = checked_model_file(job.folder, job.manifest, job.ws.lock_file)
        try:
            job.facts["env"] = npu_lib_env.ensure(self.envs_root)
        except npu_lib_env.EnvUnavailable as err:
            raise NotRun(record=skipped_record(name, dtype, str(err), cfg)) from err
        return plans

    def measure(self, job: ValidationJob, plan: matrix.CellPlan) -> matrix.Measurement:
        """One worker run: the library picks its device itself, so it serves the cell that runs."""
        name, cfg = job.name, job.cfg
        with (
            tempfile.TemporaryDirectory(prefix="npu-lib-") as scratch,
            step(f"[npu_lib-{name} @ {plan.column}] loading (hash checked) and generating in the isolated environment"),
        ):
            logits_file = Path(scratch) / "logits.npz"
            measure_speed = speed.not_measured(plan.stand_in_for, cfg) is None
            forced = bool(plan.stand_in_for) and cfg.profile == "quick"  # the full profile decodes every answer
            model_file, reference = job.facts["model_file"], job.ws.reference_path
            args = worker_args(model_file, job.manifest, job.folder, reference, cfg, logits_file, measure_speed, forced)
            result = call_worker(name, job.facts["env"], "validate", args, Path(scratch))
            got = measurement(result, logits_file, job.evidence.logprobs)
        say(f"[npu_lib-{name} @ {plan.column}] seconds per phase: {result.get('phase_s')}")
        return got  # judged at the compute that ran (library_numerics)


VALIDATOR: Validator = NpuLibValidator()  # mypy checks the steps against the Protocol


def run(
    name: str,
    cfg: ValidateConfig,
    ws: Workspace = PROJECT,
    *,
    envs_root: Path | None = None,
    status: dict | None = None,
) -> dict:
    """Load the library's model (after the hash checks, allow-listed), generate, and compare it with PyTorch.

    Args:
        name: Variant name (key under ``npu_lib``).
        cfg: The ``validate`` section (prompts, lengths, repeats, thresholds, target devices).
        ws: The library's model folders (``ws.root("npu_lib")``), the reference, where ``npu_lib-<name>.json`` goes,
            and the ``dvc.lock`` whose record of ``export_npu_lib@<name>`` vouches for the folder.
        envs_root: Where the isolated environment lives (default: :func:`npu_lib_env.envs_root`).
        status: Device status (detected when omitted; tests pass a fake).

    Returns:
        The metrics written; ``status`` is ``passed``, ``failed`` or ``skipped`` (then ``passed`` is null).
    """
    return validate(NpuLibValidator(envs_root, status), name, cfg, ws)


if __name__ == "__main__":  # the stage: `python -m pipeline.npu_lib.validate <variant>`
    run_main(lambda: run_stage("npu_lib", "validate"))
