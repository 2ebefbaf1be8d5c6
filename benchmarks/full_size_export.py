"""Benchmark: export a full-size Phi-3-mini-shaped checkpoint with aipc and with bare optimum-cli.

Builds (once) a random-weight bf16 checkpoint with Phi-3-mini-4k-instruct's exact shapes (3.8B
parameters, 7.1 GiB) and the embedded Phi-3 tokenizer, then runs each export in its own process and
samples the resident memory of the whole process tree. Prints a table and writes JSON.

Entries: aipc-int4 (the pipeline's two stages: base IR, then int4), aipc-fp16, aipc-npu-int4,
aipc-onnx-dml-int4, aipc-sweep-6 (one base IR + six group-size x ratio compressions), each beside
the bare tool with the same settings (optimum-cli, the onnxruntime-genai builder, six optimum-cli runs).

Usage:
    python benchmarks/full_size_export.py [--work DIR] [--only aipc-int4 optimum-cli-int4 ...] [--repeat N]

Before each run the outputs and NNCF caches are removed and, where permitted (root on Linux), dirty
pages are written back and the page cache is dropped, so every run reads the checkpoint from disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "pipeline" / "assets" / "tiny_phi3"
PHI3_MINI_4K = {  # config.json of microsoft/Phi-3-mini-4k-instruct (shapes only)
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072,
    "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000,
    "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
}
SWEEP = [(g, r) for g in (128, 64) for r in (0.6, 0.8, 1.0)]  # the 6 points of the sweep benchmark
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
    from pipeline.core.manifest import write_manifest

    write_manifest(tmp, stage="benchmark", model="phi3-mini-shaped-random", source="local")
    tmp.rename(dest)
    return dest


def measure(cmds: list[list[str]], cwd: Path, timeout: float) -> dict:
    """Run ``cmds`` one after another (like DVC stages); wall time and peak memory (:func:`tree_memory`) of each."""
    import psutil

    walls, peaks, err, code = [], [], "", 0
    for cmd in cmds:
        start, peak = time.perf_counter(), 0
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        drain = threading.Thread(target=lambda p=proc: setattr(p, "err_text", p.stderr.read()), daemon=True)
        drain.start()
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, tree_memory(root))
            if time.perf_counter() - start > timeout:
                proc.kill()
            time.sleep(0.1)
        drain.join()
        walls.append(round(time.perf_counter() - start, 1))
        peaks.append(round(peak / 2**30, 2))
        code, err = proc.returncode, getattr(proc, "err_text", "")
        if code:
            break
    return {"wall_s": round(sum(walls), 1), "steps_s": walls, "peak_rss_gib": max(peaks), "steps_peak_rss_gib": peaks,
            "returncode": code, "error": err.strip().splitlines()[-1] if code and err.strip() else None}


def drop_page_cache() -> bool:
    """Write back dirty pages and empty the page cache (root, Linux), so every entry starts cold.

    Without it an entry inherits what the one before left in the cache: the bare tool keeps the
    checkpoint cached, the pipeline hands its pages back.
    """
    if hasattr(os, "sync"):
        os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def summarize(runs: list[dict]) -> dict:
    """One entry from repeated runs: median wall time (its steps), highest peak, every run kept."""
    ok = [r for r in runs if r["returncode"] == 0] or runs
    median = sorted(ok, key=lambda r: r["wall_s"])[(len(ok) - 1) // 2]
    return {**median, "peak_rss_gib": max(r["peak_rss_gib"] for r in ok),
            "runs_wall_s": [r["wall_s"] for r in runs], "runs": len(runs)}


def tree_memory(root: Any) -> int:
    """Resident memory of a process tree: the root's RSS plus each child's unique pages (USS).

    Summing RSS counts twice the pages a child shares with its parent: a process that forks to run
    a helper (a shell-out between ``fork`` and ``exec``) would appear to double for a moment.
    """
    import psutil

    total = root.memory_info().rss
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            info = child.memory_full_info()
            total += getattr(info, "uss", info.rss)
    return total


STAGE_START = "from pipeline.core.memory import use_huge_pages; use_huge_pages(); "  # what every export stage does first


def ours(code: str) -> list[str]:
    """A Python command running pipeline code in a fresh process (as a DVC stage would)."""
    return [sys.executable, "-c", STAGE_START + "from pathlib import Path; from pipeline.openvino.config import "
            "OpenVinoVariantConfig as C; from pipeline.openvino import export as eo, export_base as eb; "
            "from pipeline.core.workspace import Workspace as W; " + code]


def optimum_cli(model: Path, out: Path, *args: str) -> list[str]:
    """Bare ``optimum-cli export openvino`` with the given weight options."""
    return [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", str(model),
            "--task", "text-generation-with-past", *args, str(out)]


def int4_args(group_size: int, ratio: float) -> str:
    return f"C(weight_format='int4', group_size={group_size}, ratio={ratio}, sym=True)"


def commands(model: Path, work: Path) -> dict[str, list[list[str]]]:
    """Every export to compare: ours (the pipeline's stages) and the bare tool, same settings."""
    base = work / "aipc" / "base"
    base_cmd = ours(f"eb.run(Path(r'{model}'), Path(r'{base}'))")

    def compress(name: str, cfg: str) -> list[str]:
        return ours(f"eo.run('{name}', {cfg}, W(model=Path(r'{model}'), out=Path(r'{work / 'aipc'}')), base_dir=Path(r'{base}'))")

    onnx_ours = [sys.executable, "-c", STAGE_START + "from pathlib import Path; from pipeline.onnx.export import run; "
                 "from pipeline.core.workspace import Workspace as W; from "
                 "pipeline.onnx.config import OnnxVariantConfig as C; cfg = C(execution_provider='dml', precision='int4', "
                 "block_size=128, is_symmetric=True, algo_config='default', enable_dml_graph=True);"
                 f"run('onnx-dml-int4', cfg, W(model=Path(r'{model}'), out=Path(r'{work / 'aipc'}')))"]
    npu = ours(f"from pipeline.openvino.config import NpuVariantConfig as N; from pipeline.openvino import export_npu; export_npu.run("
               f"'npu-int4', N(), W(model=Path(r'{model}'), out=Path(r'{work / 'aipc'}')), base_dir=Path(r'{base}'))")
    table = {
        # the pipeline's int4: export_openvino_base then export_openvino@int4 (two stages, two processes)
        "aipc-int4": [base_cmd, compress("int4", int4_args(128, 0.6))],
        "optimum-cli-int4": [optimum_cli(model, work / "cli" / "int4", *INT4_ARGS)],
        "aipc-fp16": [ours(f"eo.run('fp16', C(weight_format='fp16'), W(model=Path(r'{model}'), out=Path(r'{work / 'aipc'}')), "
                           "base_dir=None)")],
        "optimum-cli-fp16": [optimum_cli(model, work / "cli" / "fp16", "--weight-format", "fp16")],
        "aipc-npu-int4": [base_cmd, npu],  # export_npu@int4 compresses the same base IR
        # ONNX Runtime GenAI for DirectML, int4 block 128 (conf/onnx/default.yaml dml_int4), beside the bare builder.
        "aipc-onnx-dml-int4": [onnx_ours],
        "builder-onnx-dml-int4": [[sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o",
                                   str(work / "cli" / "onnx-dml-int4"), "-p", "int4", "-e", "dml", "-c",
                                   str(work / "cli" / "onnx-cache"), "--extra_options", *ONNX_DML_INT4_OPTIONS]],
        # 6-point group-size x ratio sweep: one base IR + 6 compressions, against 6 separate optimum-cli exports
        "aipc-sweep-6": [base_cmd] + [compress(f"g{g}-r{r}", int4_args(g, r)) for g, r in SWEEP],
        "optimum-cli-sweep-6": [optimum_cli(model, work / "cli" / f"g{g}-r{r}", "--weight-format", "int4",
                                            "--group-size", str(g), "--ratio", str(r), "--sym") for g, r in SWEEP],
    }
    return table


def main() -> None:
    """Build the checkpoint, run every export, print a Markdown table and merge the results into the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "aipc-bench")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per step before it is killed")
    parser.add_argument("--repeat", type=int, default=1, help="runs per entry; the median wall time is kept")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "full_size_export.json")
    args = parser.parse_args()
    model = build_checkpoint(args.work / "phi3-mini-shaped")
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = previous.get("results", {})
    for name, cmds in commands(model, args.work).items():
        if args.only and name not in args.only:
            continue
        runs = []
        for attempt in range(args.repeat):
            for folder in (args.work / "aipc", args.work / "cli", ROOT / ".aipc" / "nncf_sensitivity"):
                shutil.rmtree(folder, ignore_errors=True)  # cold: no output, no cached sensitivities from earlier runs
            dropped = drop_page_cache()
            print(f"running {name} ({len(cmds)} step(s)), run {attempt + 1} of {args.repeat} ...", flush=True)
            load = os.getloadavg()
            runs.append({**measure(cmds, ROOT, args.timeout), "load_average_before": load,
                         "page_cache_dropped": dropped, "date": time.strftime("%Y-%m-%d %H:%M")})
            print(f"  {runs[-1]}", flush=True)
        results[name] = summarize(runs)
    print("\n| export | wall time | peak RSS |\n|---|---|---|")
    for name, r in results.items():
        status = "" if r["returncode"] == 0 else f" (failed: {r['error']})"
        minutes, seconds = divmod(round(r["wall_s"]), 60)  # 119.6 s is 2 min 0 s, not 1 min 60 s
        print(f"| {name} | {minutes} min {seconds} s | {r['peak_rss_gib']} GiB{status} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import psutil

    machine = f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    args.out.write_text(json.dumps({"checkpoint": "Phi-3-mini-4k shapes, random bf16", "machine": machine,
                                    "results": results}, indent=2))


if __name__ == "__main__":
    main()
