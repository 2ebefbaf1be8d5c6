"""``worker.py validate``: load the library's model (hash first, allow-listed), generate, time, save logits.

Runs in the library's environment (standard library + torch + transformers + the library), imported by
:mod:`pipeline.npu_lib.worker`; fidelity is computed in the main environment from the saved logits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.npu_lib.worker_compile import import_library, versions
from pipeline.npu_lib.worker_pickle import check_hash, load_model


class TokenTimes:
    """A ``generate`` streamer that only records when each chunk of tokens arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        """Called with the prompt first, then with every new token."""
        self.times.append(time.perf_counter())

    def end(self) -> None:
        """Called once generation stops."""


def generate(
    model: Any, prompt_ids: list[int], max_new_tokens: int, streamer: Any = None, exact: bool = False
) -> list[int]:
    """Greedy continuation of ``prompt_ids`` (new token ids only; ``exact``: ignore EOS)."""
    import torch

    ids = torch.tensor([prompt_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if exact else None,
        do_sample=False,
        streamer=streamer,
    )
    return out[0, ids.shape[1] :].tolist()


def forced_answer(model: Any, case: dict) -> list[int]:
    """What greedy decoding of ``case``'s prompt gives, up to its first token that departs from the reference's answer.

    One forward pass over the prompt and the reference's answer (teacher forcing): while the model's top token at each
    answer position is the reference's, greedy decoding would have produced that same token, so the answer is the
    reference's up to the first position where the top token differs, and that token ends it. What the validation
    judges from answers (exact match, the first departing token and PyTorch's margin there) is the same; the text
    after the departure is not produced. On the CPU stand-in this replaces 32 decode steps per prompt (6.7 s each for
    the full-size int4 model) by one prefill. Prefill and decode run different kernels, so at a near tie the two can
    pick differently; the validation's near-tie notes cover that either way.
    """
    import torch

    prompt, answer = case["prompt_ids"], case["output_ids"]
    if not answer:
        return []
    drop_kernels()
    logits = model(torch.tensor([prompt + answer])).logits[0]
    picks = logits[len(prompt) - 1 : len(prompt) + len(answer) - 1].argmax(-1).tolist()
    departs = next((i for i, (got, want) in enumerate(zip(picks, answer)) if got != want), None)
    return list(answer) if departs is None else [*answer[:departs], picks[departs]]


def drop_kernels() -> None:
    """Drop the library's compiled kernels before a prompt of another length (its results do not change).

    The library compiles one OpenVINO model per layer shape and token count and keeps all of them
    (``backend.runtime._model_cache``); on the CPU each holds buffers the size of its layer's weights widened to
    float. The validation's prompts have six lengths, so they piled up: 7.42 GiB for the 2.1 GiB int4 Phi-3-mini,
    5.81 GiB with this (docs/npu.md). Each phase now starts from an empty cache: a prompt's
    prefill and decode kernels are compiled again on first use (the warm-up run of a timed prompt still
    compiles them before anything is timed). The freed kernels' heap is then handed back to the system (glibc's
    ``malloc_trim``): without it 0.3 GiB of it stayed resident per phase, and the full-size int8 stand-in, whose
    1024-token prefill adds 2.8 GiB of kernels and activations, peaked at 8.09 GiB.
    """
    import gc

    from intel_npu_acceleration_library.backend import runtime

    runtime.clear_cache()
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Hand the heap's freed pages back to the system (glibc's ``malloc_trim``; a no-op elsewhere).

    The twin of what :class:`pipeline.core.memory.MappedPageTrimmer` does after each pass, which this worker may
    not import (it runs in the library's environment: ``pyproject.toml``'s import contract).
    """
    import ctypes

    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None)  # the process's own C library, as memory.py loads it (no ldconfig lookup)
        if hasattr(libc, "malloc_trim"):  # glibc; musl has none
            libc.malloc_trim(0)


def timings(model: Any, prompt_ids: list[int], args: argparse.Namespace) -> dict[str, list[float]]:
    """TTFT and TPOT (ms) of each measured run of exactly ``--new-tokens`` tokens (warm-up runs dropped), fewer
    runs once ``--budget-s`` is spent (``validate.perf_budget_s``: at 0.23 tokens/s on a 2-core CPU, the full-size
    int4 stand-in took 19 minutes for its speed runs without it)."""
    # standard library only: importable in this environment
    from pipeline.validation.genai_runner import run_tokens, speed_runs

    drop_kernels()
    ttft, tpot = [], []
    for measured in speed_runs(args.warmup, args.repeats, args.budget_s):
        timer = TokenTimes()
        start = time.perf_counter()
        generate(model, prompt_ids, run_tokens(measured, args.new_tokens), timer, exact=True)
        trim_heap()  # a run's freed activations, before the next run's prefill (after the timed part)
        if not measured:
            continue
        new = timer.times[1:]  # times[0] is the prompt
        ttft.append((new[0] - start) * 1000)
        tpot.append((new[-1] - new[0]) / max(len(new) - 1, 1) * 1000)
    return {"prompt_tokens": len(prompt_ids), "new_tokens": args.new_tokens, "ttft_ms": ttft, "tpot_ms": tpot}


def save_teacher_forced_logits(model: Any, windows: list[dict], path: Path) -> None:
    """Save the model's logits over each held-out window as ``w0, w1, ...`` in an ``.npz`` (float32, no pickles)."""
    import numpy as np
    import torch

    drop_kernels()
    with torch.inference_mode():
        logits = {
            f"w{i}": model(torch.tensor([w["input_ids"]])).logits[0].float().numpy() for i, w in enumerate(windows)
        }
    np.savez(path, **logits)


def peak_rss_mb() -> float:
    """Peak resident set size of this worker process."""
    if sys.platform == "win32":  # no resource module there
        import psutil

        return round(psutil.Process().memory_info().peak_wset / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def validate_model(args: argparse.Namespace) -> dict[str, Any]:
    """Check the hash, load the pickle, then measure speed (unless ``--no-speed``) and fidelity against the reference."""
    check_hash(Path(args.model_file), args.sha256)  # before torch or the library is even imported
    import torch
    from transformers import AutoTokenizer

    device = import_library()
    start = time.perf_counter()
    model = load_model(Path(args.model_file))
    load_s = time.perf_counter() - start
    model.eval()
    reference = json.loads(Path(args.reference).read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    phase_s = {"load": round(load_s, 3)}  # where the cell's time goes (the validator logs it)
    with torch.inference_mode():
        outputs = []
        start = time.perf_counter()
        for case in reference["greedy"]:
            if args.forced_answers:
                outputs.append(forced_answer(model, case))
                continue
            drop_kernels()
            outputs.append(generate(model, case["prompt_ids"], args.max_new_tokens))
        phase_s["forced_answers" if args.forced_answers else "greedy"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        perf = {} if args.no_speed else {k: timings(model, ids, args) for k, ids in reference["perf_prompts"].items()}
        phase_s["speed"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    save_teacher_forced_logits(model, reference["teacher_forced"], Path(args.logits))
    phase_s["teacher_forced"] = round(time.perf_counter() - start, 3)
    first = reference["greedy"][0]
    return {
        **device,
        "perf": perf,
        "phase_s": phase_s,
        "load_s": round(load_s, 4),
        "outputs": outputs,
        "forced_answers": bool(args.forced_answers),
        "text": tokenizer.decode(outputs[0], skip_special_tokens=True),
        "tokenizer_matches_reference": tokenizer(first["prompt"], add_special_tokens=False)["input_ids"]
        == first["prompt_ids"],
        "peak_rss_mb": peak_rss_mb(),
        "versions": versions(),
    }
