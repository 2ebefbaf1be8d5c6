"""Stage ``export_npu_lib@<variant>``: the original NPU recipe, intel-npu-acceleration-library.

The recipe is ``NPUModelForCausalLM.from_pretrained(model_id, use_cache=True, config=CompilerConfig(dtype=int4))``.
The library (1.4.0, archived) cannot share the main environment: it runs in its own
(:mod:`pipeline.npu_lib.env`) through :mod:`pipeline.npu_lib.worker`, one process per dtype. By default the worker
builds the recipe's model one decoder layer at a time (:mod:`pipeline.npu_lib.worker_layers`: the same tensors as
the library's whole-model build, a fraction of its memory) and records the embedding tie. Its model file
is a pickle; :mod:`pipeline.npu_lib.validate` loads it only when the whole folder matches the hash ``dvc.lock`` recorded for
``export_npu_lib@<variant>`` (git-tracked, outside the folder, so a swapped pickle cannot bring its own hash),
then its sha256 matches the (so verified) manifest, and then only with ``torch.load(weights_only=True)`` and an
allow-list of the library's classes, so that nothing in it can run code. Without an NPU the library runs on CPU with
only a warning: the device that really ran is recorded, and a run on CPU counts as the NPU cell only where
no NPU exists (then it is the labelled CPU stand-in of :mod:`pipeline.validation.matrix`); with an NPU present it is a
silent fallback and fails. Where the environment cannot be built here, both stages record a skipped target
with the reason and exit 0, so the rest of ``dvc repro`` completes.
Output: ``artifacts/npu_lib/<variant>`` (pickle, tokenizer, manifest).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail, run_main, size_text
from pipeline.core.family import Exporter, ExportJob, Needs, NotBuiltHere, export
from pipeline.core.hashes import sha256_file
from pipeline.core.log import step
from pipeline.core.manifest import CHECKPOINT_SIDE_FILES, tied_embeddings
from pipeline.core.registry import FAMILIES
from pipeline.core.resources import needs_of
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.npu_lib import env as npu_lib_env
from pipeline.npu_lib.config import NpuLibVariantConfig

# Disk for the library's pickle, as a share of the checkpoint (RAM: pipeline.core.resources.STAGE_RAM).
NPU_LIB_DISK = {"int4": (0.0, 0.0, 0.45), "int8": (0.0, 0.0, 0.6), "fp16": (0.0, 0.0, 1.05)}

MODEL_FILE = "pytorch_npu_model.pt"  # the name the library's own export gives it
RECIPE = "NPUModelForCausalLM.from_pretrained(model, use_cache=True, config=CompilerConfig(dtype={dtype}))"
KIND = FAMILIES["npu_lib"].kind  # "NPU library model"
LOADING = (
    "pickle: loaded only when the folder matches dvc.lock's hash of export_npu_lib@<variant> and the file "
    "model_sha256, with torch.load(weights_only=True) allowing only pipeline/npu_lib/worker_pickle.py SAFE_CLASSES"
)


@dataclass(frozen=True)
class NpuLibExporter:
    """The NPU library family's export steps: the recipe run by the worker in the library's own environment."""

    envs_root: Path | None = None  # where the isolated environment lives (default: npu_lib_env.envs_root)
    family: str = "npu_lib"
    stage: str = "export_npu_lib"

    def check(self, job: ExportJob[NpuLibVariantConfig]) -> None:
        """The isolated environment, or a ``skipped`` record naming why it cannot be built here."""
        try:
            job.facts["env"] = npu_lib_env.ensure(self.envs_root)
        except npu_lib_env.EnvUnavailable as err:
            fields = {
                "recipe": RECIPE.format(dtype=job.cfg.dtype),
                "parameters": vars(job.cfg).copy(),
                "source": job.source_fields(("model", "source", "repo_id", "revision")),
            }
            raise NotBuiltHere(str(err), f"[npu_lib-{job.name}]", fields) from err

    def needs(self, job: ExportJob[NpuLibVariantConfig]) -> Needs:
        """The measured RAM row of this build (:func:`ram_row`), disk for the pickle."""
        cfg = job.cfg
        what = f"[npu_lib-{job.name}] compiling {cfg.dtype} with the NPU library"
        return Needs(what, *needs_of(NPU_LIB_DISK, cfg.dtype, job.model_dir), ram_row=(ram_row(cfg), cfg.dtype))

    def build(self, job: ExportJob[NpuLibVariantConfig], tmp: Path) -> None:
        """The worker's pickle (its scratch in a temporary folder), and the checkpoint's side files beside it."""
        cfg, model_dir = job.cfg, Path(job.model_dir)
        args = [
            *("--model", str(model_dir.resolve()), "--dtype", cfg.dtype, "--load-dtype", cfg.load_dtype),
            *("--out", str((tmp / MODEL_FILE).resolve())),
            *(["--layer-by-layer"] if cfg.layer_by_layer else []),
        ]
        how = "layer by layer" if cfg.layer_by_layer else "whole model"
        recipe = RECIPE.format(dtype=cfg.dtype)
        what = f"[npu_lib-{job.name}] {recipe} ({how}, load_dtype {cfg.load_dtype}) in the isolated environment"
        with tempfile.TemporaryDirectory(prefix="npu-lib-") as scratch, step(what) as timing:
            job.facts["result"] = call_worker(job.name, job.facts["env"], "compile", args, Path(scratch))
        job.facts["stage_s"] = timing.get("seconds")
        for file in CHECKPOINT_SIDE_FILES:
            if (model_dir / file).is_file():
                shutil.copy2(model_dir / file, tmp / file)

    def inspect(self, job: ExportJob[NpuLibVariantConfig], tmp: Path) -> dict[str, Any]:
        """The pickle is the one the worker hashed; the worker's record of it (layers, tie, device, versions)."""
        result: dict[str, Any] = job.facts["result"]
        if sha256_file(tmp / MODEL_FILE) != result["sha256"]:
            fail(f"[npu_lib-{job.name}] the saved model changed after the worker hashed it: rebuild")
        return result

    def manifest_fields(self, job: ExportJob[NpuLibVariantConfig], summary: dict[str, Any]) -> dict[str, Any]:
        """The recipe, the pickle's hash, the environment and what the worker read back."""
        env = job.facts["env"]
        return {
            "status": "compiled",
            "format": "intel-npu-acceleration-library pickle",
            "recipe": RECIPE.format(dtype=job.cfg.dtype),
            "model_file": MODEL_FILE,
            "model_sha256": summary["sha256"],
            "parameters": vars(job.cfg).copy(),
            "source": job.source_fields(),
            "source_files_sha256": job.source_hashes(),
            "npu_lib_env": {"key": env.info.get("key"), "versions": summary["versions"]},
            "device_compiled": summary["device_executed"],
            "library_warnings": summary["warnings"],
            "linear_layers": summary["linear_layers"],
            "tied_embeddings": tied_embeddings(summary["tied_embeddings"], job.model_config),
            "timings": {"compile_s": summary["compile_s"], "stage_s": job.facts["stage_s"]},
            "loading": LOADING,
            "run_log": {"npu_lib_env": str(env.path)},
        }

    def ready(self, job: ExportJob[NpuLibVariantConfig], manifest: dict[str, Any]) -> str:
        """Where the model is and what it was compiled for."""
        device = job.facts["result"]["device_executed"]
        return f"[npu_lib-{job.name}] {job.cfg.dtype} model ready in {job.out} (compiled for {device})"


