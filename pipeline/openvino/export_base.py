"""Stage ``export_openvino_base``: the uncompressed OpenVINO IR that every int4/int8 variant compresses.

Tracing PyTorch to IR is the slow, memory-hungry half of an export. It is done once here, with
exactly the call ``optimum-cli`` makes on its way to int4/int8 (``main_export`` with a weight
quantization request, which keeps the checkpoint's 16-bit weights uncompressed). Each variant then
reads this IR (memory-mapped) and compresses it with NNCF, so a group-size or ratio sweep never
re-exports the model. Output: ``artifacts/openvino_base`` with ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import ARTIFACTS, remove_tree, staged_dir, sweep_stale
from pipeline.core.errors import fail, run_main
from pipeline.core.log import say, step
from pipeline.core.manifest import read_manifest, write_manifest
from pipeline.core.memory import MappedPageTrimmer, use_huge_pages, weight_files
from pipeline.core.resources import check_resources
from pipeline.core.workspace import nncf_cache
from pipeline.openvino.config import OpenVinoVariantConfig
from pipeline.openvino.ir_inspect import check_rotary, inspect_ir
from pipeline.openvino.lean import needs
from pipeline.openvino.upstream import TOKENIZER_FILES, export_float, quantization_dict

MODEL_DIR = ARTIFACTS / "model"
OUT_DIR = ARTIFACTS / "openvino_base"
MODEL_FILES = ("openvino_model.xml", "openvino_model.bin")
STATISTICS_CACHE = "nncf_statistics"  # folders under pipeline.core.workspace.nncf_cache (default .aipc/)
SENSITIVITY_CACHE = "nncf_sensitivity"


# The int4 request main_export is given for the uncompressed base IR (optimum-intel's own int4 defaults), spelled out
# here: this stage reads params.yaml, never conf/.
BASE_REQUEST: dict[str, Any] = {
    "weight_format": "int4",
    "group_size": 128,
    "ratio": 1.0,
    "sym": False,
    "backup_precision": "int8_asym",
    "all_layers": False,
    "awq": False,
    "scale_estimation": False,
    "gptq": False,
    "dataset": None,
    "num_samples": None,
    "sensitivity_metric": None,
    "group_size_fallback": "error",
    "keep_float": [],
    "cpu_inference_precision": None,
}


def base_ov_config() -> Any:
    """An ``OVConfig`` that makes ``main_export`` write the uncompressed IR the int4/int8 path starts from."""
    from optimum.intel import OVConfig

    return OVConfig(quantization_config=quantization_dict(OpenVinoVariantConfig(**BASE_REQUEST)))


def compress_from_base(base_dir: Path, model_dir: Path, out: Path, quantization_config: Any, lean: bool = True) -> None:
    """Compress the IR in ``base_dir`` into ``out`` (base left untouched), as ``_main_quantize`` would.

    Same steps as optimum-intel's ``_main_quantize`` (load with ``compile=False``, ``_apply_quantization``,
    immediate save), but reading from the shared base folder and saving into a new one. ``lean``
    hands the pages of the memory-mapped base weights back while NNCF reads them.
    """
    from optimum.intel import OVModelForCausalLM

    make_placeholders(out)
    with MappedPageTrimmer(weight_files(base_dir) if lean else []), reuse_data_free_sensitivity(base_dir, lean):
        model = load_base_quietly(OVModelForCausalLM, base_dir)
        model._apply_quantization(
            quantization_config,
            compile_only=False,
            compile_model=False,
            model_name_or_path=str(model_dir),
            trust_remote_code=False,
            save_directory=out,
            immediate_save=True,
        )
        del model
    for path in Path(base_dir).iterdir():  # tokenizer IR, configs, chat template
        if path.is_file() and path.name not in (*MODEL_FILES, "manifest.json") and not (out / path.name).exists():
            shutil.copyfile(path, out / path.name)  # content only: no read-only flag from the DVC cache


def load_base_quietly(model_class: Any, base_dir: Path) -> Any:
    """``from_pretrained`` of the local base IR without optimum-intel's stray offline message.

    In offline mode optimum-intel's ``modeling_base`` treats a local ``Path`` as a hub id first and logs
    "Path.replace() takes 2 positional arguments but 3 were given" before loading the folder correctly.
    """
    quiet = logging.getLogger("optimum.intel.openvino.modeling_base")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return model_class.from_pretrained(base_dir, export=False, compile=False, use_cache=True)
    finally:
        quiet.setLevel(level)


def make_placeholders(out: Path) -> None:
    """Empty, writable stand-ins for the files optimum's immediate save replaces in ``out``.

    optimum-intel's ``_weight_only_quantization`` with ``immediate_save`` expects the model files in the save
    directory and unlinks them before moving its new ones in (``ov_model_path.unlink()``). Links to the base IR
    would do on Linux, but DVC's cache files are read-only and on NTFS a hard link shares that flag, so
    Windows refuses the unlink (WinError 5). New empty files are always ours to delete.
    """
    for name in MODEL_FILES:
        (out / name).write_bytes(b"")


@contextlib.contextmanager
def reuse_data_free_sensitivity(base_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Compute NNCF's data-free mixed-precision sensitivities once per base IR and reuse them.

    With ``ratio < 1`` and no dataset, NNCF ranks layers by ``1 / int8 error`` of each weight
    (``DataFreeCriterion``): it depends on the weights only, not on group size or ratio, yet every
    sweep point recomputes it over the whole model. The scores are cached per base-IR hash under
    ``.aipc/nncf_sensitivity`` (or ``$AIPC_NNCF_CACHE``) and given back unchanged (same floats, same ranking), so the IR is
    byte-identical. Data-aware criteria (subclasses) are never cached. ``enabled=False`` (the plain
    path) computes them every time, as upstream does.
    """
    if not enabled:
        yield
        return
    from nncf.quantization.algorithms.weight_compression import mixed_precision

    from pipeline.core.artifacts import write_json_atomic

    key = read_manifest(base_dir)["files"]["openvino_model.bin"]["sha256"][:16]
    cache_file = nncf_cache(SENSITIVITY_CACHE) / f"{key}.json"
    original = mixed_precision.DataFreeCriterion._calc_sensitivity

    def cached(self: Any, model: Any, graph: Any, weight_params: list, statistic_points: Any = None) -> list:
        if type(self) is not mixed_precision.DataFreeCriterion:
            return original(self, model, graph, weight_params, statistic_points)
        names = [f"{wp.node_with_weight.node_name}:{wp.weight_port_id}" for wp in weight_params]
        known = json.loads(cache_file.read_text(encoding="utf-8")) if cache_file.is_file() else {}
        if all(n in known for n in names):
            say(f"reusing the mixed-precision sensitivities of {len(names)} weights ({cache_file})")
            return [known[n] for n in names]
        scores = [float(x) for x in original(self, model, graph, weight_params, statistic_points)]
        write_json_atomic(cache_file, {**known, **dict(zip(names, scores))})
        return scores

    mixed_precision.DataFreeCriterion._calc_sensitivity = cached
    try:
        yield
    finally:
        mixed_precision.DataFreeCriterion._calc_sensitivity = original


