"""Run a 16-bit checkpoint in float32 without a float32 copy of it: the reference stage's low-memory path.

Loading Phi-3-mini in float32 doubles its 7.1 GiB of bf16 weights (the reference stage peaked at 21.0 GiB,
issue 20). Here the weights stay as stored, memory-mapped by transformers, and only the computation is float32:

* every ``nn.Linear`` widens its weight into one reusable float32 scratch buffer just before its matmul, then
  calls the same ``F.linear`` on the same shapes as a float32 model would. The buffer holds the largest weight
  of a decoder layer (``gate_up_proj``: 192 MiB for Phi-3-mini); the LM head (376 MiB in float32) is widened
  and multiplied a block of vocabulary rows at a time;
* every ``nn.Embedding`` looks its rows up in 16 bits and widens them, so the residual stream is float32;
* the remaining small parameters (RMSNorm weights, biases) are converted to float32 once.

bf16 and fp16 values are exactly representable in float32, so the model computes what its float32 copy would:
on the embedded tiny model (fp16 weights) the logits are bit-identical to a float32 load
(``tests/validation/test_reference_memory.py``). The cost is time: each forward pass widens every weight once, about as
long as a float32 matrix-vector product over it, so token-by-token generation takes about twice as long.
A fresh buffer per weight would be slower still: the kernel then zero-fills its pages on every call.
"""

from __future__ import annotations

from functools import partial
from typing import Any


class Float32Scratch:
    """One float32 buffer that 16-bit weights are widened into, one weight at a time."""

    def __init__(self, elements: int) -> None:
        import torch

        self.buffer = torch.empty(elements, dtype=torch.float32)

    def rows(self, weight: Any) -> int:
        """How many rows of ``weight`` fit in the buffer at once."""
        return max(1, self.buffer.numel() // max(1, weight[0].numel()))

    def copy(self, weight: Any) -> Any:
        """A float32 copy of ``weight`` in the buffer (even of a float32 weight: the caller may change it)."""
        view = self.buffer[: weight.numel()].view(weight.shape)
        return view.copy_(weight)

    def widen(self, weight: Any) -> Any:
        """``weight`` as float32: itself if it already is, else a view of the buffer holding its values."""
        import torch

        if weight.dtype == torch.float32:
            return weight
        view = self.buffer[: weight.numel()].view(weight.shape)
        view.copy_(weight)
        return view


def _linear(module: Any, scratch: Float32Scratch, x: Any) -> Any:
    import torch
    import torch.nn.functional as F

    weight, x = module.weight, x.float()
    bias = None if module.bias is None else module.bias.float()
    step = scratch.rows(weight)
    if weight.dtype == torch.float32 or step >= len(weight):
        return F.linear(x, scratch.widen(weight), bias)
    blocks = [F.linear(x, scratch.widen(weight[r : r + step])) for r in range(0, len(weight), step)]
    out = torch.cat(blocks, dim=-1)
    return out if bias is None else out + bias


def _embedding(module: Any, ids: Any) -> Any:
    import torch.nn.functional as F

    return F.embedding(ids, module.weight, module.padding_idx).float()


def compute_in_float32(model: Any) -> int:
    """Make ``model`` compute in float32 while its Linear and Embedding weights stay in their stored dtype.

    Returns the scratch buffer's size in bytes (the only float32 copy of a weight that exists at a time).
    """
    import torch
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    head = model.get_output_embeddings()
    wide = [m.weight.numel() for m in linears if m.weight.dtype != torch.float32 and m is not head]
    scratch = Float32Scratch(max(wide, default=head.weight.numel() if head is not None else 0))
    # Each module's own forward, set on the instance: torch calls it through Module.__call__
    for linear in linears:
        linear.forward = partial(_linear, linear, scratch)  # type: ignore[method-assign]
    for embedding in embeddings:
        embedding.forward = partial(_embedding, embedding)  # type: ignore[method-assign]
    kept = {id(m) for m in (*linears, *embeddings)}
    for module in model.modules():
        if id(module) in kept:
            continue
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if tensor.is_floating_point() and tensor.dtype != torch.float32:
                tensor.data = tensor.data.float()
    return scratch.buffer.numel() * 4
