"""Run an ONNX Runtime GenAI folder for one validation cell: load, generate, time, prefill logits (ONNX, Windows ML).

Self-contained on purpose: the standard library, numpy and ``onnxruntime_genai`` only, no ``pipeline`` import.
The same file therefore runs in the main environment (imported by :mod:`pipeline.onnx.validate`) and as a
script inside an isolated one: the DirectML runtime on Windows, whose ``onnxruntime-genai-directml`` would
replace the CPU package the model builder needs, and the older CPU runtimes ``aipc onnx-compat`` checks.
The request and the result are plain JSON; the prefill logits go to an ``.npz`` file.

As a script: ``python -I runner.py < request.json``; the last stdout line is ``AIPC_RUNNER_RESULT {json}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

RESULT_MARK = "AIPC_RUNNER_RESULT "
# A warm-up run only has to compile and allocate what the measured runs use: the prompt's prefill and one decode
# step. Two new tokens do both, so a warm-up costs a prefill instead of a whole run (on the NPU library's 2-core CPU
# stand-in, where the full-size int4 model decodes at ~0.15 tokens/s, 32 tokens were ~3.5 minutes per prompt length).
WARMUP_NEW_TOKENS = 2


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux/macOS ``ru_maxrss``; Windows peak working set)."""
    if os.name == "nt":
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
                (name, ctypes.c_size_t)
                for name in ("PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage", "QuotaPagedPoolUsage")
                + ("QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")
            ]

        counters = Counters(cb=ctypes.sizeof(Counters))
        process = ctypes.windll.kernel32.GetCurrentProcess()  # type: ignore[attr-defined]
        ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb)  # type: ignore[attr-defined]
        return round(counters.PeakWorkingSetSize / 2**20, 1)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)


def load(
    folder: str, provider: str, device: str, session_options: dict[str, str | bool] | None = None
) -> tuple[Any, str, float]:
    """Load ``folder`` on its ``provider`` (a CPU cell of a non-CPU graph clears the providers); model, device, s.

    ``session_options``: entries laid over the decoder's ``session_options`` of ``genai_config.json``
    (``enable_cpu_mem_arena``, ``graph_optimization_level``, or any ONNX Runtime session config entry); the files
    are not changed.
    """
    import onnxruntime_genai as og

    start = time.perf_counter()
    config = og.Config(folder)
    if device == "CPU" and provider != "cpu":
        config.clear_providers()  # same files, default (CPU) provider: the stand-in cell
    if session_options:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session_options}}}))
    model = og.Model(config)
    return model, str(model.device_type).upper(), time.perf_counter() - start


