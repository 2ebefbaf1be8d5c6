"""Stages ``export_npu_lib@<variant>`` and ``validate_npu_lib@<variant>``: the original NPU recipe, intel-npu-acceleration-library.

The recipe is ``NPUModelForCausalLM.from_pretrained(model_id, use_cache=True, config=CompilerConfig(dtype=int4))``.
The library (1.4.0, archived) cannot share the main environment: it runs in its own
(:mod:`pipeline.npu_lib_env`) through :mod:`pipeline.npu_lib_worker`, one process per dtype. Its model file
is a pickle, loaded only after its sha256 matches the manifest. Without an NPU the library runs on CPU with
only a warning: the device that really ran is recorded and the result labelled so. Where the environment
cannot be built here, both stages record a skipped target with the reason and exit 0, so the rest of
``dvc repro`` completes.
Outputs: ``artifacts/npu_lib/<variant>`` (pickle, tokenizer, manifest), ``artifacts/metrics/npu_lib-<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline import npu_lib_env
from pipeline.validate import greedy_match, publish_metrics
from pipeline.artifacts import (ARTIFACTS, folder_bytes, read_manifest, sha256_file, staged_dir, write_json_atomic,
                                write_manifest)
from pipeline.config import ConfigError, NpuLibVariantConfig, ValidateConfig, load_params
from pipeline.errors import fail, run_main
from pipeline.log import say, step

MODEL_DIR = ARTIFACTS / "model"
OUT_ROOT = ARTIFACTS / "npu_lib"
REFERENCE = ARTIFACTS / "reference" / "reference.json"
METRICS_DIR = ARTIFACTS / "metrics"
MODEL_FILE = "pytorch_npu_model.pt"  # the name the library's own export gives it
MODEL_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "tokenizer.model", "special_tokens_map.json", "added_tokens.json")
RECIPE = "NPUModelForCausalLM.from_pretrained(model, use_cache=True, config=CompilerConfig(dtype={dtype}))"
LABELS = {"CPU": "NPU library model, validated on CPU fallback", "NPU": "NPU library model, validated on NPU"}
METRIC_KEYS = ("artifact", "weight_format", "device_requested", "device_executed", "label", "load_s", "ttft_ms",
               "tpot_ms", "tokens_per_s", "peak_rss_mb", "size_mb", "top1_agreement", "fidelity_device",
               "greedy_exact_match", "first_divergence", "min_top1_agreement", "tokenizer_matches_reference",
               "note", "sample", "passed", "problems")


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
            npu_lib_env={"path": str(env.path), "key": env.info.get("key"), "versions": result["versions"]},
            device_compiled=result["device_executed"], library_warnings=result["warnings"],
            linear_layers=result["linear_layers"], timings={"compile_s": result["compile_s"], "stage_s": timing.get("seconds")},
            loading="pickle: load only after its sha256 matches model_sha256 (torch.load(weights_only=False))",
            size_bytes=folder_bytes(tmp))
    say(f"[npu_lib-{name}] {cfg.dtype} model ready in {out_root / name} (compiled for {result['device_executed']})")
    return manifest


def call_worker(name: str, env: npu_lib_env.NpuLibEnv, command: str, args: list[str], cwd: Path) -> dict[str, Any]:
    """Run one worker command; a worker failure becomes a one-line stage error."""
    try:
        return npu_lib_env.run_worker(env.python, command, args, cwd)
    except npu_lib_env.WorkerError as err:
        fail(f"[npu_lib-{name}] {command} failed in the isolated environment: {err}")


def checked_model_file(folder: Path, manifest: dict) -> Path:
    """The model pickle, after checking its sha256 against the manifest (never unpickled on mismatch)."""
    path = folder / manifest["model_file"]
    if not path.is_file():
        fail(f"{path} missing: rebuild it with `dvc repro -f export_npu_lib@{folder.name}`")
    actual = sha256_file(path)
    if actual != manifest["model_sha256"]:
        fail(f"refusing to load {path}: sha256 {actual[:16]}... differs from the manifest's "
             f"{manifest['model_sha256'][:16]}...; the pickle was modified, so it is not unpickled "
             f"(rebuild it with `dvc repro -f export_npu_lib@{folder.name}`)")
    return path


def skipped_metrics(name: str, weight_format: str | None, reason: str) -> dict[str, Any]:
    """Metrics of a target that was not built here: every key present, ``passed`` null, the reason as note."""
    metrics: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    metrics.update(artifact=f"npu_lib-{name}", weight_format=weight_format, device_requested="NPU",
                   label="NPU library model, skipped", note=reason, problems=[], status="skipped")
    return metrics


def judge(name: str, manifest: dict, folder: Path, result: dict, cfg: ValidateConfig,
          reference: dict, npu: Any) -> dict[str, Any]:
    """Turn the worker's measurements into the metrics every validation stage writes."""
    weight_format = manifest["parameters"]["dtype"]
    exact, divergence = greedy_match(result["outputs"], reference)
    threshold = cfg.min_top1_agreement.get(weight_format, 0.0)
    executed, top1 = result["device_executed"], result["top1_agreement"]
    problems = []
    if top1 < threshold:
        problems.append(f"top-1 agreement {top1:.3f} below the {weight_format} threshold {threshold}")
    if npu.available and executed != "NPU":
        problems.append(f"an NPU is present but the library ran on {executed} (silent fallback)")
    if not result["tokenizer_matches_reference"]:
        problems.append("the tokenizer shipped with the model tokenizes the prompt differently from the reference")
    note = None
    if executed != "NPU":
        note = (f"no NPU: {npu.reason}; the library fell back to {executed} with only a warning "
                f"({'; '.join(result['warnings']) or 'none recorded'})")
    return {
        "artifact": f"npu_lib-{name}", "weight_format": weight_format, "device_requested": "NPU",
        "device_executed": executed, "label": LABELS.get(executed, f"NPU library model, validated on {executed}"),
        "load_s": result["load_s"], "ttft_ms": result["ttft_ms"], "tpot_ms": result["tpot_ms"],
        "tokens_per_s": result["tokens_per_s"], "peak_rss_mb": result["peak_rss_mb"],
        "size_mb": round(folder_bytes(folder) / 2**20, 3), "top1_agreement": round(top1, 4),
        "fidelity_device": executed, "greedy_exact_match": round(exact, 4), "first_divergence": divergence,
        "min_top1_agreement": threshold, "tokenizer_matches_reference": result["tokenizer_matches_reference"],
        "note": note, "sample": result["text"][:200], "passed": not problems, "problems": problems,
        "status": "validated",
    }


