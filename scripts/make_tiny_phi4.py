#!/usr/bin/env python3
"""Regenerate the embedded Phi-4-mini-shaped tiny model in ``pipeline/assets/tiny_phi4``.

A real ``transformers.Phi3ForCausalLM`` with Phi-4-mini's head and rotary shapes: head dim 128,
``partial_rotary_factor`` 0.75 (rotary dim 96, a cos/sin cache 48 wide, which onnxruntime's
GroupQueryAttention accepts), grouped-query attention (2 query heads, 1 KV head), LongRoPE
(4096 -> 131072) and tied embeddings. It uses the exact Phi-3 tokenizer of ``pipeline/assets/tiny_phi3``
(Phi-4's o200k-based tokenizer is not rebuilt: see the asset README).

Made exactly like ``scripts/make_tiny_phi3_128k.py`` (same code, shape ``phi4``): weights derived
from ``pipeline/assets/tiny_phi3``, then the transformer layers fine-tuned on the same docstring
corpus with windows below and above 4096 tokens.

Usage::

    .venv/bin/python scripts/make_tiny_phi4.py

The README of the output folder is written by this script from the measured numbers.
"""

from __future__ import annotations

import make_tiny_phi3_128k
from tiny_phi3.common import REPO_ROOT
from tiny_phi3.report_phi4 import README_TEMPLATE

DEFAULT_OUT = REPO_ROOT / "pipeline" / "assets" / "tiny_phi4"


def main(argv: list[str] | None = None) -> None:
    """Build ``pipeline/assets/tiny_phi4`` (``--out`` elsewhere) and check it before it replaces the old one."""
    make_tiny_phi3_128k.main(argv, shape="phi4", out=DEFAULT_OUT, template=README_TEMPLATE,
                             script="scripts/make_tiny_phi4.py", doc=__doc__)


if __name__ == "__main__":
    main()
