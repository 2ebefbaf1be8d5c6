"""Stage ``reference``: run the original PyTorch model once and record what every export must match.

Records, for the validation prompts (in the checkpoint's chat template, :mod:`pipeline.validation.prompts`), the
greedy continuation token ids up to the model's end token; for a held-out text, the teacher-forced top-1
next-token ids (with their logit margins) and the next-token log-probs every validator needs for KL divergence and
perplexity (:mod:`pipeline.validation.fidelity`); and the token ids of the speed-test prompts
(``validate.perf_prompt_tokens``): a chat turn around held-out text after the evaluated part. Validation stages
compare each exported model against these files, so the PyTorch model is loaded once per pipeline, not per export.
Output: ``artifacts/reference/reference.json`` and ``logprobs.npz`` (plain arrays) with ``manifest.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core import eta
from pipeline.core.artifacts import ARTIFACTS, staged_dir, write_json_atomic
from pipeline.core.config import ASSETS_DIR, ValidateConfig, load_params
from pipeline.core.errors import fail, run_main
from pipeline.core.log import say
from pipeline.core.manifest import read_manifest, write_manifest
from pipeline.core.memory import MappedPageTrimmer, weight_files
from pipeline.core.resources import check_stage_ram
from pipeline.validation import prompts as chat_prompts
from pipeline.validation.fidelity import LOGPROBS_FILE, LONG_LOGPROBS_FILE, ReferenceLogprobs, log_softmax, top_k_ids
from pipeline.validation.upcast import compute_in_float32

MODEL_DIR = ARTIFACTS / "model"
OUT_DIR = ARTIFACTS / "reference"
HELDOUT_TEXT = ASSETS_DIR / "tiny_phi3" / "heldout.txt"


def heldout_ids(tokenizer: Any) -> list[int]:
    """The held-out text shipped in the package, tokenized."""
    # verbose=False: the held-out text is longer than the context on purpose (it is cut into windows), not an error
    return tokenizer(HELDOUT_TEXT.read_text(encoding="utf-8"), add_special_tokens=False, verbose=False)["input_ids"]


def eval_windows(tokenizer: Any, cfg: ValidateConfig) -> list[list[int]]:
    """Token windows of the held-out text used for teacher-forced comparison."""
    ids = heldout_ids(tokenizer)[: cfg.eval_tokens]
    return [
        ids[i : i + cfg.eval_window]
        for i in range(0, len(ids), cfg.eval_window)
        if len(ids[i : i + cfg.eval_window]) > 1
    ]


def context_limits(config: Any) -> dict[str, int | None]:
    """Positions where a Phi-3 stops behaving like a plain transformer: its context, sliding window, LongRoPE switch."""
    rope = getattr(config, "rope_parameters", None) or {}
    original = getattr(config, "original_max_position_embeddings", None) or rope.get("original_max_position_embeddings")
    longrope = rope.get("rope_type") == "longrope"
    return {
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "sliding_window": getattr(config, "sliding_window", None),
        "original_max_position_embeddings": original if longrope else None,
    }


def long_context_plan(tokenizer: Any, cfg: ValidateConfig, limits: dict[str, int | None]) -> dict[str, Any]:
    """Long teacher-forced windows (from the start of the held-out text) and the boundaries between their ranges.

    Each configured length is capped at the model's context length; a LongRoPE model is checked on both sides of
    ``original_max_position_embeddings`` because transformers picks its rope factors by sequence length.
    """
    ids = heldout_ids(tokenizer)
    context = limits["max_position_embeddings"] or max(cfg.long_context.lengths, default=0)
    lengths = sorted({min(length, context) for length in cfg.long_context.lengths})
    if not limits["original_max_position_embeddings"]:
        lengths = lengths[-1:]  # one rope for every length: a shorter window repeats the longest one's first positions
    if lengths and lengths[-1] > len(ids):
        fail(
            f"validate.long_context.lengths asks for {lengths[-1]} tokens but the held-out text has {len(ids)}: lower it"
        )
    model_cuts = [cut for k in ("sliding_window", "original_max_position_embeddings") if (cut := limits[k])]
    boundaries = sorted({*cfg.long_context.boundaries, *model_cuts})
    return {"windows": [ids[:length] for length in lengths], "boundaries": boundaries, "limits": limits}


def perf_prompts(tokenizer: Any, cfg: ValidateConfig) -> dict[str, list[int]]:
    """Speed-test prompts of exactly the configured lengths: a user turn of the chat template holding held-out
    text the evaluation does not use, then the open assistant turn."""
    rest = heldout_ids(tokenizer)[cfg.eval_tokens :]
    longest = max(cfg.perf_prompt_tokens.values())
    if longest > len(rest):
        fail(
            f"validate.perf_prompt_tokens asks for {longest} tokens but the held-out text has {len(rest)} after "
            f"the {cfg.eval_tokens} evaluated ones: lower it"
        )
    return {
        name: chat_prompts.templated_ids(tokenizer, rest, length, f"validate.perf_prompt_tokens.{name}")
        for name, length in cfg.perf_prompt_tokens.items()
    }


LOGIT_ROWS = 256  # positions whose [rows, vocab] float32 logits exist at a time (a 6000-token window's are 734 MiB)


def logit_chunks(model: Any, window: list[int]) -> Iterator[Any]:
    """The float32 logits (a tensor) of ``window``, ``LOGIT_ROWS`` positions at a time, from one forward pass."""
    import torch

    with torch.inference_mode():
        hidden = model.model(torch.tensor([window]), use_cache=False).last_hidden_state[0]
        for start in range(0, len(window), LOGIT_ROWS):
            yield model.lm_head(hidden[start : start + LOGIT_ROWS]).float()


def logprob_rows(logits: Any, following: Any, top_k: int) -> tuple[Any, ...]:
    """Top-k ids and log-probs, and the log-prob of the ``following`` token (-1: unknown), per row of ``logits``.

    The same arithmetic as :func:`pipeline.validation.fidelity.reference_from_logits`, on a chunk of a window.
    """
    import numpy as np

    logp = log_softmax(logits)
    top = top_k_ids(logp, top_k)
    picked = np.take_along_axis(logp, np.maximum(following, 0)[:, None], axis=-1)[:, 0]
    return (
        top.astype(np.int32),
        np.take_along_axis(logp, top, axis=-1).astype(np.float32),
        following,
        np.where(following >= 0, picked, np.nan).astype(np.float32),
    )


def reference_logprobs(
    model: Any, windows: list[list[int]], top_k: int
) -> tuple[ReferenceLogprobs, list[dict[str, Any]]]:
    """Teacher-forced top-k log-probs of each window, and each window's top-1 ids with their top-1/top-2 margins.

    No window's full ``[length, vocab]`` logits are held: each chunk is reduced to its top-k before the next.
    """
    import numpy as np

    rows: list[tuple[Any, ...]] = []
    forced = []
    for window in windows:
        following = np.array(list(window[1:]) + [-1], dtype=np.int32)
        top1, margin, start = [], [], 0
        for logits in logit_chunks(model, window):
            rows.append(logprob_rows(logits.numpy(), following[start : start + len(logits)], top_k))
            top2 = logits.topk(2, dim=-1)
            top1 += top2.indices[:, 0].tolist()
            margin += (top2.values[:, 0] - top2.values[:, 1]).tolist()
            start += len(logits)
        forced.append({"input_ids": window, "top1": top1, "margin": margin})
    topk_ids, topk_logprobs, next_ids, next_logprobs = (np.concatenate(column) for column in zip(*rows))
    lengths = np.array([len(w) for w in windows], dtype=np.int32)
    return ReferenceLogprobs(topk_ids, topk_logprobs, next_ids, next_logprobs, lengths), forced


def greedy(
    model: Any, tokenizer: Any, prompts: list[Any], max_new_tokens: int, stop: list[int] | None = None
) -> list[dict[str, Any]]:
    """Greedy continuations (token ids and text) for each prompt (chat messages, rendered with the model's chat
    template), stopping on ``stop`` (default: the model's end tokens, :func:`.prompts.stop_token_ids`)."""
    import torch

    if stop is None:
        stop = chat_prompts.stop_token_ids(tokenizer, model.generation_config.eos_token_id)
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            text = chat_prompts.render_prompt(tokenizer, prompt)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            generated = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                output_logits=True,
                return_dict_in_generate=True,
            )
            new = generated.sequences[0, len(ids) :].tolist()
            # top-1 minus top-2 logit at each answer token: where two correct runtimes may part ways (near ties)
            margins = [round(float(d[0] - d[1]), 4) for d in (s[0].float().topk(2).values for s in generated.logits)]
            out.append(
                {
                    "messages": chat_prompts.as_messages(prompt),
                    "prompt": text,
                    "prompt_ids": ids,
                    "output_ids": new,
                    "margins": margins[: len(new)],
                    "text": tokenizer.decode(new, skip_special_tokens=True),
                }
            )
    return out


