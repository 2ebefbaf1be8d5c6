"""Benchmark: export a full-size Phi-3-mini-shaped checkpoint with aipc and with bare optimum-cli.

Builds (once) a random-weight bf16 checkpoint with Phi-3-mini-4k-instruct's exact shapes (3.8B
parameters, 7.1 GiB) and the embedded Phi-3 tokenizer, then runs each export in its own process and
samples the resident memory of the whole process tree. Prints a table and writes JSON.

Usage:
    python benchmarks/full_size_export.py [--work DIR] [--only aipc-int4 optimum-cli-int4 ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "pipeline" / "assets" / "tiny_phi3"
PHI3_MINI_4K = {  # config.json of microsoft/Phi-3-mini-4k-instruct (shapes only)
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072,
    "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000,
    "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
}
INT4_ARGS = ["--weight-format", "int4", "--group-size", "128", "--ratio", "0.6", "--sym"]
# What export_onnx passes to the builder for dml_int4 (export_onnx.builder_options), for the bare builder run.
ONNX_DML_INT4_OPTIONS = ["hf_token=false", "hf_remote=false", "block_size=128", "is_symmetric=true",
                         "algo_config=default", "enable_dml_graph=true"]


def build_checkpoint(dest: Path) -> Path:
    """Write the random bf16 checkpoint shard by shard (never the whole model in memory)."""
    import torch
    from safetensors.torch import save_file

    if (dest / "config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    c, gen = PHI3_MINI_4K, torch.Generator().manual_seed(0)
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    weight_map = {}
    shards = [{"model.embed_tokens.weight": rand(v, h)}]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shards.append({p + "self_attn.qkv_proj.weight": rand(3 * h, h), p + "self_attn.o_proj.weight": rand(h, h),
                       p + "mlp.gate_up_proj.weight": rand(2 * i, h), p + "mlp.down_proj.weight": rand(h, i),
                       p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                       p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)})
    shards.append({"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": rand(v, h)})
    for n, shard in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, tmp / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp / "config.json").write_text(json.dumps(PHI3_MINI_4K, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy2(TINY / name, tmp / name)
    from pipeline.artifacts import write_manifest

    write_manifest(tmp, stage="benchmark", model="phi3-mini-shaped-random", source="local")
    tmp.rename(dest)
    return dest


def measure(cmd: list[str], cwd: Path) -> dict:
    """Run ``cmd``; return wall time and peak RSS of its process tree (sampled every 0.1 s)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(peak / 2**30, 2), "returncode": proc.returncode,
            "error": err.strip().splitlines()[-1] if proc.returncode and err.strip() else None}


def commands(model: Path, work: Path) -> dict[str, list[str]]:
    """Every export to compare: ours (the pipeline stage) and the bare tool, same settings."""
    py = sys.executable
    ours = ("import sys; from pipeline.export_openvino import run; from pipeline.config import OpenVinoVariantConfig as C;"
            "from pathlib import Path; fmt = sys.argv[1];"
            "cfg = C(weight_format='int4', group_size=128, ratio=0.6, sym=True) if fmt == 'int4' else C(weight_format=fmt);"
            f"run(fmt, cfg, Path(r'{model}'), Path(r'{work / 'aipc'}'))")
    onnx_ours = ("from pathlib import Path; from pipeline.export_onnx import run; from pipeline.config import "
                 "OnnxVariantConfig as C; cfg = C(execution_provider='dml', precision='int4', block_size=128, "
                 "is_symmetric=True, algo_config='default', enable_dml_graph=True);"
                 f"run('onnx-dml-int4', cfg, Path(r'{model}'), Path(r'{work / 'aipc'}'))")
    return {
        "aipc-int4": [py, "-c", ours, "int4"],
        "optimum-cli-int4": [py, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(model),
                             "--task", "text-generation-with-past", *INT4_ARGS, str(work / "cli-int4")],
        "aipc-fp16": [py, "-c", ours, "fp16"],
        "optimum-cli-fp16": [py, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(model),
                             "--task", "text-generation-with-past", "--weight-format", "fp16", str(work / "cli-fp16")],
        # ONNX Runtime GenAI for DirectML, int4 block 128 (conf/onnx/default.yaml dml_int4), beside the bare builder.
        "aipc-onnx-dml-int4": [py, "-c", onnx_ours],
        "builder-onnx-dml-int4": [py, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o",
                                  str(work / "builder-onnx-dml-int4"), "-p", "int4", "-e", "dml", "-c",
                                  str(work / "builder-onnx-cache"), "--extra_options", *ONNX_DML_INT4_OPTIONS],
    }


def main() -> None:
    """Build the checkpoint, run every export, print a Markdown table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "aipc-bench")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "full_size_export.json")
    args = parser.parse_args()
    model = build_checkpoint(args.work / "phi3-mini-shaped")
    results = {}
    for name, cmd in commands(model, args.work).items():
        if args.only and name not in args.only:
            continue
        shutil.rmtree(args.work / ("aipc" if name.startswith("aipc") else f"cli-{name.split('-')[-1]}"),
                      ignore_errors=True)
        print(f"running {name} ...", flush=True)
        results[name] = measure(cmd, ROOT)
        print(f"  {results[name]}", flush=True)
    print("\n| export | wall time | peak RSS |\n|---|---|---|")
    for name, r in results.items():
        status = "" if r["returncode"] == 0 else f" (failed: {r['error']})"
        print(f"| {name} | {int(r['wall_s'] // 60)} min {r['wall_s'] % 60:.0f} s | {r['peak_rss_gib']} GiB{status} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": "Phi-3-mini-4k shapes, random bf16", "results": results}, indent=2))


if __name__ == "__main__":
    main()
