#!/usr/bin/env python3
"""Regenerate the embedded LongRoPE + GQA tiny Phi-3 in ``pipeline/assets/tiny_phi3_128k``.

The asset is a real ``transformers.Phi3ForCausalLM`` shaped like Phi-3-mini-128k where it
matters for export and fidelity checks: LongRoPE (``rope_type`` ``longrope``, short and long
factor lists whose values are not exact in float16, ``original_max_position_embeddings``
4096, ``max_position_embeddings`` 131072), grouped-query attention (4 query heads, 2 KV
heads) and no effective sliding window (262144, as Phi-3-mini-128k). It uses the exact
Phi-3 tokenizer of ``pipeline/assets/tiny_phi3``.

The weights are derived from the trained tiny model in ``pipeline/assets/tiny_phi3``: each
pair of K/V heads is mean-pooled into one KV head, then the transformer layers are
fine-tuned (embedding frozen) on the same docstring corpus that
``scripts/make_tiny_phi3.py`` trains on (its held-out split is checked to be the one in
``tiny_phi3/heldout.txt`` and is never trained on), with windows below and above 4096
tokens so that both factor sets are learnt.

Usage::

    .venv/bin/python scripts/make_tiny_phi3_128k.py

The README of the output folder is written by this script from the measured numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pipeline.core.artifacts import remove_tree
from tiny_phi3.common import MAX_ASSET_DIR_BYTES, REPO_ROOT, folder_bytes, publish
from tiny_phi3.longrope import gqa_from_tiny, make_config
from tiny_phi3.report_128k import README_TEMPLATE, check_windows, readme_info, window_rows, write_readme
from tiny_phi3.train_128k import (BASE_DIR, copy_tokenizer, finetune, load_checked, log, measure, prepare_data,
                                  save_model)

DEFAULT_OUT = REPO_ROOT / "pipeline" / "assets" / "tiny_phi3_128k"


def parse_args(argv: list[str] | None, out: Path = DEFAULT_OUT, doc: str = __doc__) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default=str(out), help="output folder")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--short-steps", type=int, default=60)
    parser.add_argument("--short-batch", type=int, default=8)
    parser.add_argument("--short-len", type=int, default=512)
    parser.add_argument("--mid-steps", type=int, default=10)
    parser.add_argument("--long-steps", type=int, default=12)
    parser.add_argument("--long-max", type=int, default=6500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=10)
    return parser.parse_args(argv)


def build(args: argparse.Namespace, argv: list[str] | None, stage: Path, started: float,
          shape: str = "phi3_128k", template: str = README_TEMPLATE, script: str = "scripts/make_tiny_phi3_128k.py") -> dict:
    """Make the model of ``shape`` in ``stage``: convert, fine-tune, save, reload, measure, write the README."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    copy_tokenizer(stage)
    tok = AutoTokenizer.from_pretrained(stage)
    stream, starts, heldout_ids = prepare_data(tok)
    base = AutoModelForCausalLM.from_pretrained(BASE_DIR).float()
    config = make_config(shape)
    torch.manual_seed(args.seed)
    model = gqa_from_tiny(base, config)
    result = finetune(model, stream, starts, args)
    save_model(model, stage)
    model, tok = load_checked(stage)
    numbers = measure(model, tok, heldout_ids)
    check_windows(numbers["windows"])
    info = readme_info(args, argv, model.config, stream, heldout_ids, result, numbers, script)
    info["total_seconds"] = time.time() - started
    write_readme(stage, info, template)
    log(f"512-token held-out: {numbers['short']}; int4 agreement {numbers['int4_agreement']:.4f}")
    log("windows:\n" + window_rows(numbers["windows"]))
    log(f"sample: {numbers['sample']['text']!r}")
    return info


def main(argv: list[str] | None = None, shape: str = "phi3_128k", out: Path = DEFAULT_OUT,
         template: str = README_TEMPLATE, script: str = "scripts/make_tiny_phi3_128k.py", doc: str = __doc__) -> None:
    """Build the asset of ``shape`` in a staging folder and move it into place only when every check passed.

    ``scripts/make_tiny_phi4.py`` calls this with its own shape, folder and README template.
    """
    from transformers.utils import logging as hf_logging

    args = parse_args(argv, out, doc)
    started = time.time()
    torch.set_num_threads(2)
    hf_logging.disable_progress_bar()
    final_dir = Path(args.out).resolve()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-staging-", dir=final_dir.parent))
    try:
        build(args, argv, stage, started, shape, template, script)
        total = folder_bytes(stage)
        if total > MAX_ASSET_DIR_BYTES:
            raise SystemExit(f"{stage} is {total} bytes > {MAX_ASSET_DIR_BYTES}")
        publish(stage, final_dir)
        log(f"done in {time.time() - started:.0f}s; folder {total} bytes")
    finally:
        remove_tree(stage)  # read-only entries too (Windows)


if __name__ == "__main__":
    main()
