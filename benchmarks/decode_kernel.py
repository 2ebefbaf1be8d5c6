"""Benchmark: is full-size CPU decode held by memory or by the cores? The decode kernels with weights in cache and in RAM.

``decode_limit.py`` finds full-size int4 decode at 53-66 % of the measured read bandwidth, whatever the runtime
setting. That limit assumes the weights are read at the speed of a plain streaming sum. This script measures what
the CPU plugin's own decode kernel (a fully connected layer over compressed weights, one token) does per byte:

* it builds chains of Phi-3-mini-shaped MatMuls (3072 x 3072) over weights compressed exactly as the full-size IR's
  are (NNCF's patterns: int4 symmetric in groups of 128 as ``i4`` constants with an f16 scale per group, and int8
  asymmetric per channel as ``u8`` with a ``u8`` zero point and an f16 scale), with random codes;
* it runs one token through each chain (``[1, 1, 3072]``), as decode does, with the CPU plugin at the settings of
  :data:`SETTINGS`, and divides the compressed bytes of the chain by the time per run;
* short chains (one layer, or about 16 MiB) fit the 32 MiB L3 cache: every run after the first reads the weights from
  cache; long
  chains are far larger than the caches (GBs: every run reads them from RAM).

If the kernel's rate over cached weights is no higher than over weights in RAM, the cores, not the memory, set the
decode rate on this machine: then no memory setting can bring decode to the streaming-read limit. Prints a table and
adds the key ``kernel`` to ``benchmarks/results/decode_limit.json`` (the rest kept).

Usage:
    python benchmarks/decode_kernel.py [--ram-mib 1024] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import decode_limit  # noqa: E402 (a sibling script: its settings and its read-bandwidth measure)

OUT = ROOT / "benchmarks" / "results" / "decode_limit.json"
HIDDEN, GROUP = 3072, 128  # Phi-3-mini's hidden size; the int4 group size of the default recipe
# Scales that keep a random token's norm through a layer (1 / (sqrt(HIDDEN) x the codes' spread)): the chain's values
# stay near 1, never denormal, however long it is
GAIN_ONE = {"int4": 1 / (55.4 * 4.6), "int8": 1 / (55.4 * 74.0)}

# decode_limit.py's settings that change how the weights are read or computed (its KV-cache ones do not touch this
# kernel), then two about how the threads share the work
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    *(
        (label, props)
        for label, props in decode_limit.SETTINGS
        if label in ("defaults", "f32 compute", "dyn-quant off", "1 thread")
    ),
    ("TBB static partitioner", {"TBB_PARTITIONER": "STATIC"}),
    ("CPU pinning", {"ENABLE_CPU_PINNING": "YES"}),
]


def blas_gemv(gib: float = 1.0, repeats: int = 7) -> dict[str, float]:
    """GiB/s of OpenBLAS's f32 GEMV (numpy ``W @ x`` and ``x @ W``) over a ``gib`` GiB matrix, in 1 and 2 threads.

    The control: the same shape of work as a decode kernel (every weight read once per token, a vector out), done by
    another library on the same machine. If it reads near the streaming limit, the machine can; a slower decode kernel
    is then held by its own way of reading, not by the hardware.
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    weights = np.ones((8192, int(gib * 2**30) // 4 // 8192), dtype=np.float32)
    x, xt = np.ones(weights.shape[1], dtype=np.float32), np.ones(weights.shape[0], dtype=np.float32)
    found = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        with threadpool_limits(threads):
            for label, run in (("W @ x", lambda: weights @ x), ("x @ W", lambda: xt @ weights)):
                run()
                best = min(timed(run) for _ in range(repeats))
                found[f"{label}, {threads} thread(s)"] = round(weights.nbytes / 2**30 / best, 2)
    return found


def timed(run: Any) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compressed_linear(x: Any, kind: str, rng: Any) -> tuple[Any, int]:
    """``x @ W.T`` with a random ``HIDDEN x HIDDEN`` weight compressed as NNCF writes ``kind``; the bytes it reads."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    def raw(element: ov.Type, shape: list[int]) -> Any:
        tensor = ov.Tensor(element, ov.Shape(shape))
        tensor.data[:] = rng.integers(0, 256, size=tensor.data.shape, dtype=np.uint8)  # packed codes, any bytes
        return ov.op.Constant(tensor)

    if kind == "int4":  # symmetric, groups of 128: i4 codes times an f16 scale per group
        codes = raw(ov.Type.i4, [HIDDEN, HIDDEN // GROUP, GROUP])
        signs = rng.choice([-1.0, 1.0], (HIDDEN, HIDDEN // GROUP, 1))  # i4 codes average -0.5: no common drift
        scale = ops.constant((signs * GAIN_ONE["int4"]).astype(np.float16))
        weight = ops.multiply(ops.convert(codes, "f16"), scale)
        weight = ops.reshape(weight, ops.constant(np.array([HIDDEN, HIDDEN], dtype=np.int64)), special_zero=False)
        read = HIDDEN * HIDDEN // 2 + scale.get_byte_size()
    else:  # int8 asymmetric per output channel: (u8 codes - u8 zero point) times an f16 scale
        codes = raw(ov.Type.u8, [HIDDEN, HIDDEN])
        zero = ops.constant(rng.integers(100, 156, (HIDDEN, 1), dtype=np.uint8))
        scale = ops.constant(np.full((HIDDEN, 1), GAIN_ONE["int8"], dtype=np.float16))
        weight = ops.multiply(ops.subtract(ops.convert(codes, "f16"), ops.convert(zero, "f16")), scale)
        read = HIDDEN * HIDDEN + HIDDEN + scale.get_byte_size()
    return ops.matmul(x, ops.convert(weight, "f32"), transpose_a=False, transpose_b=True), read


def chain(kind: str, layers: int, seed: int = 0) -> tuple[Any, int]:
    """A model of ``layers`` compressed MatMuls in a row over a ``[1, token, HIDDEN]`` input; its weight bytes."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(seed)
    x = ops.parameter([1, -1, HIDDEN], np.float32, name="x")
    out, total = x.output(0), 0
    for _ in range(layers):
        out, read = compressed_linear(out, kind, rng)
        total += read
    return ov.Model([out], [x], f"{kind}-x{layers}"), total


def rate(model: Any, weight_bytes: int, properties: dict[str, str], seconds: float) -> dict[str, Any]:
    """GiB of compressed weights per second through one token, the median of runs over ``seconds`` (after 3 warm-ups)."""
    import statistics

    import numpy as np
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", **properties})
    request = compiled.create_infer_request()
    token = np.random.default_rng(1).standard_normal((1, 1, HIDDEN)).astype(np.float32)
    for _ in range(3):
        request.infer({0: token})
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        tick = time.perf_counter()
        request.infer({0: token})
        times.append(time.perf_counter() - tick)
    per_run = statistics.median(times)
    return {
        "gib_per_s": round(weight_bytes / 2**30 / per_run, 2),
        "ms_per_run": round(per_run * 1000, 3),
        "runs": len(times),
        "ran_at": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram-mib", type=int, default=1024, help="weights of the long chains (far above the caches)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed runs per row")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sizes = {"int4": HIDDEN * HIDDEN // 2, "int8": HIDDEN * HIDDEN}
    rows = []
    print(f"{'weights':<6} {'layers':>6} {'MiB':>7} {'where':<6} {'setting':<23} {'GiB/s':>7} {'ms/run':>8}")
    for kind, layer_bytes in sizes.items():
        for where, layers in (
            ("cache", 1),
            ("cache", max(2, 16 * 2**20 // layer_bytes)),
            ("RAM", args.ram_mib * 2**20 // layer_bytes),
        ):
            model, weight_bytes = chain(kind, layers)
            for label, properties in SETTINGS:
                got = rate(model, weight_bytes, properties, args.seconds)
                rows.append(
                    {
                        "weights": kind,
                        "layers": layers,
                        "weight_mib": round(weight_bytes / 2**20, 1),
                        "where": where,
                        "setting": label,
                        "properties": properties,
                        **got,
                    }
                )
                print(
                    f"{kind:<6} {layers:>6} {weight_bytes / 2**20:>7.1f} {where:<6} {label:<23} "
                    f"{got['gib_per_s']:>7.2f} {got['ms_per_run']:>8.3f}",
                    flush=True,
                )
            del model
    threads = os.cpu_count() or 1
    bandwidth = {f"{n} thread(s)": round(decode_limit.read_bandwidth(n), 2) for n in sorted({1, threads})}
    gemv = blas_gemv()
    print(f"streaming read bandwidth (numpy sums, 2 MiB pages): {bandwidth} GiB/s; OpenBLAS f32 GEMV: {gemv} GiB/s")
    streaming = max(bandwidth.values())
    fractions = {
        f"{r['weights']} {r['where']} ({r['weight_mib']} MiB), {r['setting']}": round(r["gib_per_s"] / streaming, 3)
        for r in rows
        if r["setting"] == "defaults"
    }
    fractions["OpenBLAS f32 GEMV, best"] = round(max(gemv.values()) / streaming, 3)
    for label, fraction in fractions.items():
        print(f"{label}: {fraction:.0%} of the streaming read")
    result = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    result["kernel"] = {
        "hidden": HIDDEN,
        "int4_group": GROUP,
        "read_bandwidth_gib_s": bandwidth,
        "blas_gemv_gib_s": gemv,
        "fraction_of_streaming_read": fractions,
        "rows": rows,
        "caches": cache_sizes(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} (kernel)")


def cache_sizes() -> dict[str, str]:
    """This machine's cache sizes as sysfs lists them for CPU 0 (empty where it does not)."""
    found = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            found[f"L{level} {kind}"] = (index / "size").read_text().strip()
        except OSError:
            continue
    return found


if __name__ == "__main__":
    main()
