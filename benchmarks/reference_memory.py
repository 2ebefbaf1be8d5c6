"""Benchmark: the ``reference`` stage on a full-size Phi-3-mini-shaped checkpoint, peak memory and time per step.

Runs ``pipeline.validation.reference.run`` in a fresh process (as DVC would) on the random bf16 checkpoint of
``full_size_export.py`` (built once; 7.1 GiB) with the default ``validate`` config (``model=local``), samples the
process tree's memory (``full_size_export.tree_memory``) every 0.2 s and splits the peak and the time by the
stage's own steps (load, teacher-forced, long-context, greedy). Prints a table and writes JSON.

Usage:
    python benchmarks/reference_memory.py [--work DIR] [--override validate.max_new_tokens=8 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_export import ROOT, build_checkpoint, tree_memory  # noqa: E402


def stage_command(model: Path, out: Path, overrides: list[str]) -> list[str]:
    """The reference stage on ``model`` with the default config, in a fresh interpreter."""
    given = [f"model.local_path={model}", "model=local", *overrides]
    return [
        sys.executable, "-c",
        "import sys; from pathlib import Path; from pipeline.core.config import ValidateConfig, build, compose; "
        "from pipeline.validation import reference; "
        f"cfg = build(ValidateConfig, compose({given!r})['validate']); "
        f"reference.run(cfg, Path(r'{model}'), Path(r'{out}'))",
    ]


def measure(cmd: list[str], progress: Path | None = None) -> dict:
    """Run ``cmd``; the peak memory and wall time of each step it announces (``... ``/``: done in``).

    Every 10 s the steps so far are written to ``progress`` (a run cut short still leaves its numbers).
    """
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start, steps, lines = time.perf_counter(), {"start": {"peak_gib": 0.0}}, []
    current = ["start"]

    def follow() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            text = line.strip().split("] ", 1)[-1]  # without the "[aipc HH:MM:SS] " prefix
            if text.endswith(" ..."):
                current[0] = text[:-4].split(" (")[0].split(" of ")[0][:40]
                steps[current[0]] = {"peak_gib": 0.0, "began_s": round(time.perf_counter() - start, 1)}
            elif ": done in " in text:
                steps[current[0]]["seconds"] = float(text.rsplit(": done in ", 1)[1].split()[0])

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    root, peak, written = psutil.Process(proc.pid), 0, time.perf_counter()
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            now = tree_memory(root) / 2**30
            peak = max(peak, now)
            steps[current[0]]["peak_gib"] = round(max(steps[current[0]]["peak_gib"], now), 2)
        if progress and time.perf_counter() - written > 10:
            written = time.perf_counter()
            progress.write_text(json.dumps({"running_s": round(written - start), "peak_rss_gib": round(peak, 2),
                                            "steps": steps, "tail": lines[-3:]}, indent=2))
        time.sleep(0.2)
    reader.join()
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_gib": round(peak, 2), "steps": steps, "tail": lines[-3:]}


def main() -> None:
    """Build the checkpoint if needed, run the stage once, print a table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "aipc-bench")
    parser.add_argument("--override", nargs="*", default=[], help="extra compose overrides, e.g. validate.x=y")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reference_memory.json")
    args = parser.parse_args()
    import psutil

    model = build_checkpoint(args.work / "phi3-mini-shaped")
    size = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**30
    load = os.getloadavg()
    result = measure(stage_command(model, args.work / "reference", args.override), args.work / "reference_progress.json")
    print(f"\ncheckpoint {size:.2f} GiB; exit {result['returncode']}; load average before {load}")
    print("| step | time | peak RSS |\n|---|---|---|")
    for name, s in result["steps"].items():
        print(f"| {name} | {s.get('seconds', '-')} s | {s['peak_gib']} GiB |")
    print(f"| **whole stage** | {result['wall_s']} s | {result['peak_rss_gib']} GiB ({result['peak_rss_gib'] / size:.2f}x) |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "checkpoint": "Phi-3-mini-4k shapes, random bf16", "checkpoint_gib": round(size, 2),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "load_average_before": load, "overrides": args.override, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **result,
    }, indent=2))


if __name__ == "__main__":
    main()
