"""Benchmark: where the peak resident memory of each export comes from, phase by phase.

Runs one export in this process with a 20 Hz sampler of ``/proc/self/status`` (RssAnon = memory
the process owns, RssFile = pages of memory-mapped files) and marks the phases of the upstream
calls it goes through (loading the PyTorch model, tracing + conversion, saving the IR, tokenizer
conversion, reading the IR, NNCF compression, saving the compressed IR). Prints one table per
export and merges the result into ``benchmarks/results/memory_breakdown.json``. Linux only.

Usage (the checkpoint is the one ``full_size_export.py`` builds):
    python benchmarks/memory_breakdown.py fp16 [--path plain|lean] [--work DIR]
    python benchmarks/memory_breakdown.py int4 | base | compress-int4 | npu-int4 | onnx-dml-int4
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "memory_breakdown.json"


# Runs in a child process: a thread of the export's own process cannot sample while a C call holds
# the GIL (OpenVINO's save_model does), which is exactly when the float exports peak.
SAMPLER = """
import sys, time
status, out = f"/proc/{sys.argv[1]}/status", sys.stdout
while True:
    try:
        fields = dict(l.split(":", 1) for l in open(status) if l.startswith(("RssAnon", "RssFile")))
    except OSError:
        break
    out.write(f"{time.monotonic()} {int(fields['RssAnon'].split()[0]) * 1024} {int(fields['RssFile'].split()[0]) * 1024}\\n")
    out.flush()
    time.sleep(0.05)
"""


class Sampler:
    """Samples RssAnon/RssFile of this process every 50 ms from a child process; keeps phase markers."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self.marks: list[tuple[float, str]] = []
        self._child: subprocess.Popen | None = None

    @staticmethod
    def read() -> tuple[int, int]:
        """(RssAnon, RssFile) of this process in bytes."""
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon", "RssFile")):
                name, value = line.split(":")
                fields[name] = int(value.split()[0]) * 1024
        return fields["RssAnon"], fields["RssFile"]

    def mark(self, name: str) -> None:
        """Start phase ``name`` now."""
        self.samples.append((time.monotonic(), *self.read()))
        self.marks.append((time.monotonic(), name))
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)

    def start(self) -> "Sampler":
        self.mark("start")
        self._child = subprocess.Popen([sys.executable, "-c", SAMPLER, str(os.getpid())],
                                       stdout=subprocess.PIPE, text=True)
        return self

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling; return one row per phase (duration, peak total/anon/file RSS)."""
        self.mark("end")
        self._child.terminate()
        lines = self._child.communicate()[0].splitlines()
        self.samples += [(float(t), int(a), int(f)) for t, a, f in (line.split() for line in lines if line.count(" ") == 2)]
        rows = []
        for (t0, name), (t1, _) in zip(self.marks, self.marks[1:]):
            window = [s for s in self.samples if t0 <= s[0] <= t1] or [min(self.samples, key=lambda s: abs(s[0] - t0))]
            top = max(window, key=lambda s: s[1] + s[2])
            rows.append({"phase": name, "seconds": round(t1 - t0, 1),
                         "peak_rss_gib": round((top[1] + top[2]) / 2**30, 2),
                         "anon_at_peak_gib": round(top[1] / 2**30, 2), "file_at_peak_gib": round(top[2] / 2**30, 2),
                         "peak_anon_gib": round(max(s[1] for s in window) / 2**30, 2)})
        return rows


def wrap(owner: Any, attr: str, label: str, sampler: Sampler, static: bool = False) -> None:
    """Mark a phase when ``owner.attr`` is called and when it returns."""
    original = getattr(owner, attr)

    @functools.wraps(original)
    def marked(*args: Any, **kwargs: Any) -> Any:
        sampler.mark(label)
        try:
            return original(*args, **kwargs)
        finally:
            sampler.mark(f"after {label}")

    setattr(owner, attr, staticmethod(marked) if static else marked)


def instrument(sampler: Sampler) -> None:
    """Hook the upstream calls every export path goes through."""
    import nncf
    import openvino
    from optimum.exporters.openvino import __main__ as ov_main
    from optimum.exporters.openvino import convert

    wrap(ov_main.TasksManager, "get_model_from_task", "load PyTorch model", sampler, static=True)
    wrap(convert, "convert_model", "trace + convert to OV", sampler)
    wrap(convert, "_save_model", "save float IR", sampler)
    wrap(ov_main, "maybe_convert_tokenizers", "convert tokenizers", sampler)
    wrap(nncf, "compress_weights", "NNCF compress", sampler)
    wrap(openvino, "save_model", "openvino.save_model", sampler)
    wrap(openvino.Core, "read_model", "read IR", sampler)


def instrument_onnx(sampler: Sampler) -> None:
    """Hook the phases of onnxruntime-genai's model builder (it imports its builders as top-level modules)."""
    import onnxruntime_genai.models.builder  # noqa: F401 - puts `builders` on sys.path

    base = sys.modules["builders.base"]
    wrap(base.Model, "load_weights", "load PyTorch model", sampler)
    wrap(base.Model, "to_nbits", "quantize MatMuls to int4", sampler)
    wrap(base.Model, "save_model", "save ONNX (quantize + write)", sampler)


