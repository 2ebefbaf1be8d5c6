"""Benchmark: the whole default ``dvc repro``, stage by stage: wall time and peak memory of each stage.

Clones this repository at HEAD into ``--work`` (a fresh project, as a user has it), composes the default
pipeline on a model, runs ``aipc repro`` (``dvc repro`` with this venv's Python for every stage) and samples the
memory of the whole process tree once a second: the root's RSS plus each child's unique pages (USS), as
``full_size_export.py`` measures. Each sample is charged to the stage DVC is running (its ``Running stage``
line). Beside it, the tree's private anonymous memory (``/proc/<pid>/smaps_rollup`` ``Anonymous`` + ``Swap``,
:func:`tree_private`): what Windows charges a process (its commit), where mapped weight pages are file-backed and
dropped under pressure; ``pipeline.core.resources`` derives the Windows RAM rows from it. Prints a Markdown table
and writes ``benchmarks/results/full_pipeline[-<model>].json``.

Models: ``full`` (default) is the random-weight bf16 checkpoint with Phi-3-mini-4k's exact shapes that
``full_size_export.py`` builds (7.1 GiB; fidelity is meaningless on random weights, so failed cells are
expected and recorded: the ``verdict`` stage fails last, which this benchmark reports but does not count
as a failure); ``tiny`` is the embedded tiny Phi-3 (the demo), to check the benchmark itself in a minute.

Usage:
    python benchmarks/full_pipeline.py [--model full|tiny] [--work DIR] [--budget-gib 8] [--stages validate@int4 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
SAMPLE_EVERY_S = 1.0


def sibling(name: str) -> Any:
    """Another benchmark script of this folder, as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_project(work: Path, keep: bool = False) -> Path:
    """A clone of this repository at HEAD (committed files only) with its native page trimmer built, like a user's install.

    ``keep``: an earlier run's project is brought to HEAD instead (``git pull``), its outputs and DVC cache kept, so
    ``dvc repro`` runs only the stages whose code or inputs changed.
    """
    project = work / "project"
    if keep and (project / ".git").is_dir():
        subprocess.run(["git", "pull", "-q", "--ff-only", str(ROOT), "HEAD"], cwd=project, check=True)
    else:
        shutil.rmtree(project, ignore_errors=True)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    # what `python bootstrap.py install` builds into the package: the page trimmer the lean paths need (Linux)
    build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    subprocess.run(build, cwd=project, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return project


def tree_private(root: Any) -> int:
    """Private anonymous bytes of a process tree (Linux): each process's ``Anonymous`` plus ``Swap`` pages.

    Anonymous pages are what a process allocated (heaps, arenas, copied-on-write pages of private mappings): what
    Windows commits and charges. Pages read from a mapped file (the weights of an IR or a safetensors file) are
    file-backed, the OS drops them under pressure, and they are not counted. 0 where ``smaps_rollup`` is absent.
    """
    import psutil

    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(OSError, psutil.Error):
            text = Path(f"/proc/{proc.pid}/smaps_rollup").read_text(encoding="ascii")  # windows-ok: Linux benchmark
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in ("Anonymous", "Swap"):
                    total += int(value.split()[0]) * 1024
    return total


def run_stages(
    project: Path, log_path: Path, tree_memory: Any, after_download: Any = None, targets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``aipc repro [targets]`` in ``project``: per-stage wall time and peak ``tree_memory``, the exit code, the last lines.

    The stages so far are also written to ``<log>.progress.json`` every 30 s, so a run cut short keeps them.
    ``after_download`` is called once the ``download`` stage is over (``--drop-source``).
    """
    import psutil

    stages: dict[str, dict[str, float]] = {}
    current: list[str | None] = [None]
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "pipeline.cli", "repro", *targets]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8"
        )

        def follow() -> None:  # stage boundaries from DVC's own lines
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                match = STAGE_LINE.match(line)
                if match:
                    now = time.perf_counter() - started
                    if current[0]:
                        stages[current[0]]["end_s"] = now
                    if current[0] == "download" and after_download:
                        after_download()
                    current[0] = match.group(1)
                    stages[current[0]] = {"start_s": now, "end_s": now, "peak_gib": 0.0, "private_gib": 0.0}

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        root = psutil.Process(proc.pid)
        progress, last_write = log_path.with_suffix(".progress.json"), 0.0
        while proc.poll() is None:
            if time.perf_counter() - last_write > 30:
                last_write = time.perf_counter()
                snapshot = {name: dict(s) for name, s in list(stages.items())}
                progress.write_text(
                    json.dumps({"elapsed_s": round(last_write - started), "stages": snapshot}, indent=1)
                )
            stage = current[0]  # the stage running when the sample starts: the next one may begin while it is taken
            with contextlib.suppress(psutil.Error):
                used, private = tree_memory(root) / 2**30, tree_private(root) / 2**30
                if stage:
                    stages[stage]["peak_gib"] = max(stages[stage]["peak_gib"], used)
                    stages[stage]["private_gib"] = max(stages[stage]["private_gib"], private)
            time.sleep(SAMPLE_EVERY_S)
        reader.join()
    total = time.perf_counter() - started
    if current[0]:
        stages[current[0]]["end_s"] = total
    lines = log_path.read_text(encoding="utf-8").splitlines()
    return {
        "returncode": proc.returncode,
        "total_s": round(total, 1),
        "stages": {
            name: {
                "wall_s": round(s["end_s"] - s["start_s"], 1),
                "peak_gib": round(s["peak_gib"], 2),
                "private_gib": round(s["private_gib"], 2),
            }
            for name, s in stages.items()
        },
        "last_lines": lines[-3:],
    }


def machine() -> dict[str, Any]:
    """What ran the benchmark: cores, memory, CPU, and how busy the machine was."""
    import psutil

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines()
            if line.startswith("model name")
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def table(result: dict[str, Any], budget_gib: float) -> str:
    """The per-stage Markdown table, stages over the memory budget in bold."""
    rows = ["| stage | wall time | peak memory | private (Windows commit) |", "|---|---|---|---|"]
    for name, s in result["stages"].items():
        peak = f"{s['peak_gib']:.2f} GiB"
        peak = f"**{peak}**" if s["peak_gib"] > budget_gib else peak
        rows.append(f"| {name} | {s['wall_s']:.0f} s | {peak} | {s.get('private_gib', 0):.2f} GiB |")
    rows.append(f"| **total** | **{result['total_s'] / 60:.1f} min** | | |")
    return "\n".join(rows)


def main() -> None:
    """Build or pick the model, run the default pipeline on a fresh clone, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("full", "tiny"), default="full")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "aipc-bench")
    parser.add_argument("--budget-gib", type=float, default=8.0, help="per-stage memory budget (issue 20)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--stages",
        nargs="*",
        default=[],
        help="only these stages and what they need (dvc repro targets, e.g. validate@int4); written to full_pipeline-stages.json",
    )
    parser.add_argument(
        "--drop-source",
        action="store_true",
        help="delete the random checkpoint once `download` has copied it (7.1 GiB; the whole run writes about 60 GB)",
    )
    parser.add_argument(
        "--keep-project", action="store_true", help="reuse --work's project from an earlier run (git pull to HEAD)"
    )
    args = parser.parse_args()
    suffix = ("" if args.model == "full" else "-tiny") + ("-stages" if args.stages else "")
    out = args.out or ROOT / "benchmarks" / "results" / f"full_pipeline{suffix}.json"
    args.work.mkdir(parents=True, exist_ok=True)
    export_bench = sibling("full_size_export")  # the checkpoint builder and the process-tree memory measure
    if args.model == "full":
        checkpoint = export_bench.build_checkpoint(args.work / "phi3-mini-shaped")
        overrides = ["model=local", f"model.local_path={checkpoint.as_posix()}"]
    else:
        overrides = ["model=tiny"]
    project = fresh_project(args.work, args.keep_project)
    subprocess.run([sys.executable, "-m", "pipeline.cli", "compose", *overrides], cwd=project, check=True)
    before = machine()
    drop = (lambda: shutil.rmtree(checkpoint)) if args.drop_source and args.model == "full" else None
    result = run_stages(project, args.work / "full_pipeline.log", export_bench.tree_memory, drop, tuple(args.stages))
    # the commit the project ran (with --keep-project it is the one pulled at the start, not ROOT's HEAD at the end)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project, capture_output=True, text=True).stdout
    over = [name for name, s in result["stages"].items() if s["peak_gib"] > args.budget_gib]
    data = {
        "model": "Phi-3-mini-4k shapes, random bf16" if args.model == "full" else "embedded tiny Phi-3",
        "overrides": overrides,
        "targets": args.stages or "the whole pipeline",
        "commit": commit.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": before,
        "load_average_after": machine()["load_average"],
        "budget_gib": args.budget_gib,
        "over_budget": over,
        **result,
    }
    print(table(result, args.budget_gib))
    if result["returncode"]:
        print(f"dvc repro exited {result['returncode']}: {' / '.join(result['last_lines'])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
