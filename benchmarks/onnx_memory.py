"""Benchmark: the ONNX stages on a full-size Phi-3-mini-shaped checkpoint, peak memory and wall time of each.

Runs ``export_onnx@<v>`` (``pipeline.onnx.export.run``) and ``validate_onnx@<v>`` (``pipeline.onnx.validate.run``)
in fresh processes, as DVC would, on the random bf16 checkpoint of ``full_size_export.py`` (built once; 7.1 GiB),
and samples the process tree's memory (``full_size_export.tree_memory``: root RSS plus children's unique pages)
every 0.2 s, split by the steps each stage announces. Prints a table and writes JSON (one entry per run; a
later run of the same entry replaces it).

Validation needs the full-size reference (``reference_memory.py`` writes it to ``<work>/reference``). Random
weights fail every fidelity threshold, so a validation ends with a failed cell: its memory and time still count.
``--validate-override`` shortens a validation where its memory does not depend on it (``validate.repeats=1``):
the longest window, which sets the KV cache and the logits, comes from the reference and is kept.

Usage:
    python benchmarks/onnx_memory.py [--work DIR] --only export-cpu_int4 validate-dml_fp16 ...
        [--validate-override validate.repeats=1 validate.warmup=0]

Entries: ``export-<v>`` and ``validate-<v>`` for v in dml_int4, cpu_int4, dml_fp16 (conf/onnx/default.yaml).
Every run skips the resource check (``AIPC_SKIP_RESOURCE_CHECK=1``): it measures what the check estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_export import ROOT, build_checkpoint  # noqa: E402
from reference_memory import measure  # noqa: E402

VARIANTS = ("dml_int4", "cpu_int4", "dml_fp16")
STAGE_START = "from pipeline.core.memory import use_huge_pages; use_huge_pages(); "  # what export_onnx does first


def export_command(model: Path, out_root: Path, variant: str) -> list[str]:
    """``export_onnx@<variant>`` with the default config, into ``out_root/<variant>``, in a fresh interpreter."""
    return [
        sys.executable, "-c",
        STAGE_START + "from pathlib import Path; from pipeline.core.config import build, compose; "
        "from pipeline.onnx.config import OnnxVariantConfig; from pipeline.onnx import export; "
        f"cfg = build(OnnxVariantConfig, compose(['model=local', 'model.local_path={model}'])['onnx']['{variant}']); "
        "from pipeline.core.workspace import Workspace as W; "
        f"export.run('{variant}', cfg, W(model=Path(r'{model}'), out=Path(r'{out_root}')))",
    ]


def validate_command(model: Path, work: Path, variant: str, overrides: list[str]) -> list[str]:
    """``validate_onnx@<variant>`` against ``<work>/reference``, metrics to ``<work>/metrics``."""
    given = [f"model.local_path={model}", "model=local", *overrides]
    return [
        sys.executable, "-c",
        "from pathlib import Path; from pipeline.core.config import ValidateConfig, build, compose; "
        "from pipeline.onnx import validate; "
        f"cfg = build(ValidateConfig, compose({given!r})['validate']); "
        "from pipeline.core.workspace import Workspace as W; "
        f"validate.run('{variant}', cfg, W(out=Path(r'{work / 'onnx'}'), reference=Path(r'{work / 'reference' / 'reference.json'}'), "
        f"metrics=Path(r'{work / 'metrics'}')))",
    ]


def main() -> None:
    """Run the chosen entries one after another, print a table and merge them into the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "aipc-bench")
    parser.add_argument("--only", nargs="+", required=True, help="export-<v> / validate-<v>")
    parser.add_argument("--validate-override", nargs="*", default=[], help="compose overrides for validate")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_memory.json")
    args = parser.parse_args()
    import psutil

    os.environ["AIPC_SKIP_RESOURCE_CHECK"] = "1"
    model = build_checkpoint(args.work / "phi3-mini-shaped")
    size = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**30
    saved = json.loads(args.out.read_text()) if args.out.exists() else {"entries": {}}
    for entry in args.only:
        kind, _, variant = entry.partition("-")
        if kind not in ("export", "validate") or variant not in VARIANTS:
            raise SystemExit(f"unknown entry {entry!r}: export-<v> or validate-<v>, v in {', '.join(VARIANTS)}")
        if kind == "export":
            shutil.rmtree(args.work / "onnx" / variant, ignore_errors=True)
            cmd = export_command(model, args.work / "onnx", variant)
        else:
            cmd = validate_command(model, args.work, variant, args.validate_override)
        load = os.getloadavg()
        result = measure(cmd)
        result.update(
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_average_before=load,
            overrides=args.validate_override if kind == "validate" else [],
        )
        saved["entries"][entry] = result
        print(f"{entry}: exit {result['returncode']}, {result['wall_s']} s, peak {result['peak_rss_gib']} GiB")
        for name, step in result["steps"].items():
            print(f"    {name}: {step.get('seconds', '-')} s, peak {step['peak_gib']} GiB")
    saved.update(
        checkpoint="Phi-3-mini-4k shapes, random bf16", checkpoint_gib=round(size, 2),
        machine=f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