def statistics_path(ir_manifest: dict, dataset: Any, num_samples: int | None) -> Path:
    """The cache folder of NNCF's data-aware statistics for one IR and one dataset (reused across a sweep).

    ``ir_manifest``: the base IR's manifest when compressing it (its files' hashes are the key), else the
    checkpoint's. ``dataset``: what NNCF gets (the held-out texts themselves, or a dataset name).
    """
    key = json.dumps([sorted((k, v["sha256"]) for k, v in ir_manifest["files"].items()), dataset, num_samples])
    return nncf_cache(STATISTICS_CACHE) / hashlib.sha256(key.encode()).hexdigest()[:16]


@contextlib.contextmanager
def statistics_once(path: Path) -> Iterator[Path]:
    """The folder to hand NNCF as ``statistics_path``: ``path`` when it exists, else a private one moved there after.

    NNCF collects statistics into ``statistics_path`` only when the folder does not exist, and loads whatever
    is in it otherwise: a point killed while NNCF wrote there would leave a partial folder that every later
    point sharing the cache loads (or fails on). Here the first point collects into ``.<key>.tmp-<pid>`` and
    renames it to ``path`` once its compression succeeded, so ``path`` only ever appears whole; a point that
    collected at the same time keeps the first one's folder and drops its own.
    """
    if path.is_dir():
        say(f"reusing NNCF statistics ({path})")
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)  # what points killed while collecting left (their pids are gone)
    private = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    remove_tree(private)  # left by a killed process that had this pid
    try:
        yield private
        if private.is_dir():
            with contextlib.suppress(OSError):  # lost the race: ``path`` is another point's whole folder
                os.rename(private, path)  # windows-ok: failing where ``path`` exists is the point (first one wins)
    finally:
        remove_tree(private)


def run(model_dir: Path = MODEL_DIR, out_dir: Path = OUT_DIR, lean: bool = True) -> dict:
    """Export the uncompressed IR (plus tokenizer IR) of the model in ``model_dir`` to ``out_dir``."""
    source = read_manifest(model_dir)
    check_resources("exporting the base IR", *needs("export", "base", model_dir, lean), out_dir.parent)
    with staged_dir(out_dir) as tmp:
        with step(f"exporting {source.get('model')} to the uncompressed base IR") as timing:
            export_float(model_dir, tmp, base_ov_config(), lean)
        summary = inspect_ir(tmp / "openvino_model.xml")
        missing = [f for f in TOKENIZER_FILES if not (tmp / f).is_file()]
        if missing or summary["weight_layers"]["int4"] or summary["weight_layers"]["int8"]:
            fail(
                f"base IR is not an uncompressed IR with tokenizers: layers {summary['weight_layers']}, missing {missing}"
            )
        if problems := check_rotary(summary):
            fail(f"base IR: {'; '.join(problems)}")
        manifest = write_manifest(
            tmp,
            stage="export_openvino_base",
            format="openvino-ir-uncompressed",
            source={k: source.get(k) for k in ("model", "source", "repo_id", "revision", "license")},
            source_files_sha256={k: v["sha256"] for k, v in source["files"].items()},
            weight_layers=summary["weight_layers"],
            rotary_embedding=summary["rotary"],
            timings={"export_s": timing["seconds"]},
        )
    say(f"base IR ready in {out_dir} ({manifest['size_bytes'] / 2**20:.1f} MiB)")
    return manifest


def main() -> None:
    """DVC entry point: ``python -m pipeline.openvino.export_base``."""
    from pipeline.core.leftovers import sweep_leftovers

    sweep_leftovers()  # killed stages' temporaries anywhere under artifacts/
    run()


if __name__ == "__main__":
    use_huge_pages()  # restarts this process once, before the heavy imports (Linux)
    run_main(main)
