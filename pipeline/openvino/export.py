"""Stage ``export_openvino@<variant>``: export the downloaded model to OpenVINO IR (int4 / int8 / fp16).

Thin wrapper over optimum-intel's own export path (the one ``optimum-cli export openvino`` takes):
``main_export`` writes the float IR and the tokenizer/detokenizer IR, then weight compression with
NNCF runs on it. The IR is inspected afterwards and the stage fails if it does not match the request.
Output: ``artifacts/openvino/<variant>`` with ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from pipeline.core.artifacts import ARTIFACTS
from pipeline.core.config import ConfigError
from pipeline.core.errors import fail, run_main
from pipeline.core.family import Exporter, ExportJob, Needs, export
from pipeline.core.log import say, step
from pipeline.core.manifest import read_manifest
from pipeline.core.memory import use_huge_pages
from pipeline.core.stage import run_stage
from pipeline.core.workspace import PROJECT, Workspace
from pipeline.openvino import runtime_config
from pipeline.openvino.config import OpenVinoVariantConfig
from pipeline.openvino.ir_inspect import check_matches_request, check_rotary, inspect_ir
from pipeline.openvino.lean import needs
from pipeline.openvino.upstream import TOKENIZER_FILES, compress_like_optimum_cli, export_float, quantization_dict

BASE_DIR = ARTIFACTS / "openvino_base"
ROTARY_VERIFIED = "rotary constants f32; cos/sin (f32 compute) match transformers' within tolerance"


MIN_ADJUSTED_GROUP = 32  # NNCF's AdvancedCompressionParameters.min_adjusted_group_size


def misfit_widths(group_size: int, model_config: dict) -> dict[str, int]:
    """The layer widths (weights' input sizes) that ``group_size`` does not divide; none for channel-wise (-1)."""
    widths = {name: model_config.get(name) for name in ("hidden_size", "intermediate_size")}
    return {name: w for name, w in widths.items() if w and group_size != -1 and w % group_size}


def adjusted_group(width: int) -> int | None:
    """The group NNCF's ``group_size_fallback=adjust`` gives a ``width`` wide layer: its largest power-of-two
    divisor, or ``None`` (NNCF then keeps the layer at the backup precision) when that is under 32."""
    group = width & -width
    return group if group >= MIN_ADJUSTED_GROUP else None


def check_group_size(cfg: OpenVinoVariantConfig, model_config: dict, key: str = "openvino.<v>") -> None:
    """Fail early when the int4 group size does not divide the model's layer widths (``error``), or say in one
    line which group NNCF uses instead (``adjust``) or that those layers stay in float (``ignore``).

    ``key`` is the variant's params key (``openvino.int4``): the error spells the overrides that fix it.
    """
    misfits = misfit_widths(cfg.group_size, model_config) if cfg.weight_format == "int4" else {}
    if not misfits:
        return
    problem = f"group_size {cfg.group_size} does not divide " + " or ".join(f"{k} {w}" for k, w in misfits.items())
    if cfg.group_size_fallback == "error":
        widths = [w for k in ("hidden_size", "intermediate_size") if (w := model_config.get(k))]
        divisors = [g for g in (128, 64, 32) if all(w % g == 0 for w in widths)]
        size = f"{divisors[0]}" if divisors else "-1 (channel-wise)"
        size += f" (or {', '.join(map(str, divisors[1:]))})" if divisors[1:] else ""
        raise ConfigError(f"{problem}: set {key}.group_size={size}, or {key}.group_size_fallback=adjust")
    if cfg.group_size_fallback == "ignore":
        say(f"{problem}: NNCF leaves those layers in float ({key}.group_size_fallback=ignore)")
        return
    groups = [(w, adjusted_group(w)) for w in misfits.values()]
    uses = ", ".join(
        f"group {g} for {w}-wide inputs" if g else f"{cfg.backup_precision} for {w}-wide inputs" for w, g in groups
    )
    say(f"{problem}: NNCF compresses those layers with {uses} ({key}.group_size_fallback=adjust)")


AUTO_NAMED_LAYER = re.compile(r'(<layer id="(\d+)" name=")([A-Za-z]+)_\d+(" type=")')


def stable_layer_names(xml_path: Path) -> int:
    """Rename auto-named layers (``Convert_28831``) after their layer id (``Convert_19``); returns how many.

    OpenVINO names new nodes from a per-process counter, so the nodes NNCF adds are numbered by whatever the
    process created before: a cold sensitivity cache gives ``Convert_28831`` where a warm one gives
    ``Convert_6498``, and the same inputs would give a different ``.xml`` (and rerun every stage below it).
    Layer ids are the serialized order, the same for the same graph; only the XML changes, the ``.bin`` not.
    """
    text = xml_path.read_text(encoding="utf-8")
    renamed, count = AUTO_NAMED_LAYER.subn(lambda m: f"{m.group(1)}{m.group(3)}_{m.group(2)}{m.group(4)}", text)
    if count:
        tmp = xml_path.with_name(xml_path.name + ".renamed")
        tmp.write_text(renamed, encoding="utf-8", newline="")
        os.replace(tmp, xml_path)
    return count


def stable_statistics_path(xml_path: Path, used: str, cached: Path) -> bool:
    """Record the statistics folder NNCF read in the IR as ``nncf_statistics/<key>``; whether it was recorded.

    NNCF writes ``statistics_path`` into ``rt_info['nncf']['weight_compression']``: where this run found the cache
    (a private folder while collecting, a workspace's or a Ray node's cache) would make one point's ``.xml``
    differ from run to run and machine to machine. The key names the statistics themselves.
    """
    text = xml_path.read_text(encoding="utf-8")
    written = f"'statistics_path': {used!r}"  # as XML may escape it: a path like C:\Users\O'Brien or R&D
    stable = text
    for form in (written, escape(written), escape(written, {"'": "&apos;", '"': "&quot;"})):
        stable = stable.replace(form, escape(f"'statistics_path': 'nncf_statistics/{cached.name}'"))
    if stable != text:
        tmp = xml_path.with_name(xml_path.name + ".stable")
        tmp.write_text(stable, encoding="utf-8", newline="")
        os.replace(tmp, xml_path)
    return stable != text


def build_ir(
    tmp: Path, name: str, cfg: OpenVinoVariantConfig, model_dir: Path, base_dir: Path | None = None, lean: bool = True
) -> dict[str, float]:
    """Export and compress into the (temporary) folder ``tmp`` with stable bytes; return the timings.

    With ``base_dir`` (the ``export_openvino_base`` output), int4/int8 variants compress that IR
    instead of re-exporting from PyTorch; the result is the same as the from-scratch path.

    Raises:
        StageError: When tokenizer conversion failed or NNCF did not record its statistics as expected.
    """
    from optimum.intel import OVConfig

    from pipeline.openvino.export_base import compress_from_base, statistics_once, statistics_path

    qdict = quantization_dict(cfg) if cfg.compressed else None
    t_export: dict = {"seconds": 0.0}
    t_compress: dict = {"seconds": 0.0}
    stats = None
    with contextlib.ExitStack() as stack:
        if qdict and qdict["dataset"] is not None:  # collected once per IR (base IR, else checkpoint) and dataset
            source = read_manifest(base_dir if base_dir is not None else model_dir)
            stats = statistics_path(source, qdict["dataset"], cfg.num_samples)
            qdict["statistics_path"] = str(stack.enter_context(statistics_once(stats)))
        ov_config = OVConfig(quantization_config=qdict) if qdict else OVConfig(dtype=cfg.weight_format)
        if qdict and base_dir is not None:
            with step(f"[{name}] compressing the base IR to {cfg.weight_format} with NNCF") as t_compress:
                compress_from_base(base_dir, model_dir, tmp, ov_config.quantization_config, lean)
        else:
            with step(f"[{name}] exporting {model_dir} to OpenVINO IR") as t_export:
                export_float(model_dir, tmp, ov_config, lean)
            if qdict:
                with step(f"[{name}] compressing weights to {cfg.weight_format} with NNCF") as t_compress:
                    compress_like_optimum_cli(model_dir, tmp, ov_config.quantization_config, lean)
    missing = [f for f in TOKENIZER_FILES if not (tmp / f).is_file()]
    if missing:
        fail(f"tokenizer conversion produced no {', '.join(missing)}: check openvino-tokenizers matches openvino")
    if qdict:
        stable_layer_names(tmp / "openvino_model.xml")
    if (
        qdict
        and stats is not None
        and not stable_statistics_path(tmp / "openvino_model.xml", qdict["statistics_path"], stats)
    ):
        fail(f"[{name}] NNCF did not record statistics_path {qdict['statistics_path']} in the IR as expected")
    return {"export_s": t_export["seconds"], "compress_s": t_compress["seconds"]}


def inspect_built(tmp: Path, name: str, cfg: OpenVinoVariantConfig) -> dict[str, Any]:
    """The IR's summary (:func:`inspect_ir`); fails in one line when it does not match the request."""
    summary = inspect_ir(tmp / "openvino_model.xml")
    problems = check_matches_request(summary, cfg.weight_format, cfg.ratio, cfg.keep_float) + check_rotary(summary)
    if problems:
        fail(f"[{name}] exported IR does not match the request: {'; '.join(problems)}")
    say(f"[{name}] weight layers: {summary['weight_layers']}")
    return summary


def manifest_fields(source: dict, cfg: Any, summary: dict) -> dict[str, Any]:
    """Manifest entries shared by every OpenVINO IR artifact (source, parameters, structure)."""
    return {
        "source": {k: source.get(k) for k in ("model", "source", "repo_id", "revision", "license")},
        "source_files_sha256": {k: v["sha256"] for k, v in source["files"].items()},
        "parameters": vars(cfg).copy(),
        "weight_layers": summary["weight_layers"],
        "nncf_rt_info": summary["nncf"],
        "layers": summary["layers"],
        "timings": summary["timings"],
        "rotary_embedding": summary.get("rotary"),
        "tied_embeddings": summary.get("tied_embeddings"),  # the checkpoint's tie, kept in the IR or not, precisions
        "runtime_config": summary.get("runtime_config"),  # runtime_config.json: the properties its loaders pass
    }


def base_of(base_dir: Path | None) -> Path | None:
    """The base IR to compress from, when it was built (``None``: export from PyTorch)."""
    return base_dir if base_dir and base_dir.is_dir() else None


@dataclass(frozen=True)
class OpenVinoExporter:
    """The OpenVINO IR family's export steps (:func:`pipeline.core.family.export` runs them)."""

    base_dir: Path | None = BASE_DIR  # the uncompressed base IR to compress from (None or missing: from PyTorch)
    lean: bool = True  # the low-memory path (pipeline.openvino.lean); False runs the plain upstream calls
    family: str = "openvino"
    stage: str = "export_openvino"

    def check(self, job: ExportJob[OpenVinoVariantConfig]) -> None:
        """The int4 group size against the layer widths; whether the base IR is compressed or PyTorch exported."""
        check_group_size(job.cfg, job.model_config, f"openvino.{job.name}")
        job.facts["base"] = base = base_of(self.base_dir)
        job.facts["from_base"] = bool(base) and job.cfg.compressed

    def needs(self, job: ExportJob[OpenVinoVariantConfig]) -> Needs:
        """The measured RAM of compressing (or exporting) at this weight format, disk for the IR."""
        from_base, fmt = job.facts["from_base"], job.cfg.weight_format
        what = f"[{job.name}] {'compressing' if from_base else 'exporting'} to {fmt}"
        return Needs(what, *needs("compress" if from_base else "export", fmt, job.model_dir, self.lean))

    def build(self, job: ExportJob[OpenVinoVariantConfig], tmp: Path) -> None:
        """The IR, and the runtime config its loaders pass."""
        job.facts["timings"] = build_ir(tmp, job.name, job.cfg, job.model_dir, job.facts["base"], self.lean)
        job.facts["runtime_config"] = runtime_config.write(tmp, job.cfg.cpu_inference_precision)  # not in the IR

    def inspect(self, job: ExportJob[OpenVinoVariantConfig], tmp: Path) -> dict[str, Any]:
        """Weight precisions, rt_info and rotary constants, checked against the request."""
        summary = inspect_built(tmp, job.name, job.cfg)
        return {**summary, "timings": job.facts["timings"], "runtime_config": job.facts["runtime_config"]}

    def manifest_fields(self, job: ExportJob[OpenVinoVariantConfig], summary: dict[str, Any]) -> dict[str, Any]:
        """The IR's fields (:func:`manifest_fields`), where it was compressed from and what was verified."""
        return {
            "format": "openvino-ir",
            **manifest_fields(job.source, job.cfg, summary),
            "compressed_from": "openvino_base" if job.facts["from_base"] else "pytorch",
            "verified": {
                "structure": "weight precisions and rt_info match request",
                "rotary_embedding": ROTARY_VERIFIED,
            },
        }

    def ready(self, job: ExportJob[OpenVinoVariantConfig], manifest: dict[str, Any]) -> str:
        """Where the IR is."""
        return f"[{job.name}] IR ready in {job.out}"


EXPORTER: Exporter[OpenVinoVariantConfig] = OpenVinoExporter()  # mypy checks the steps against the Protocol


def run(
    name: str,
    cfg: OpenVinoVariantConfig,
    ws: Workspace = PROJECT,
    *,
    base_dir: Path | None = BASE_DIR,
    lean: bool = True,
) -> dict:
    """Export variant ``name`` of the checkpoint ``ws.model_dir`` to ``ws.root("openvino")/name``.

    Args:
        name: Variant name (the key under ``openvino`` in params.yaml).
        cfg: Its weight format and compression parameters.
        ws: Where the checkpoint is and the IR folders go.
        base_dir: Uncompressed base IR to compress from (``None``: export from PyTorch).
        lean: Use the low-memory path (:mod:`pipeline.openvino.lean`); ``False`` runs the plain upstream calls.

    Returns:
        The manifest written next to the IR.
    """
    return export(OpenVinoExporter(base_dir, lean), name, cfg, ws)


if __name__ == "__main__":  # the stage: `python -m pipeline.openvino.export <variant>`
    use_huge_pages()  # restarts this process once, before the heavy imports (Linux)
    run_main(lambda: run_stage("openvino", "export"))
