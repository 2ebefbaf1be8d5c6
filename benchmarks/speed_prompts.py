"""Benchmark: what the validation speed runs cost per cell on the full-size model (issue 20.5).

Exports the full-size Phi-3-mini-shaped checkpoint to the pipeline's int4 IR once (base IR, then int4), loads it in
``openvino_genai.LLMPipeline`` on CPU at the device's defaults, as ``validate`` does, and times single speed runs
(``perf_new_tokens`` greedy tokens after each ``validate.perf_prompt_tokens`` prompt, from the held-out text).
From those it gives what one cell's speed runs cost with ``warmup`` + ``repeats`` runs, and with
``validate.perf_budget_s``. Prints a table and writes ``benchmarks/results/speed_prompts.json``.

Usage:
    python benchmarks/speed_prompts.py [--work DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def export_int4(model: Path, work: Path) -> Path:
    """The pipeline's int4 IR of ``model`` under ``work`` (two stage processes, as ``dvc repro`` runs them)."""
    from full_size_export import commands

    ir = work / "aipc" / "int4"
    if not (ir / "openvino_model.xml").is_file():
        base, compress = commands(model, work)["aipc-int4"]
        for cmd in ([] if (work / "aipc" / "base" / "openvino_model.xml").is_file() else [base]) + [compress]:
            subprocess.run(cmd, cwd=ROOT, check=True)
    return ir


def time_runs(ir: Path, prompts: dict[str, list[int]], new_tokens: int, runs: int) -> dict[str, list[float]]:
    """Wall seconds of each of ``runs`` speed runs per prompt length (the first one is the warm-up)."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(ir), "CPU")
    cfg = pipe.get_generation_config()
    cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = new_tokens, False, True
    out: dict[str, list[float]] = {}
    for name, ids in prompts.items():
        out[name] = []
        for _ in range(runs):
            start = time.perf_counter()
            pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), cfg)
            out[name].append(round(time.perf_counter() - start, 1))
            print(f"  {name} ({len(ids)} tokens): {out[name][-1]} s", flush=True)
    return out


def cell_cost(seconds: list[float], warmup: int, repeats: int, budget_s: float) -> tuple[float, int]:
    """Seconds one prompt length takes in a cell, and its measured runs, under ``validate``'s rule."""
    per_run = sorted(seconds)[len(seconds) // 2]
    spent, measured = 0.0, 0
    for i in range(warmup + repeats):
        if i > warmup and budget_s and spent >= budget_s:
            break
        spent += seconds[0] if i == 0 else per_run
        measured += i >= warmup
    return round(spent, 1), measured


def main() -> None:
    """Export once, time the speed runs, print the table, write the JSON."""
    from pipeline.core.config import ValidateConfig, build, compose

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/work/bench"))
    parser.add_argument("--runs", type=int, default=3, help="speed runs timed per prompt length (first = warm-up)")
    args = parser.parse_args()
    cfg = build(ValidateConfig, compose([])["validate"])
    reference = json.loads((args.work / "reference" / "reference.json").read_text())
    ir = export_int4(args.work / "phi3-mini-shaped", args.work)
    seconds = time_runs(ir, reference["perf_prompts"], cfg.perf_new_tokens, args.runs)
    rows: dict[str, Any] = {}
    for name, runs in seconds.items():
        plain = cell_cost(runs, cfg.warmup, cfg.repeats, 0)
        capped = cell_cost(runs, cfg.warmup, cfg.repeats, cfg.perf_budget_s)
        rows[name] = {"prompt_tokens": len(reference["perf_prompts"][name]), "run_s": runs,
                      "cell_s_uncapped": plain[0], "cell_s_budget": capped[0], "measured_runs_budget": capped[1]}
    result = {"artifact": "int4 IR of the full-size Phi-3-mini-shaped checkpoint", "device": "CPU (defaults)",
              "perf_new_tokens": cfg.perf_new_tokens, "warmup": cfg.warmup, "repeats": cfg.repeats,
              "perf_budget_s": cfg.perf_budget_s, "prompts": rows,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count()}}
    print("| prompt | tokens | one run (s) | cell, warm-up + 3 runs (s) | cell, perf_budget_s (s, runs) |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['prompt_tokens']} | {row['run_s'][1:] or row['run_s']} | {row['cell_s_uncapped']} | "
              f"{row['cell_s_budget']} ({row['measured_runs_budget']}) |")
    out = ROOT / "benchmarks" / "results" / "speed_prompts.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
