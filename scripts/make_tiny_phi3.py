#!/usr/bin/env python3
"""Regenerate the embedded tiny Phi-3 test model in ``pipeline/assets/tiny_phi3``.

The assets are a real ``transformers.Phi3ForCausalLM`` (2 layers, hidden size 256,
vocabulary 32064, tied embeddings, float16 safetensors) that speaks through the
*exact* Phi-3 tokenizer, so the pipeline can be exercised end to end on CPU
without the Hugging Face hub.

Everything is derived from files that are reachable without the hub:

* The Phi-3 vocabulary (pieces, scores, token types) comes from
  ``ggml-vocab-phi-3.gguf``, which llama.cpp ships (with its tokenizer test
  vectors ``.inp``/``.out``) under ``vendor/llama.cpp/models/`` in the
  ``llama-cpp-python==0.3.36`` sdist on PyPI.
* The sentencepiece-style BPE merges are rebuilt from the piece scores, the
  special-token flags and chat template mirror the published
  ``microsoft/Phi-3-mini-4k-instruct`` tokenizer files, and the result must
  reproduce every llama.cpp test vector exactly (the script fails otherwise).
* The training text is the docstrings of the Python standard library of the
  interpreter that runs this script, plus chat samples in the Phi-3 format.

Usage::

    .venv/bin/python scripts/make_tiny_phi3.py                  # fetch sdist, build
    .venv/bin/python scripts/make_tiny_phi3.py --gguf PATH      # use a local GGUF

With ``--gguf PATH`` the test vectors are read from ``PATH.inp`` and
``PATH.out``.  Outputs go to ``--out`` (default ``pipeline/assets/tiny_phi3``)
and the test vectors are copied to ``--vocab-tests-out`` (default
``pipeline/assets/phi3_vocab_tests``).  The README of the output folder is
written by this script from the measured numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core.artifacts import remove_tree
from tiny_phi3.common import INTRO_QUESTIONS, PROMPT, REPO_ROOT, SYSTEM_PROMPT, VOCAB_SIZE, log, publish
from tiny_phi3.corpus import (HELDOUT_MODULUS, INTRO_COPIES, MIN_DOC_CHARS, SKIP_MODULES, build_stream, chat_samples,
                              collect_docs, heldout_text, is_heldout)
from tiny_phi3.report import report, write_readme
from tiny_phi3.tokenizer import prepare_tokenizer
from tiny_phi3.train import evaluate, greedy_sample, int4_agreement, load_checked, make_model, save_model, train
from tiny_phi3.vocab_tests import SDIST_NAME, SDIST_VERSION

DEFAULT_OUT = REPO_ROOT / "pipeline" / "assets" / "tiny_phi3"
DEFAULT_VOCAB_TESTS_OUT = REPO_ROOT / "pipeline" / "assets" / "phi3_vocab_tests"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (None for ``sys.argv``).

    Returns:
        The parsed namespace.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", help="local ggml-vocab-phi-3.gguf (with .inp/.out next to it); "
                        f"default: download the {SDIST_NAME}=={SDIST_VERSION} sdist")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--vocab-tests-out", default=str(DEFAULT_VOCAB_TESTS_OUT),
                        help="folder receiving the .inp/.out test vectors")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, default=540)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--tokenizer-only", action="store_true",
                        help="build and verify the tokenizer, then stop")
    return parser.parse_args(argv)


def prepare_data(tok, out_dir: Path, seed: int) -> tuple[np.ndarray, np.ndarray, list, dict]:
    """Collect the corpus, write ``heldout.txt`` and build the training stream.

    Args:
        tok: The transformers tokenizer.
        out_dir: Output folder.
        seed: Shuffle seed.

    Returns:
        The stream, document starts, held-out ids and README values.
    """
    docs = collect_docs()
    train_docs = [doc for doc in docs if not is_heldout(doc)]
    heldout = heldout_text([doc for doc in docs if is_heldout(doc)])
    (out_dir / "heldout.txt").write_text(heldout, encoding="utf-8")
    heldout_ids = tok(heldout, add_special_tokens=False, verbose=False)["input_ids"]
    samples = chat_samples(train_docs)
    stream, starts = build_stream(tok, [doc.text for doc in train_docs] + samples, seed)
    log(f"data: {len(train_docs)} train docs + {len(samples)} chat samples = "
        f"{len(stream)} tokens; held-out {len(heldout.encode())} bytes, {len(heldout_ids)} tokens")
    info = {"n_docs": len(docs), "n_chars": sum(len(d.text) for d in docs),
            "n_heldout": len(docs) - len(train_docs), "heldout_bytes": len(heldout.encode()),
            "heldout_tokens": len(heldout_ids), "n_chat": len(samples),
            "stream_tokens": len(stream), "used_ids": len(np.unique(stream)),
            "n_unused": VOCAB_SIZE - len(np.unique(stream))}
    return stream, starts, heldout_ids, info


def static_info(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """Return README values that do not depend on the run's results.

    Args:
        args: Parsed arguments.
        argv: The raw arguments, to reproduce the command.

    Returns:
        A dict of README values.
    """
    import transformers

    command_args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join([".venv/bin/python", "scripts/make_tiny_phi3.py", *command_args]),
        "python": platform.python_version(), "platform": platform.platform(terse=True),
        "min_chars": MIN_DOC_CHARS, "modulus": HELDOUT_MODULUS,
        "skipped": ", ".join(f"`{m}`" for m in sorted(SKIP_MODULES)) + ", private names, tests",
        "system": SYSTEM_PROMPT, "intro_copies": INTRO_COPIES, "intro_q": INTRO_QUESTIONS[0],
        "seed": args.seed, "lr": args.lr, "warmup": args.warmup, "steps": args.steps,
        "batch": args.batch_size, "seq_len": args.seq_len,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "prompt": PROMPT,
    }


def build_model(args: argparse.Namespace, out_dir: Path) -> tuple[dict, dict]:
    """Collect the data, train, save, reload and measure the model.

    Args:
        args: Parsed arguments.
        out_dir: Folder that already holds the verified tokenizer.

    Returns:
        README values and the full-vocabulary evaluation on training tokens.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    stream, starts, heldout_ids, info = prepare_data(tok, out_dir, args.seed)
    model = make_model(args.seed)
    result = train(model, stream, starts, args)
    save_model(model, out_dir)
    model, tok = load_checked(out_dir)
    heldout = evaluate(model, heldout_ids, args.seq_len)
    train_eval_tokens = min(len(stream), 4 * len(heldout_ids))
    train_eval = evaluate(model, stream[:train_eval_tokens].tolist(), args.seq_len)
    sample = greedy_sample(model, tok)
    info |= {
        "int4_agreement": int4_agreement(model, heldout_ids, args.seq_len),
        "train_tokens": result.tokens, "final_loss": result.final_loss,
        "train_seconds": result.seconds, "loss_log": result.loss_log,
        "step_seconds": result.seconds / result.steps, "load_note": load_note(),
        "train_loss": train_eval["loss"], "train_eval_tokens": train_eval_tokens,
        "heldout_loss": heldout["loss"], "heldout_acc": heldout["top1_acc"],
        "gap_median": heldout["gap_median"], "gap_p10": heldout["gap_p10"],
        "gap_min": heldout["gap_min"], "positions": heldout["positions"],
        "sample_text": sample["text"], "sample_ids": sample["ids"]}
    return info, train_eval


