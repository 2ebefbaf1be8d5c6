"""Benchmark: ``export_npu_lib@<v>`` and ``validate_npu_lib@<v>`` on the full-size Phi-3-mini-shaped checkpoint.

Runs each stage's ``run`` in a fresh process (as DVC would) on the random bf16 checkpoint of
``full_size_export.py`` (7.12 GiB), samples the process tree's memory (``full_size_export.tree_memory``: the
root's RSS plus each child's unique pages, so the library's worker is counted) every 0.2 s, and appends one JSON
line per stage to ``<work>/results.jsonl``. The validation is kept short where its memory does not depend on it
(8 greedy tokens, 4 timed tokens, no warm-up, one repeat; every prompt, both speed prompts and every
teacher-forced window of the reference are still run). Wrap each call in ``flock`` on a shared machine.

Usage:
    flock /work/bench/fullsize.lock python benchmarks/npu_lib_memory.py export int4 --model DIR --reference DIR
    flock /work/bench/fullsize.lock python benchmarks/npu_lib_memory.py validate int4 --model DIR --reference DIR
    (extra ``key=value`` arguments override ``npu_lib.<v>``, e.g. ``layer_by_layer=false``; ``--layers 4 --work DIR``
    measures on a 4-layer cut of the checkpoint instead: not full size, no lock needed)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_export import ROOT, tree_memory  # noqa: E402

SHORT_VALIDATION = [
    "validate.max_new_tokens=8",
    "validate.perf_new_tokens=4",
    "validate.warmup=0",
    "validate.repeats=1",
]


def stage_code(stage: str, variant: str, model: Path, reference: Path, work: Path, overrides: dict[str, str]) -> str:
    """Python source running one stage on the full-size checkpoint (validate: recorded in a dvc.lock of its own)."""
    if stage == "export":
        values = {k: v == "true" if v in ("true", "false") else v for k, v in overrides.items()}
        return (
            "from pathlib import Path; from pipeline.npu_lib.config import NpuLibVariantConfig as C; "
            "from pipeline.npu_lib import export as e; from pipeline.core.workspace import Workspace as W; "
            f"e.run({variant!r}, C(dtype={variant!r}, **{values!r}), W(model=Path({str(model)!r}), out=Path({str(work / 'npu_lib')!r})))"
        )
    given = ["model=local", f"model.local_path={model}", *SHORT_VALIDATION]
    return (
        f"import sys; sys.path[:0] = [{str(ROOT / 'tests' / 'npu_lib')!r}, {str(ROOT / 'tests')!r}]; "
        "from pathlib import Path; from test_npu_lib import record_in_lock; "
        "from pipeline.core.config import ValidateConfig, build, compose; from pipeline.npu_lib import validate as v; "
        f"root = Path({str(work / 'npu_lib')!r}); lock = record_in_lock(Path({str(work / 'dvc.lock')!r}), root / {variant!r}); "
        f"cfg = build(ValidateConfig, compose({given!r})['validate']); from pipeline.core.workspace import Workspace as W; "
        f"v.run({variant!r}, cfg, W(out=root, reference=Path({str(reference / 'reference.json')!r}), "
        f"metrics=Path({str(work / 'metrics')!r}), lock_file=lock))"
    )


def layer_cut(model: Path, layers: int, dest: Path) -> Path:
    """The checkpoint's first ``layers`` decoder layers with its embeddings, norm and LM head (built once in ``dest``).

    A validation's overhead over its model (the library's kernels, runtime) does not grow with the layers, so a cut
    measures it in minutes and without the full-size lock; the full size adds the artifact's size and caches.
    """
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    if (dest / "model.safetensors").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    weight_map = json.loads((model / "model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"]
    keep = {k: f for k, f in weight_map.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    tensors = {}
    for file in sorted(set(keep.values())):
        with safe_open(str(model / file), "pt") as handle:
            tensors.update({k: handle.get_tensor(k) for k in handle.keys() if k in keep})
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (dest / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}, indent=2), encoding="utf-8")
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "manifest.json"):
        shutil.copy(model / name, dest / name)
    return dest


def measure(code: str, log: Path) -> dict:
    """Run ``code`` in a fresh interpreter of this environment; its wall time and the tree's peak memory."""
    import psutil

    start, peak = time.perf_counter(), 0
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, tree_memory(root))
            time.sleep(0.2)
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_gib": round(peak / 2**30, 2),
        "returncode": proc.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("export", "validate"))
    parser.add_argument("variant", choices=("int4", "int8", "fp16"))
    parser.add_argument("overrides", nargs="*", help="key=value of npu_lib.<variant>")
    parser.add_argument("--model", type=Path, default=Path("/work/bench/phi3-mini-shaped"))
    parser.add_argument("--reference", type=Path, default=Path("/work/bench/reference"))
    parser.add_argument("--work", type=Path, default=Path("/work/bench/npulib"))
    parser.add_argument("--layers", type=int, help="measure on a cut of the checkpoint with this many decoder layers")
    args = parser.parse_args()
    if args.layers:
        args.model = layer_cut(args.model, args.layers, args.work / f"cut-{args.layers}")
    overrides = dict(o.split("=", 1) for o in args.overrides)
    args.work.mkdir(parents=True, exist_ok=True)
    tag = args.variant + "".join(f"-{k}{v}" for k, v in overrides.items())
    code = stage_code(args.stage, args.variant, args.model, args.reference, args.work, overrides)
    result = {
        "stage": f"{args.stage}_npu_lib@{args.variant}",
        "overrides": overrides,
        **measure(code, args.work / f"{args.stage}-{tag}.log"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(result))
    with open(args.work / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
