"""Stages ``export_npu_lib@<variant>`` and ``validate_npu_lib@<variant>``: the original NPU recipe, intel-npu-acceleration-library.

The recipe is ``NPUModelForCausalLM.from_pretrained(model_id, use_cache=True, config=CompilerConfig(dtype=int4))``.
The library (1.4.0, archived) cannot share the main environment: it runs in its own
(:mod:`pipeline.npu_lib.env`) through :mod:`pipeline.npu_lib.worker`, one process per dtype. Its model file
is a pickle. It is loaded only when the whole folder matches the hash ``dvc.lock`` recorded for
``export_npu_lib@<variant>`` (git-tracked, outside the folder, so a swapped pickle cannot bring its own hash),
then its sha256 matches the (so verified) manifest, and then only with ``torch.load(weights_only=True)`` and an
allow-list of the library's classes, so that nothing in it can run code. Without an NPU the library runs on CPU with
only a warning: the device that really ran is recorded, and a run on CPU counts as the NPU cell only where
no NPU exists (then it is the labelled CPU stand-in of :mod:`pipeline.validation.matrix`); with an NPU present it is a
silent fallback and fails. Where the environment cannot be built here, both stages record a skipped target
with the reason and exit 0, so the rest of ``dvc repro`` completes.
Outputs: ``artifacts/npu_lib/<variant>`` (pickle, tokenizer, manifest), ``artifacts/metrics/npu_lib-<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.validation import fidelity
from pipeline.validation import matrix
from pipeline.npu_lib import env as npu_lib_env
from pipeline.core.artifacts import (ARTIFACTS, LOCK_FILE, dvc_dir_md5, folder_bytes, locked_md5, read_manifest, sha256_file,
                                staged_dir, write_manifest)
from pipeline.core.config import NpuLibVariantConfig, ValidateConfig, load_params, pick_variant
from pipeline.core.errors import fail, run_main
from pipeline.openvino.lean import NPU_LIB_NEEDS, check_resources, needs_of
from pipeline.core.log import say, step

MODEL_DIR = ARTIFACTS / "model"
OUT_ROOT = ARTIFACTS / "npu_lib"
REFERENCE = ARTIFACTS / "reference" / "reference.json"
METRICS_DIR = ARTIFACTS / "metrics"
MODEL_FILE = "pytorch_npu_model.pt"  # the name the library's own export gives it
MODEL_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "tokenizer.model", "special_tokens_map.json", "added_tokens.json")
RECIPE = "NPUModelForCausalLM.from_pretrained(model, use_cache=True, config=CompilerConfig(dtype={dtype}))"
KIND = "NPU library model"
LOADING = ("pickle: loaded only when the folder matches dvc.lock's hash of export_npu_lib@<variant> and the file "
           "model_sha256, with torch.load(weights_only=True) allowing only npu_lib_worker.SAFE_CLASSES")


def write_skipped(name: str, cfg: NpuLibVariantConfig, source: dict, out_root: Path, reason: str) -> dict:
    """Record a target that cannot be built on this machine: a manifest with ``status: skipped`` and the reason."""
    with staged_dir(out_root / name) as tmp:
        manifest = write_manifest(tmp, stage="export_npu_lib", variant=name, status="skipped", reason=reason,
                                  recipe=RECIPE.format(dtype=cfg.dtype), parameters=vars(cfg).copy(),
                                  source={k: source.get(k) for k in ("model", "source", "repo_id", "revision")})
    say(f"[npu_lib-{name}] skipped: {reason}")
    return manifest


def run(name: str, cfg: NpuLibVariantConfig, model_dir: Path = MODEL_DIR, out_root: Path = OUT_ROOT,
        envs_root: Path | None = None) -> dict:
    """Compile ``model_dir`` with the library for variant ``name`` into ``out_root/name``.

    Args:
        name: Variant name (key under ``npu_lib`` in params.yaml).
        cfg: The library dtype and how the checkpoint is loaded.
        model_dir: The ``download`` stage output.
        out_root: Parent folder of the library's model folders.
        envs_root: Where the isolated environment lives (default: :func:`npu_lib_env.envs_root`).

    Returns:
        The manifest written (``status`` is ``compiled`` or ``skipped``).
    """
    source = read_manifest(model_dir)
    try:
        env = npu_lib_env.ensure(envs_root)
    except npu_lib_env.EnvUnavailable as err:
        return write_skipped(name, cfg, source, out_root, str(err))
    recipe = RECIPE.format(dtype=cfg.dtype)
    check_resources(f"[npu_lib-{name}] compiling {cfg.dtype} with the NPU library",
                    *needs_of(NPU_LIB_NEEDS, cfg.dtype, model_dir), out_root)
    with staged_dir(out_root / name) as tmp, tempfile.TemporaryDirectory(prefix="npu-lib-") as scratch:
        args = ["--model", str(Path(model_dir).resolve()), "--dtype", cfg.dtype, "--load-dtype", cfg.load_dtype,
                "--out", str((tmp / MODEL_FILE).resolve())]
        with step(f"[npu_lib-{name}] {recipe} in the isolated environment") as timing:
            result = call_worker(name, env, "compile", args, Path(scratch))
        for file in MODEL_SIDE_FILES:
            if (Path(model_dir) / file).is_file():
                shutil.copy2(Path(model_dir) / file, tmp / file)
        if sha256_file(tmp / MODEL_FILE) != result["sha256"]:
            fail(f"[npu_lib-{name}] the saved model changed after the worker hashed it: rebuild")
        manifest = write_manifest(
            tmp, stage="export_npu_lib", variant=name, status="compiled", format="intel-npu-acceleration-library pickle",
            recipe=recipe, model_file=MODEL_FILE, model_sha256=result["sha256"], parameters=vars(cfg).copy(),
            source={k: source.get(k) for k in ("model", "source", "repo_id", "revision", "license")},
            source_files_sha256={k: v["sha256"] for k, v in source["files"].items()},
            npu_lib_env={"key": env.info.get("key"), "versions": result["versions"]},
            device_compiled=result["device_executed"], library_warnings=result["warnings"],
            linear_layers=result["linear_layers"], timings={"compile_s": result["compile_s"], "stage_s": timing.get("seconds")},
            loading=LOADING, size_bytes=folder_bytes(tmp), run_log={"npu_lib_env": str(env.path)})
    say(f"[npu_lib-{name}] {cfg.dtype} model ready in {out_root / name} (compiled for {result['device_executed']})")
    return manifest


def call_worker(name: str, env: npu_lib_env.NpuLibEnv, command: str, args: list[str], cwd: Path) -> dict[str, Any]:
    """Run one worker command; a worker failure becomes a one-line stage error."""
    try:
        return npu_lib_env.run_worker(env.python, command, args, cwd)
    except npu_lib_env.WorkerError as err:
        if err.returncode == npu_lib_env.REFUSED:  # the worker refused the file before anything of it ran
            fail(f"{str(err).removeprefix('error: ')} (repair with `aipc repair export_npu_lib@{name}`)")
        fail(f"[npu_lib-{name}] {command} failed in the isolated environment: {err}")


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
        fail(f"refusing to load {path}: {lock_file} records no export_npu_lib@{name} output for {folder}, so "
             f"nothing vouches for the pickle and it is not unpickled (build it with `dvc repro export_npu_lib@{name}`)")
    actual = dvc_dir_md5(folder)
    if actual != expected:
        fail(f"refusing to load {path}: {folder} hashes to {actual[:12]}..., not the {expected[:12]}... that {lock_file} "
             f"recorded for export_npu_lib@{name}; a file was modified, so the pickle is not unpickled ({rebuild})")
    return path


def skipped_record(name: str, weight_format: str | None, reason: str, cfg: ValidateConfig) -> matrix.MetricsRecord:
    """Metrics of a target that was not built (or cannot run) here: every target device ``skipped`` with the reason."""
    cells = {d: matrix.Cell(d, d, "skipped", f"{KIND}, skipped", reason=reason) for d in cfg.devices["npu_lib"]}
    return matrix.MetricsRecord(f"npu_lib-{name}", "npu_lib", weight_format, None,
                                cfg.thresholds(weight_format or "int4"), cells)


def measurement(result: dict[str, Any], logits_file: Path,
                ref_logprobs: fidelity.ReferenceLogprobs) -> matrix.Measurement:
    """The worker's result and saved logits as a matrix measurement (fidelity computed here, not in the worker)."""
    perf = {k: matrix.Perf.from_runs(v["prompt_tokens"], v["new_tokens"], v["ttft_ms"], v["tpot_ms"])
            for k, v in result["perf"].items()}
    note = None
    if result["device_executed"] != "NPU":
        note = (f"the library ran on {result['device_executed']} with only a warning "
                f"({'; '.join(result['warnings']) or 'none recorded'})")
    return matrix.Measurement(
        executed=result["device_executed"], load_s=result["load_s"], peak_rss_mb=result["peak_rss_mb"], perf=perf,
        fidelity=fidelity.compare(ref_logprobs, fidelity.load_npz_logits(logits_file)).as_dict(),
        outputs=result["outputs"], tokenizer_matches_reference=result["tokenizer_matches_reference"],
        sample=result["text"], note=note)