EXPORTER: Exporter[NpuLibVariantConfig] = NpuLibExporter()  # mypy checks the steps against the Protocol


def run(name: str, cfg: NpuLibVariantConfig, ws: Workspace = PROJECT, *, envs_root: Path | None = None) -> dict:
    """Compile the checkpoint ``ws.model_dir`` with the library for variant ``name`` into ``ws.root("npu_lib")/name``.

    Args:
        name: Variant name (key under ``npu_lib`` in params.yaml).
        cfg: The library dtype and how the checkpoint is loaded.
        ws: Where the checkpoint is and the library's model folders go.
        envs_root: Where the isolated environment lives (default: :func:`npu_lib_env.envs_root`).

    Returns:
        The manifest written (``status`` is ``compiled`` or ``skipped``).
    """
    return export(NpuLibExporter(envs_root), name, cfg, ws)


def ram_row(cfg: NpuLibVariantConfig) -> str:
    """The :data:`pipeline.core.resources.STAGE_RAM` row of a build: layer by layer, or the whole model at its load dtype."""
    if cfg.layer_by_layer:
        return "export_npu_lib"
    return "export_npu_lib_whole" if cfg.load_dtype == "float32" else "export_npu_lib_whole_16bit"


def call_worker(name: str, env: npu_lib_env.NpuLibEnv, command: str, args: list[str], cwd: Path) -> dict[str, Any]:
    """Run one worker command; a worker failure becomes a one-line stage error."""
    try:
        return npu_lib_env.run_worker(env.python, command, args, cwd)
    except npu_lib_env.WorkerError as err:
        if err.returncode == npu_lib_env.REFUSED:  # the worker refused the file before anything of it ran
            fail(f"{str(err).removeprefix('error: ')} (repair with `aipc repair export_npu_lib@{name}`)")
        if DISK_FULL.search(str(err)):  # its scratch (logits, the library's kernels) is in TMPDIR or beside the model
            scratch = Path(tempfile.gettempdir())
            free = size_text(shutil.disk_usage(scratch).free) if scratch.exists() else "nothing"
            fail(
                f"[npu_lib-{name}] {command}: the disk filled in the isolated environment's worker ({err}); "
                f"TMPDIR {scratch} has {free} free: free space there or set TMPDIR to a larger drive, and rerun"
            )
        kept = keep_traceback(err.traceback, name, command)
        fail(f"[npu_lib-{name}] {command} failed in the isolated environment: {err}{kept}")


DISK_FULL = re.compile(r"No space left on device|Errno 28|ENOSPC|There is not enough space on the disk")


def keep_traceback(text: str, name: str, command: str) -> str:
    """Save the worker's traceback under ``.aipc/logs`` (the error stays one line); `` (traceback: <file>)``."""
    if not text:
        return ""
    log = Path(".aipc") / "logs" / f"npu_lib-{name}-{command}-traceback.txt"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text, encoding="utf-8")
    except OSError:
        return ""
    return f" (traceback: {log.as_posix()})"


if __name__ == "__main__":  # the stage: `python -m pipeline.npu_lib.export <variant>`
    run_main(lambda: run_stage("npu_lib", "export"))