def validate(name: str, cfg: ValidateConfig, artifact_root: Path = OUT_ROOT, reference_path: Path = REFERENCE,
             metrics_dir: Path = METRICS_DIR, envs_root: Path | None = None, status: dict | None = None) -> dict:
    """Load the library's model (after the hash check), generate, and compare it with the PyTorch reference.

    Args:
        name: Variant name (key under ``npu_lib``).
        cfg: The ``validate`` section (prompts, lengths, repeats, thresholds).
        artifact_root: Parent folder of the library's model folders.
        reference_path: The ``reference`` stage's JSON.
        metrics_dir: Where ``npu_lib-<name>.json`` is written.
        envs_root: Where the isolated environment lives (default: :func:`npu_lib_env.envs_root`).
        status: Device status (detected when omitted; tests pass a fake).

    Returns:
        The metrics written; ``status`` is ``validated`` or ``skipped`` (then ``passed`` is null).
    """
    folder = Path(artifact_root) / name
    manifest = read_manifest(folder)
    out = Path(metrics_dir) / f"npu_lib-{name}.json"
    if manifest.get("status") == "skipped":
        metrics = skipped_metrics(name, manifest["parameters"].get("dtype"), manifest["reason"])
        write_json_atomic(out, metrics)
        say(f"[npu_lib-{name}] skipped: {manifest['reason']}")
        return metrics
    model_file = checked_model_file(folder, manifest)
    try:
        env = npu_lib_env.ensure(envs_root)
    except npu_lib_env.EnvUnavailable as err:
        metrics = skipped_metrics(name, manifest["parameters"].get("dtype"), str(err))
        write_json_atomic(out, metrics)
        say(f"[npu_lib-{name}] skipped: {err}")
        return metrics
    args = ["--model-file", str(model_file.resolve()), "--sha256", manifest["model_sha256"],
            "--tokenizer", str(folder.resolve()), "--reference", str(Path(reference_path).resolve()),
            "--max-new-tokens", str(cfg.max_new_tokens), "--warmup", str(cfg.warmup), "--repeats", str(cfg.repeats)]
    with tempfile.TemporaryDirectory(prefix="npu-lib-") as scratch, \
            step(f"[npu_lib-{name}] loading (hash checked) and generating in the isolated environment"):
        result = call_worker(name, env, "validate", args, Path(scratch))
    if status is None:
        from pipeline import devices

        status = devices.detect()
    reference = json.loads(Path(reference_path).read_text(encoding="utf-8"))
    metrics = judge(name, manifest, folder, result, cfg, reference, status["NPU"])
    return publish_metrics(metrics, out)


def main(argv: list[str] | None = None) -> None:
    """DVC entry point: ``python -m pipeline.export_npu_lib [--validate] <variant>``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="key under `npu_lib` in params.yaml, e.g. int4")
    parser.add_argument("--validate", action="store_true", help="validate artifacts/npu_lib/<variant> instead")
    args = parser.parse_args(argv)
    params = load_params()
    if args.variant not in params.npu_lib:
        raise ConfigError(f"unknown npu_lib variant '{args.variant}': configured ones are {', '.join(params.npu_lib)}")
    if args.validate:
        validate(args.variant, params.validate)
    else:
        run(args.variant, params.npu_lib[args.variant])


if __name__ == "__main__":
    run_main(main)
