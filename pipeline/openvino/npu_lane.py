"""The NPU pipeline without an NPU: OpenVINO's NPUW runs the NPU LLM pipeline on a CPU backend.

``LLMPipeline(ir, "NPU", NPUW_DEVICES="CPU", NPUW_ONLINE_PIPELINE="NONE", MAX_PROMPT_LEN=..., ...)`` goes
through the same NPU-specific path as a real NPU (static prompt/response shapes, MAX_PROMPT_LEN and
MIN_RESPONSE_LEN, blob export and import) with every subgraph compiled for the CPU; only the NPU compiler
and driver are not exercised. OpenVINO GenAI's own Linux CI tests its NPU pipeline this way. Its cost grows
fast with the model (a Phi-3-mini-shaped NPU IR peaked at 22.3 GB RSS, 19.5 s to first token, 4.4 s a token),
so it runs only below ``validate.npuw_max_size_mb``; above, the NPU cell says why it was not emulated.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import folder_bytes
from pipeline.core.errors import fail

NPUW_CPU = {"NPUW_DEVICES": "CPU", "NPUW_ONLINE_PIPELINE": "NONE"}
LABEL = "NPU pipeline (NPUW), CPU backend: NPU compiler not exercised"
BLOB_BACKEND = "NPUW CPU backend, for pipeline testing; recompile on the target"


def too_large(ir_dir: Path, max_size_mb: float) -> str | None:
    """Why the NPUW lane does not run for this IR (its size), or ``None`` when it does."""
    size_mb = folder_bytes(ir_dir) / 2**20
    if size_mb <= max_size_mb:
        return None
    return (
        f"the NPU pipeline is not emulated on CPU for a {size_mb:.0f} MB IR (above validate.npuw_max_size_mb "
        f"{max_size_mb:g}: NPUW on CPU needed 22.3 GB for Phi-3-mini); it runs on the target's NPU"
    )


def check_prompt_fits(prompt_tokens: int, settings: dict[str, Any], variant: str = "<v>") -> None:
    """Fail with one line when a prompt is longer than the NPU artifact's ``MAX_PROMPT_LEN``."""
    limit = settings.get("MAX_PROMPT_LEN")
    if limit is not None and prompt_tokens > int(limit):
        fail(prompt_limit_message(prompt_tokens, int(limit), variant))


def prompt_limit_message(prompt_tokens: int | None, limit: int | None, variant: str = "<v>") -> str:
    """One line for a prompt over the NPU's MAX_PROMPT_LEN, with how to rebuild with a larger limit."""
    have = f"{prompt_tokens} tokens" if prompt_tokens is not None else "more tokens"
    return (
        f"the prompt has {have} but this NPU artifact takes at most {limit} (MAX_PROMPT_LEN): shorten it, "
        f"or rebuild with a larger limit: aipc exp-run -S npu.{variant}.max_prompt_len={2 * (limit or 1024)}"
    )


def as_prompt_limit_error(err: Exception) -> str | None:
    """Our one line for NPUW's multi-line "Set the MAX_PROMPT_LEN config option" error, else ``None``."""
    text = str(err)
    if "MAX_PROMPT_LEN" not in text:
        return None
    found = re.search(r"up to (\d+) tokens\. (\d+) is passed", text)
    limit, got = (int(found.group(1)), int(found.group(2))) if found else (None, None)
    return prompt_limit_message(got, limit)


def generate_ids(pipe: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy token ids after ``prompt_ids``; an over-long prompt becomes one line, not NPUW's traceback."""
    import numpy as np
    import openvino as ov

    cfg = pipe.get_generation_config()
    cfg.max_new_tokens, cfg.do_sample = max_new_tokens, False
    try:
        return [int(t) for t in pipe.generate(ov.Tensor(np.array([prompt_ids], dtype=np.int64)), cfg).tokens[0]]
    except RuntimeError as err:
        line = as_prompt_limit_error(err)
        if line:
            fail(line)
        raise


def blob_round_trip(
    ir_dir: Path, settings: dict[str, Any], prompt_ids: list[int], max_new_tokens: int = 16, scratch: Path | None = None
) -> dict[str, Any]:
    """Export the NPUW CPU-backend blob (weights included), load it again, and check it generates the same tokens.

    The blob is written to a scratch folder and not shipped: a CPU-backend blob is no NPU blob.

    Returns:
        Facts for the manifest: backend, blob size, compile and reload seconds, whether the tokens matched.
    """
    import openvino_genai as ov_genai

    base = {**settings, **NPUW_CPU, "CACHE_MODE": "OPTIMIZE_SPEED"}  # the blob carries its weights
    with tempfile.TemporaryDirectory(prefix="npuw-blob-", dir=scratch) as tmp:
        blob = Path(tmp) / "openvino_model.npuw-cpu.blob"
        start = time.perf_counter()
        pipe = ov_genai.LLMPipeline(str(ir_dir), "NPU", **base, EXPORT_BLOB="YES", BLOB_PATH=str(blob))
        compile_s = time.perf_counter() - start
        first = generate_ids(pipe, prompt_ids, max_new_tokens)
        del pipe
        if not blob.is_file():
            fail(f"NPUW compiled {ir_dir} but wrote no blob: OpenVINO's NPU plugin no longer exports one")
        size = blob.stat().st_size
        start = time.perf_counter()
        pipe = ov_genai.LLMPipeline(str(ir_dir), "NPU", **base, BLOB_PATH=str(blob))
        load_s = time.perf_counter() - start
        again = generate_ids(pipe, prompt_ids, max_new_tokens)
        del pipe
    return {
        "compiled_by": BLOB_BACKEND,
        "bytes": size,
        "same_tokens_after_reload": first == again,
        "tokens": first,
        "compile_s": round(compile_s, 3),
        "load_from_blob_s": round(load_s, 3),
    }