def run_export(kind: str, path: str, model: Path, work: Path) -> Path:
    """Run one export into ``work/<kind>-<path>`` the way the pipeline stage does."""
    from pipeline.openvino.config import OpenVinoVariantConfig as C

    out, lean = work / f"{kind}-{path}", path == "lean"
    shutil.rmtree(out, ignore_errors=True)
    if kind in ("int4", "fp16", "int8"):
        from pipeline.openvino.export import run

        cfg = C(weight_format="int4", group_size=128, ratio=0.6, sym=True) if kind == "int4" else C(weight_format=kind)
        run(out.name, cfg, model, work, base_dir=None, lean=lean)  # from PyTorch, as optimum-cli does
    elif kind == "base":
        from pipeline.openvino.export_base import run

        run(model, out, lean=lean)
    elif kind == "compress-int4":
        from pipeline.openvino.export import run

        base = work / f"base-{path}"
        if not base.is_dir():
            raise SystemExit(f"no base IR in {base}: run `memory_breakdown.py base --path {path}` first")
        run(out.name, C(weight_format="int4", group_size=128, ratio=0.6, sym=True), model, work, base_dir=base, lean=lean)
    elif kind == "npu-int4":
        from pipeline.openvino.config import NpuVariantConfig
        from pipeline.openvino.export_npu import run

        run(out.name, NpuVariantConfig.from_conf(), model, work, base_dir=work / f"base-{path}")
    elif kind == "onnx-dml-int4":
        from pipeline.onnx.config import OnnxVariantConfig
        from pipeline.onnx.export import run

        run(out.name, OnnxVariantConfig.from_conf(execution_provider="dml", precision="int4", block_size=128, is_symmetric=True,
                                        algo_config="default", enable_dml_graph=True), model, work)
    return out


def print_table(kind: str, path: str, rows: list[dict[str, Any]], checkpoint_gib: float) -> None:
    """One Markdown table per export; the last line compares the peak with the checkpoint size."""
    print(f"\n{kind} ({path} path), checkpoint {checkpoint_gib:.2f} GiB")
    print("| phase | s | peak RSS GiB | anon / file at peak | peak anon GiB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['seconds']} | {r['peak_rss_gib']} | {r['anon_at_peak_gib']} / "
              f"{r['file_at_peak_gib']} | {r['peak_anon_gib']} |")
    peak = max(r["peak_rss_gib"] for r in rows)
    print(f"peak {peak} GiB = {peak / checkpoint_gib:.2f}x the checkpoint")


def main() -> None:
    """Build (or reuse) the checkpoint, run one export under the sampler, print and record the phases."""
    from full_size_export import build_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", choices=["int4", "fp16", "base", "compress-int4", "npu-int4", "onnx-dml-int4"])
    parser.add_argument("--path", choices=["plain", "lean"], default="lean")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "aipc-bench")
    args = parser.parse_args()
    model = build_checkpoint(args.work / "phi3-mini-shaped")
    checkpoint_gib = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**30
    sampler = Sampler().start()
    instrument(sampler)
    if args.export == "onnx-dml-int4":
        instrument_onnx(sampler)
    started = time.perf_counter()
    run_export(args.export, args.path, model, args.work)
    wall = time.perf_counter() - started
    rows = sampler.stop()
    print_table(args.export, args.path, rows, checkpoint_gib)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[f"{args.export}/{args.path}"] = {
        "command": f"python benchmarks/memory_breakdown.py {args.export} --path {args.path}",
        "checkpoint_gib": round(checkpoint_gib, 2), "wall_s": round(wall, 1),
        "peak_rss_gib": max(r["peak_rss_gib"] for r in rows), "phases": rows,
        "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