def load_model(model_dir: Path, dtype: str) -> Any:
    """The PyTorch model computing in ``dtype``; for float32, its weights stay as stored (no float32 copy).

    A bf16 checkpoint read as float32 took 2x its size plus transformers' loading copies (21.0 GiB for
    Phi-3-mini); :func:`pipeline.validation.upcast.compute_in_float32` gives the same float32 results from the
    memory-mapped weights (``docs/benchmarks.md``). The mapped checkpoint is then most of the stage's memory; a
    long window's activations (0.9 GiB per decoder layer at 4096 tokens) would come on top of it, so during that
    pass the pages each layer has used are handed back (Linux; greedy decoding reads them again, once).
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype != "float32":
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
    compute_in_float32(model)
    return model


def run(cfg: ValidateConfig, model_dir: Path = MODEL_DIR, out_dir: Path = OUT_DIR) -> dict:
    """Compute the PyTorch reference for ``cfg`` from the model in ``model_dir``."""
    import statistics

    import numpy as np
    from transformers import AutoTokenizer

    source = read_manifest(model_dir)
    check_stage_ram("reference", cfg.reference_dtype, model_dir)
    clock = eta.reference_clock(model_dir, cfg.reference_dtype)
    with clock.step(f"loading PyTorch model {source.get('model')} (computing in {cfg.reference_dtype})"):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = load_model(model_dir, cfg.reference_dtype)
    with clock.step("teacher-forced pass over held-out text"):
        windows = eval_windows(tokenizer, cfg)
        logprobs, forced = reference_logprobs(model, windows, cfg.kl_top_k)
    long = long_context_plan(tokenizer, cfg, context_limits(model.config))
    with (
        clock.step(
            f"teacher-forced long-context windows of {[len(w) for w in long['windows']]} tokens "
            f"(boundaries {long['boundaries']})"
        ),
        MappedPageTrimmer(weight_files(model_dir)),  # see load_model
    ):
        long_logprobs, _ = reference_logprobs(model, long["windows"], cfg.long_context.top_k)
    stop = chat_prompts.stop_token_ids(tokenizer, model.generation_config.eos_token_id)
    with clock.step(
        f"greedy generation for {len(cfg.prompts)} prompts (chat template: {chat_prompts.template_source(tokenizer)})"
    ):
        generations = greedy(model, tokenizer, cfg.prompts, cfg.max_new_tokens, stop)
    margins = sorted(m for w in forced for m in w["margin"])
    result: dict[str, Any] = {
        "model": source.get("model"),
        "dtype": cfg.reference_dtype,
        "teacher_forced": forced,
        "chat_template": chat_prompts.template_source(tokenizer),  # "phi3": the checkpoint has none
        "stop_token_ids": stop,  # greedy outputs are compared up to the first of these (the model's end tokens)
        "greedy": generations,
        "perf_prompts": perf_prompts(tokenizer, cfg),
        "perplexity": logprobs.perplexity,
        "kl_top_k": cfg.kl_top_k,
        "kl_top_k_mass": float(np.exp(logprobs.topk_logprobs.astype(np.float64)).sum(-1).mean()),
        "long_context": {
            "windows": long["windows"],
            "boundaries": long["boundaries"],
            "limits": long["limits"],
            "top_k": cfg.long_context.top_k,
        },
        "margin_stats": {
            "median": statistics.median(margins),
            "p10": margins[len(margins) // 10],
            "positions": len(margins),
        },
    }
    with staged_dir(out_dir) as tmp:
        write_json_atomic(tmp / "reference.json", result)
        logprobs.save(tmp / LOGPROBS_FILE)
        long_logprobs.save(tmp / LONG_LOGPROBS_FILE)
        write_manifest(
            tmp,
            stage="reference",
            source_model=source.get("model"),
            source_files_sha256={k: v["sha256"] for k, v in source["files"].items()},
        )
    say(
        f"reference ready: {result['margin_stats']['positions']} positions, median top-1 margin "
        f"{result['margin_stats']['median']:.2f}, perplexity {logprobs.perplexity:.2f}, top-{cfg.kl_top_k} mass "
        f"{result['kl_top_k_mass']:.3f}; sample: {generations[0]['text'][:60]!r}"
    )
    return result


def main() -> None:
    """DVC entry point: compute the reference from ``params.yaml``'s ``validate`` section."""
    from pipeline.core.leftovers import sweep_leftovers

    sweep_leftovers()  # killed stages' temporaries anywhere under artifacts/
    run(load_params().validate)


if __name__ == "__main__":
    run_main(main)