def load_note() -> str:
    """Describe the machine load, which explains slow training steps.

    Returns:
        A sentence fragment with the 5-minute load average.
    """
    if not hasattr(os, "getloadavg"):  # Windows has no load average
        return "the load average is not available on this OS"
    load = os.getloadavg()[1]
    shared = "other jobs were sharing the CPUs" if load > 2.5 else "the CPUs were not shared"
    return f"the 5-minute load average after training was {load:.1f} ({shared})"


def main(argv: list[str] | None = None) -> None:
    """Build the tokenizer, train the model, verify everything and write the README.

    All files are made in a staging folder next to ``--out`` and moved into
    place only after every check passed, so a failed run leaves the old assets.

    Args:
        argv: Command-line arguments (None for ``sys.argv``).
    """
    from transformers.utils import logging as hf_logging

    args = parse_args(argv)
    started = time.time()
    torch.set_num_threads(2)
    hf_logging.disable_progress_bar()
    final_dir = Path(args.out).resolve()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-staging-", dir=final_dir.parent))
    try:
        info = static_info(args, argv) | prepare_tokenizer(args, stage)
        if not args.tokenizer_only:
            model_info, train_eval = build_model(args, stage)
            info |= model_info | {"total_seconds": time.time() - started}
            write_readme(stage, info)
            report(stage, info, train_eval)
        publish(stage, final_dir)
    finally:
        remove_tree(stage)  # read-only entries too (Windows)


if __name__ == "__main__":
    main()
