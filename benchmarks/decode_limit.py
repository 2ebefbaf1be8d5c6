"""Benchmark: CPU decode speed of an IR against the memory-bandwidth limit (issue 32 item 3).

Decoding one token reads every weight the model multiplies by once (the embedding table only one row), so on a CPU
the rate cannot exceed ``read bandwidth / bytes read per token``. This script measures both sides on this machine:

* the read bandwidth: numpy reductions over a buffer far larger than the caches, in 1 and ``--threads`` threads
  (numpy releases the GIL in its inner loops), the best of ``--repeats``;
* bytes per token: the IR's weight file minus the embedding table (from the manifest's layer list), plus the KV cache
  read at the mean context of the run;
* tokens/s: ``openvino_genai.LLMPipeline`` on CPU, greedy, ``--new-tokens`` tokens after a short prompt, the
  decode rate from its own metrics (time per output token, first token excluded), for each runtime setting of
  :data:`SETTINGS` (KV-cache precision, dynamic quantization group size, threads, streams).

Prints a table and writes ``benchmarks/results/decode_limit.json``: tok/s, GB/s achieved and the fraction of the
limit for each setting.

``--pages N`` measures what page size does instead (key ``page_size`` of the JSON, the rest kept): the read bandwidth
of the same numpy reductions over 2 MiB pages (numpy asks for transparent huge pages on large arrays) and over 4 KiB
pages; then N interleaved pairs of decode runs at the defaults, each in a fresh process, without and with glibc's
``glibc.malloc.hugetlb=1`` tunable (the CPU plugin repacks the IR's weights into memory it allocates with malloc, which
then asks for 2 MiB pages), with the huge pages each process ended up holding (``AnonHugePages``).

Usage:
    python benchmarks/decode_limit.py [--ir ~/.cache/aipc-bench/project/artifacts/openvino/int4] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_IR = Path.home() / ".cache" / "aipc-bench" / "project" / "artifacts" / "openvino" / "int4"

# (label, properties): the plugin's defaults first, then one property changed at a time, then combinations
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("KV cache f16", {"KV_CACHE_PRECISION": "f16"}),
    ("KV cache bf16", {"KV_CACHE_PRECISION": "bf16"}),
    ("dyn-quant group 64", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"}),
    ("dyn-quant off", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}),
    ("f32 compute", {"INFERENCE_PRECISION_HINT": "f32"}),
    ("1 thread", {"INFERENCE_NUM_THREADS": "1"}),
    ("latency hint, 1 stream", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}),
    ("f32 + KV f16", {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f16"}),
    ("f32 + dyn-quant 64", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"}),
    ("f32 + dyn-quant 128", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "128"}),
    ("f32 + KV f16 + dyn-quant 64",
     {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f16", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"}),
]


HUGE_MALLOC = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: malloc's mmapped chunks get madvise(MADV_HUGEPAGE)


def read_bandwidth(threads: int, gib: float = 2.0, repeats: int = 5, huge_pages: bool = True) -> float:
    """GiB/s read by ``threads`` threads summing disjoint parts of a ``gib`` GiB float32 buffer (best of ``repeats``).

    ``huge_pages=False``: the buffer in 4 KiB pages (numpy otherwise asks for transparent huge pages on arrays of
    4 MiB and more, which a plugin's own allocations do not get).
    """
    import numpy as np

    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _set_madvise_hugepage
    before = _set_madvise_hugepage(huge_pages)
    try:
        buffer = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    finally:
        _set_madvise_hugepage(before)
    parts = np.array_split(buffer, threads)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, buffer.nbytes / 2**30 / (time.perf_counter() - start))
    return best


def bytes_per_token(ir: Path, context: int) -> dict[str, int]:
    """What one decode step reads: the weight file but the embedding table's other rows, and the KV cache."""
    manifest = json.loads((ir / "manifest.json").read_text(encoding="utf-8"))
    config = json.loads((ir / "config.json").read_text(encoding="utf-8"))
    weights = (ir / "openvino_model.bin").stat().st_size
    bits = {"int4": 4, "int8": 8, "fp16": 16, "bf16": 16, "f32": 32}
    embedding = next((layer for layer in manifest.get("layers", []) if layer["op"] == "Gather"), None)
    table = 0
    if embedding and not (manifest.get("tied_embeddings") or {}).get("shared_constant"):
        rows, width = embedding["shape"]
        table = rows * width * bits.get(embedding["precision"], 16) // 8
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv = 2 * config["num_hidden_layers"] * heads * head_dim * context  # u8 cache: one byte per value
    return {"weight_file": weights, "embedding_table": table, "kv_cache_u8": kv, "per_token": weights - table + kv}


def decode_rate(ir: Path, properties: dict[str, Any], prompt: str, new_tokens: int, runs: int) -> dict[str, Any]:
    """Median decode tokens/s (first token excluded) of ``runs`` greedy generations, and what the plugin ran with."""
    import openvino_genai as ov_genai

    started = time.perf_counter()
    pipe = ov_genai.LLMPipeline(str(ir), "CPU", **properties)
    load_s = time.perf_counter() - started
    config = ov_genai.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True)
    pipe.generate(prompt, ov_genai.GenerationConfig(max_new_tokens=4))  # warm-up: compile and allocate
    rates = []
    for _ in range(runs):
        metrics = pipe.generate([prompt], config).perf_metrics
        rates.append(1000.0 / metrics.get_tpot().mean)
    return {"tokens_per_s": round(statistics.median(rates), 3), "runs": [round(r, 3) for r in rates],
            "load_s": round(load_s, 1), "anon_huge_mib": anon_huge_mib()}  # read while the pipeline holds its weights