def worker_args(model_file: Path, manifest: dict, folder: Path, reference_path: Path, cfg: ValidateConfig,
                logits_file: Path) -> list[str]:
    """Command-line arguments of the worker's ``validate`` command."""
    return ["--model-file", str(model_file.resolve()), "--sha256", manifest["model_sha256"],
            "--tokenizer", str(folder.resolve()), "--reference", str(Path(reference_path).resolve()),
            "--logits", str(logits_file.resolve()), "--max-new-tokens", str(cfg.max_new_tokens),
            "--new-tokens", str(cfg.perf_new_tokens), "--warmup", str(cfg.warmup), "--repeats", str(cfg.repeats)]


def run_cells(name: str, env: npu_lib_env.NpuLibEnv, model_file: Path, manifest: dict, folder: Path,
              reference_path: Path, cfg: ValidateConfig, status: dict) -> dict[str, matrix.Cell]:
    """Fill every cell: the library picks its device itself, so one worker run serves the cell that runs."""
    reference = json.loads(Path(reference_path).read_text(encoding="utf-8"))
    ref_logprobs = fidelity.ReferenceLogprobs.load(Path(reference_path).parent / fidelity.LOGPROBS_FILE)
    weight_format = manifest["parameters"]["dtype"]
    thresholds = matrix.Thresholds(weight_format, **cfg.thresholds(weight_format))
    cells = {}
    for plan in matrix.plan_cells(cfg.devices["npu_lib"], status, cfg.cpu_stand_in):
        if plan.skip_reason:
            cells[plan.column] = matrix.skipped_cell(plan, KIND)
            continue
        with tempfile.TemporaryDirectory(prefix="npu-lib-") as scratch, \
                step(f"[npu_lib-{name} @ {plan.column}] loading (hash checked) and generating in the isolated environment"):
            logits_file = Path(scratch) / "logits.npz"
            result = call_worker(name, env, "validate", worker_args(model_file, manifest, folder, reference_path, cfg,
                                                                    logits_file), Path(scratch))
            got = measurement(result, logits_file, ref_logprobs)
        cells[plan.column] = matrix.judge(plan, got, reference, thresholds, KIND)
    return cells