def generate(
    model: Any, prompt_ids: list[int], max_new_tokens: int, exact: bool = False
) -> tuple[list[int], float, list[float]]:
    """Greedy generation (``exact``: ignore EOS); new token ids, time to first token (s), later per-token times (s)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    length = len(prompt_ids) + max_new_tokens
    params.set_search_options(max_length=length, do_sample=False, **({"min_length": length} if exact else {}))
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    out: list[int] = []
    steps: list[float] = []
    first = 0.0
    while not generator.is_done():
        tick = time.perf_counter()
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
        if len(out) == 1:
            first = time.perf_counter() - start
        else:
            steps.append(time.perf_counter() - tick)
    return out, first, steps


def speed_runs(warmup: int, repeats: int, budget_s: float) -> Iterator[bool]:
    """Yield once per speed run, ``True`` for a measured one: ``warmup`` runs, then up to ``repeats`` measured runs.

    Once ``budget_s`` seconds have passed (warm-up included), no further run starts after the first measured one
    (``0``: no cap). A warm-up run generates :func:`run_tokens` tokens, not the measured length. A full-size
    model's 1024-token prompt costs ~1 min a run on 2 cores, so ``validate.perf_budget_s`` keeps each prompt length
    of each cell near two minutes; the number of runs taken is recorded (``Perf.runs``).
    It lives in this self-contained file so that the ONNX runner and the NPU-library worker, which run in other
    environments, apply the same rule as :mod:`pipeline.openvino.generation`.
    """
    start = time.perf_counter()
    for i in range(warmup + repeats):
        if i > warmup and budget_s and time.perf_counter() - start >= budget_s:
            return
        yield i >= warmup


def run_tokens(measured: bool, new_tokens: int) -> int:
    """New tokens of one speed run: ``new_tokens`` when measured, :data:`WARMUP_NEW_TOKENS` (at most) for a warm-up."""
    return new_tokens if measured else min(new_tokens, WARMUP_NEW_TOKENS)


def time_prompt(
    model: Any, prompt_ids: list[int], new_tokens: int, warmup: int, repeats: int, budget_s: float = 0.0
) -> dict[str, Any]:
    """TTFT and mean TPOT (ms) of each measured run of exactly ``new_tokens`` after ``prompt_ids`` (warm-up excluded).

    Up to ``repeats`` measured runs, fewer once ``budget_s`` seconds are spent (:func:`speed_runs`).
    """
    ttft, tpot = [], []
    for measured in speed_runs(warmup, repeats, budget_s):
        _, first, steps = generate(model, prompt_ids, run_tokens(measured, new_tokens), exact=True)
        if measured:
            ttft.append(first * 1000)
            tpot.append(statistics.mean(steps) * 1000 if steps else float("nan"))
    return {"prompt_tokens": len(prompt_ids), "new_tokens": new_tokens, "ttft_ms": ttft, "tpot_ms": tpot}


def prefill_logits(
    model: Any, windows: list[list[int]], context: int | None = None, chunk: int | None = None
) -> list[Any]:
    """The model's prefill logits over every window (float32): each window in one prompt, as PyTorch computed it.

    ``chunk``: append ``chunk`` tokens at a time instead, only for a graph built with a windowed KV cache, which
    rejects a prompt longer than its window. Chunks change what a LongRoPE model computes: a chunk whose total
    length is still within ``original_max_position_embeddings`` uses the short factors, so a 6000-token window
    would mix short- and long-factor keys (top-1 0.77-0.82 instead of 0.92 on tiny Phi-4, docs/phi4.md).
    ``context`` caps ``max_length`` at the graph's.
    """
    import numpy as np
    import onnxruntime_genai as og

    logits = []
    for window in windows:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=min(len(window) + 1, context or len(window) + 1))
        generator = og.Generator(model, params)
        step, out = chunk or len(window), None
        for start in range(0, len(window), step):
            generator.append_tokens(window[start : start + step])
            part = np.asarray(generator.get_output("logits"), dtype=np.float32)[0]
            if step >= len(window):
                out = part  # one prompt: no second copy
                break
            if out is None:  # chunks go straight into one array: never the parts and their concatenation at once
                out = np.empty((len(window), part.shape[-1]), dtype=np.float32)
            out[start : start + len(part)] = part
            del part
        del generator  # its KV cache (3 GiB in f32 for 4096 tokens of Phi-3-mini) goes before the next window's
        logits.append(out)
    return logits


def measure(request: dict[str, Any], result: dict[str, Any]) -> list[Any]:
    """One cell: fills ``result`` with what :mod:`pipeline.onnx.validate` judges; the prefill logits of each window.

    ``request``: ``folder``, ``provider``, ``device``, optional ``session_options`` (see :func:`load`); ``prompts`` (text, tokenized here), ``max_new_tokens``
    (one per prompt), optional ``prompt_ids`` to generate from instead of this tokenizer's ids; optional ``perf_prompts`` (name -> ids) with ``perf_new_tokens``, ``warmup``, ``repeats``;
    optional ``windows`` (token lists) with ``context`` and ``chunk`` (see :func:`prefill_logits`).
    ``result["step"]`` names the step that was running if this raises.
    """
    result["versions"] = {p: _version(p) for p in ("onnxruntime-genai", "onnxruntime")}
    result["step"] = "import onnxruntime_genai"
    import onnxruntime_genai as og

    result["runtime"] = runtime_versions()

    result["step"] = "load the model"
    model, result["executed"], result["load_s"] = load(
        request["folder"], request["provider"], request["device"], request.get("session_options")
    )
    result["step"] = "load the tokenizer"
    tokenizer = og.Tokenizer(model)
    result["step"] = "generate"
    result["prompt_ids"] = [[int(t) for t in tokenizer.encode(p)] for p in request["prompts"]]
    given = request.get("prompt_ids") or result["prompt_ids"]
    result["outputs"] = [generate(model, ids, n)[0] for ids, n in zip(given, request["max_new_tokens"])]
    result["texts"] = [tokenizer.decode(out) for out in result["outputs"]]
    result["step"] = "time the prompts"
    result["perf"] = {
        name: time_prompt(
            model,
            ids,
            request["perf_new_tokens"],
            request["warmup"],
            request["repeats"],
            request.get("perf_budget_s", 0),
        )
        for name, ids in request.get("perf_prompts", {}).items()
    }
    result["step"] = "compute the prefill logits"
    logits = prefill_logits(model, request.get("windows", []), request.get("context"), request.get("chunk"))
    result["step"], result["peak_rss_mb"] = "done", peak_rss_mb()
    return logits


def runtime_versions() -> dict[str, str]:
    """The distributions that provide the ``onnxruntime_genai`` and ``onnxruntime`` modules here, with versions.

    What ran, by name: ``onnxruntime-genai-directml`` and ``onnxruntime-directml`` in the DirectML environment,
    the CPU packages in the others (:func:`_version` keys both builds by the CPU package's name).
    """
    owners = metadata.packages_distributions()
    modules = ("onnxruntime_genai", "onnxruntime")
    return {name: metadata.version(name) for module in modules for name in sorted(set(owners.get(module, [])))}


def _version(package: str) -> str | None:
    """The installed version of ``package``, or of its DirectML build (``onnxruntime-genai-directml``)."""
    for name in (package, package + "-directml"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def error_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (runtimes raise many lines)."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


class CellError(Exception):
    """A cell that could not run: the step and the runtime's first line, for the cell's problems."""


@contextlib.contextmanager
def attempt(what: str) -> Iterator[None]:
    """Turn any exception of the runtime while doing ``what`` into a one-line :class:`CellError`."""
    try:
        yield
    except Exception as err:  # the runtime refused the graph: a failed cell with its reason, not a traceback
        raise CellError(f"cannot {what}: {error_line(err)}") from err


def main() -> None:
    """Script mode: read the request on stdin, save the logits to ``request['logits_path']``, print one result line."""
    request = json.loads(sys.stdin.read())
    result: dict[str, Any] = {"step": "start"}
    try:
        import numpy as np

        logits = measure(request, result)
        if request.get("logits_path"):
            np.savez(request["logits_path"], *logits)
    except Exception as err:  # reported as data; the caller turns it into one line
        result["error"] = error_line(err)
    print(RESULT_MARK + json.dumps(result))


if __name__ == "__main__":
    main()