def anon_huge_mib() -> int:
    """MiB of this process's anonymous memory in transparent huge pages (0 where /proc does not say)."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
            return next((int(line.split()[1]) // 1024 for line in rollup if line.startswith("AnonHugePages:")), 0)
    except OSError:
        return 0


def child(ir: Path, new_tokens: int, runs: int) -> None:
    """``--child``: one decode measurement at the defaults in this fresh process, printed as one JSON line."""
    print(json.dumps(decode_rate(ir, {}, "Explain what a Python generator is, with an example.", new_tokens, runs)))


def page_size(args: argparse.Namespace) -> dict[str, Any]:
    """``--pages``: read bandwidth per page size, and interleaved decode pairs without and with huge-page malloc."""
    import subprocess

    bandwidth = {f"{pages}, {n} thread(s)": round(read_bandwidth(n, huge_pages=pages == "2 MiB pages"), 2)
                 for pages in ("2 MiB pages", "4 KiB pages") for n in sorted({1, args.threads})}
    print(f"read bandwidth {bandwidth} GiB/s")
    read = bytes_per_token(args.ir, context=16 + args.new_tokens // 2)
    pairs: list[dict[str, Any]] = []
    for _ in range(args.pages):
        pair = {}
        for label, tunable in (("4 KiB pages", ""), ("2 MiB pages", HUGE_MALLOC)):
            env = {**os.environ, "GLIBC_TUNABLES": tunable}
            cmd = [sys.executable, __file__, "--child", "--ir", str(args.ir), "--new-tokens", str(args.new_tokens),
                   "--runs", str(args.runs)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            pair[label] = json.loads(done.stdout.strip().splitlines()[-1])
            gibs = pair[label]["tokens_per_s"] * read["per_token"] / 2**30
            print(f"{label}: {pair[label]['tokens_per_s']:.2f} tok/s, {gibs:.1f} GiB/s read, "
                  f"{pair[label]['anon_huge_mib']} MiB in huge pages", flush=True)
        pairs.append(pair)
    median = {label: statistics.median(p[label]["tokens_per_s"] for p in pairs) for label in pairs[0]}
    best_bw = max(bandwidth.values())
    return {
        "read_bandwidth_gib_s": bandwidth,
        "bytes_read_per_token": read["per_token"],
        "pairs": pairs,
        "median_tokens_per_s": median,
        "fraction_of_limit": {k: round(v * read["per_token"] / 2**30 / best_bw, 3) for k, v in median.items()},
        "fraction_of_4k_page_bandwidth": {
            k: round(v * read["per_token"] / 2**30 / bandwidth[f"4 KiB pages, {args.threads} thread(s)"], 3)
            for k, v in median.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ir", type=Path, default=DEFAULT_IR)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", nargs="*", help="labels of SETTINGS to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode_limit.json")
    parser.add_argument("--pages", type=int, default=0, help="page-size pairs to measure instead of the settings")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.ir, args.new_tokens, args.runs)
    if args.pages:
        old = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
        old["page_size"] = page_size(args)
        args.out.write_text(json.dumps(old, indent=2) + "\n", encoding="utf-8")
        return print(f"wrote {args.out} (page_size)")
    import openvino as ov

    bandwidth = {f"{n} thread(s)": round(read_bandwidth(n), 2) for n in sorted({1, args.threads})}
    limit_bw = max(bandwidth.values())
    prompt = "Explain what a Python generator is, with an example."
    read = bytes_per_token(args.ir, context=16 + args.new_tokens // 2)
    limit = limit_bw * 2**30 / read["per_token"]
    rows = []
    print(f"read bandwidth {bandwidth} GiB/s; {read['per_token'] / 2**30:.3f} GiB per token -> limit {limit:.2f} tok/s")
    print(f"{'setting':<26} {'tok/s':>7} {'GiB/s':>7} {'of limit':>9}")
    for label, properties in SETTINGS:
        if args.only and label not in args.only:
            continue
        got = decode_rate(args.ir, properties, prompt, args.new_tokens, args.runs)
        gibs = got["tokens_per_s"] * read["per_token"] / 2**30
        rows.append({"setting": label, "properties": properties, **got, "gib_per_s": round(gibs, 2),
                     "fraction_of_limit": round(got["tokens_per_s"] / limit, 3)})
        print(f"{label:<26} {got['tokens_per_s']:>7.2f} {gibs:>7.2f} {got['tokens_per_s'] / limit:>8.0%}", flush=True)
    core = ov.Core()
    result = {
        "ir": str(args.ir),
        "machine": {"cpu": core.get_property("CPU", "FULL_DEVICE_NAME"), "cores": os.cpu_count(),
                    "platform": platform.platform(), "openvino": ov.get_version()},
        "cpu_default_compute": str(core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
        "read_bandwidth_gib_s": bandwidth,
        "bytes_read_per_token": read,
        "limit_tokens_per_s": round(limit, 3),
        "new_tokens": args.new_tokens,
        "settings": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