def validate(name: str, cfg: ValidateConfig, artifact_root: Path = OUT_ROOT, reference_path: Path = REFERENCE,
             metrics_dir: Path = METRICS_DIR, envs_root: Path | None = None, status: dict | None = None,
             lock_file: Path = LOCK_FILE) -> dict:
    """Load the library's model (after the hash checks, allow-listed), generate, and compare it with PyTorch.

    Args:
        name: Variant name (key under ``npu_lib``).
        cfg: The ``validate`` section (prompts, lengths, repeats, thresholds, target devices).
        artifact_root: Parent folder of the library's model folders.
        reference_path: The ``reference`` stage's JSON (``logprobs.npz`` beside it).
        metrics_dir: Where ``npu_lib-<name>.json`` is written.
        envs_root: Where the isolated environment lives (default: :func:`npu_lib_env.envs_root`).
        status: Device status (detected when omitted; tests pass a fake).
        lock_file: The ``dvc.lock`` whose record of ``export_npu_lib@<name>`` vouches for the folder.

    Returns:
        The metrics written; ``status`` is ``passed``, ``failed`` or ``skipped`` (then ``passed`` is null).
    """
    folder = Path(artifact_root) / name
    manifest = read_manifest(folder)
    out = Path(metrics_dir) / f"npu_lib-{name}.json"
    dtype = manifest["parameters"].get("dtype")
    if manifest.get("status") == "skipped":
        return matrix.publish(skipped_record(name, dtype, manifest["reason"], cfg), out)
    model_file = checked_model_file(folder, manifest, lock_file)
    try:
        env = npu_lib_env.ensure(envs_root)
    except npu_lib_env.EnvUnavailable as err:
        return matrix.publish(skipped_record(name, dtype, str(err), cfg), out)
    if status is None:
        from pipeline.validation import devices

        status = devices.detect()
    cells = run_cells(name, env, model_file, manifest, folder, reference_path, cfg, status)
    thresholds = cfg.thresholds(dtype)
    record = matrix.MetricsRecord(f"npu_lib-{name}", "npu_lib", dtype, round(folder_bytes(folder) / 2**20, 3),
                                  thresholds, cells)
    return matrix.publish(record, out)


def main(argv: list[str] | None = None) -> None:
    """DVC entry point: ``python -m pipeline.npu_lib.export [--validate] <variant>``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="key under `npu_lib` in params.yaml, e.g. int4")
    parser.add_argument("--validate", action="store_true", help="validate artifacts/npu_lib/<variant> instead")
    args = parser.parse_args(argv)
    params = load_params()
    pick_variant(params.npu_lib, args.variant, "npu_lib")
    if args.validate:
        from pipeline.core.verify import verify_for_use

        verify_for_use(OUT_ROOT / args.variant, REFERENCE.parent)
        validate(args.variant, params.validate)
    else:
        run(args.variant, params.npu_lib[args.variant])


if __name__ == "__main__":
    run_main(main)
