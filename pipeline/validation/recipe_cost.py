"""Broken or costly: what a recipe's rounding costs this model, measured on the PyTorch original.

An artifact that misses its fidelity limits is one of two things. Broken: an export or runtime defect (a damaged
layer, a wrong rotary table, a graph that computes something else). Costly: the recipe's own loss on this model
(4-bit weights of a 135M model that was already 4-bit once lose a third of top-1 in PyTorch too; see
``docs/validation.md``, "The limits on a real 30-layer model"). No fixed limit tells them apart across models:
healthy int4 on that model scores worse than a tiny model with a zeroed layer.

So the recipe itself is measured. Every weight of the PyTorch model is rounded to the recipe's grid (bits, group,
symmetry; round to nearest, with the scales NNCF, MatMulNBits and neural-compressor compute), one weight at a time
into a float32 scratch buffer (the checkpoint stays memory-mapped, as in :mod:`.upcast`), and the same held-out
windows are compared with the same reference. Where a recipe keeps some layers finer (NNCF's ``ratio`` puts 40 %
of them at int8), the bound rounds every decoder layer to the coarsest grid: the artifact should then do at least
as well. A failed cell within :data:`TOP1_MARGIN` / :data:`KL_FACTOR` of that bound is ``costly`` (and names the
data-aware recipe that recovers most of it); one far outside it is ``broken``. Measured only for a cell that
failed its artifact fidelity, once per artifact: a passing pipeline pays nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.core.log import say, step
from pipeline.core.memory import MappedPageTrimmer, weight_files
from pipeline.core.registry import FAMILIES, entry
from pipeline.validation import fidelity
from pipeline.validation.evidence import Evidence
from pipeline.validation.matrix import Cell

# Calibrated in docs/validation.md ("Broken or costly"): a healthy artifact's distance from its bound, tiny and real
TOP1_MARGIN = 0.03  # the artifact's top-1 may sit this far below the bound's (runtime arithmetic, int8 activations)
KL_FACTOR = 1.3  # ... and its mean KL this many times the bound's, plus KL_FLOOR (a bound near 0: fp16, int8)
KL_FLOOR = 1e-4


@dataclass(frozen=True)
class Grid:
    """One rounding: ``bits`` (16 = float16), a scale per ``group_size`` inputs (-1: per output row), symmetric or not."""

    bits: int
    group_size: int = -1
    symmetric: bool = True
    fallback: str = "channel"  # a group that does not divide the width: "adjust" (NNCF), "ragged" (MatMulNBits)

    @property
    def label(self) -> str:
        """E.g. ``int4 sym g128``, ``int8 asym per-channel``, ``fp16``."""
        if self.bits >= 16:
            return "fp16"
        group = "per-channel" if self.group_size <= 0 else f"g{self.group_size}"
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'} {group}"


@dataclass(frozen=True)
class Rounding:
    """A recipe's grids: the decoder's linear layers, the LM head and the input embeddings (``None``: kept float)."""

    layers: Grid
    head: Grid | None
    embeddings: Grid | None
    recover: str  # what recovers the loss where it is the recipe's (a data-aware recipe's overrides), for the verdict

    @property
    def label(self) -> str:
        """E.g. ``layers int4 sym g128, head int8 asym per-channel, embeddings int8 asym per-channel``."""
        parts = [f"layers {self.layers.label}"]
        parts += [f"head {g.label}" for g in (self.head,) if g]
        parts += [f"embeddings {g.label}" for g in (self.embeddings,) if g]
        return ", ".join(parts)


def group_of(inputs: int, grid: Grid) -> int:
    """The group ``grid`` gives an ``inputs`` wide weight (a ragged or channel-wise fallback where it does not divide)."""
    group = grid.group_size if 0 < grid.group_size < inputs else inputs
    if inputs % group and grid.fallback == "adjust":  # NNCF: the largest power-of-two divisor, from 32 up
        group = inputs & -inputs if inputs & -inputs >= 32 else inputs
    elif inputs % group and grid.fallback == "channel":
        group = inputs
    return group  # "ragged": MatMulNBits pads the last block, the same as a shorter last group here


def _round_groups(part: Any, group: int, grid: Grid) -> None:
    import torch

    x = part.reshape(part.shape[0], -1, group)  # a copy where ``part`` is a column slice
    if grid.symmetric:  # NNCF's signed scale: the group's largest magnitude lands on the lowest level exactly
        low, high = -(2 ** (grid.bits - 1)), 2 ** (grid.bits - 1) - 1
        extreme = x.gather(-1, x.abs().argmax(-1, keepdim=True))
        scale = torch.where(extreme == 0, torch.ones_like(extreme), extreme / low)
        x = torch.clamp(torch.round(x / scale), low, high) * scale
    else:  # levels 0..2^bits-1 between the group's min and max, an integer zero point
        high = 2**grid.bits - 1
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        scale = torch.clamp((hi - lo) / high, min=1e-12)
        zero = torch.clamp(torch.round(-lo / scale), 0, high)
        x = (torch.clamp(torch.round(x / scale) + zero, 0, high) - zero) * scale
    part.copy_(x.reshape(part.shape))


def round_to_grid(weight: Any, grid: Grid) -> Any:
    """Round the float32 rows of ``weight`` (``[rows, inputs]``, groups along the inputs) in place to ``grid``."""
    if grid.bits >= 16:
        return weight.copy_(weight.half().float())
    inputs = weight.shape[-1]
    group = group_of(inputs, grid)
    full = inputs - inputs % group
    _round_groups(weight[:, :full], group, grid)
    if full < inputs:
        _round_groups(weight[:, full:], inputs - full, grid)
    return weight


def _rounded_linear(module: Any, scratch: Any, grid: Grid, x: Any) -> Any:
    import torch
    import torch.nn.functional as F

    weight, x = module.weight, x.float()
    step = scratch.rows(weight)  # the LM head is wider than the buffer: a block of rows at a time
    blocks = [F.linear(x, round_to_grid(scratch.copy(weight[r : r + step]), grid)) for r in range(0, len(weight), step)]
    out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)
    return out if module.bias is None else out + module.bias.float()


def _rounded_embedding(module: Any, grid: Grid | None, ids: Any) -> Any:
    import torch.nn.functional as F

    rows = F.embedding(ids, module.weight, module.padding_idx).float()  # a table row is one output channel
    return rows if grid is None else round_to_grid(rows.reshape(-1, rows.shape[-1]), grid).view(rows.shape)


def load_rounded(model_dir: Path, rounding: Rounding) -> Any:
    """The PyTorch model computing in float32 with every weight rounded as ``rounding`` says (weights stay mapped)."""
    from torch import nn

    from pipeline.validation.reference import load_model
    from pipeline.validation.upcast import Float32Scratch

    model = load_model(model_dir, "float32")  # float32 compute over the mapped checkpoint (upcast.compute_in_float32)
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    scratch = Float32Scratch(max((m.weight.numel() for m in linears if m is not head), default=1))
    for linear in linears:
        grid = rounding.head if linear is head else rounding.layers
        if grid is not None:
            linear.forward = partial(_rounded_linear, linear, scratch, grid)  # type: ignore[method-assign]
    for embedding in (m for m in model.modules() if isinstance(m, nn.Embedding)):
        embedding.forward = partial(_rounded_embedding, embedding, rounding.embeddings)  # type: ignore[method-assign]
    return model


def measure(model_dir: Path, windows: list[list[int]], ref: fidelity.ReferenceLogprobs, rounding: Rounding) -> dict:
    """Fidelity of the PyTorch model rounded as ``rounding``, over the reference's held-out ``windows``.

    The pass reads every weight of the mapped checkpoint once: the pages it has read are handed back as it goes
    and after each window (Linux), or they stay resident on top of the stage's own memory (9.6 GiB at full size in
    a failed validate@int4, the 7.1 GiB checkpoint mapped whole; ``tests/validation/test_recipe_cost.py``).
    """
    import torch

    from pipeline.validation.reference import logit_chunks

    with MappedPageTrimmer(weight_files(model_dir)) as trimmer:
        model = load_rounded(model_dir, rounding)
        logits = []
        for window in windows:
            logits.append(torch.cat(list(logit_chunks(model, window))).numpy())
            trimmer.trim()
        return fidelity.compare(ref, logits).as_dict()


def same_model(model_dir: Path, evidence: Evidence) -> bool:
    """Whether ``model_dir`` holds the checkpoint files the reference was computed from (their recorded sha256)."""
    from pipeline.core.manifest import read_manifest

    try:
        files = {name: meta["sha256"] for name, meta in read_manifest(model_dir)["files"].items()}
    except (OSError, KeyError, ValueError):
        return False
    return bool(evidence.source_files) and files == evidence.source_files


def fidelity_failed(cell: Cell) -> bool:
    """Whether ``cell`` missed an artifact-fidelity or long-context limit (what a recipe's rounding can cost)."""
    return cell.status == "failed" and any(p.startswith(("artifact fidelity", "long context")) for p in cell.problems)


def _within(top1: float | None, kl: float | None, bound: dict) -> bool:
    """Whether figures of the artifact are within the margins of the recipe's cost (``bound``)."""
    top1, kl = top1 if top1 is not None else 0.0, kl if kl is not None else float("inf")
    return top1 >= bound["top1_agreement"] - TOP1_MARGIN and kl <= bound["mean_kl"] * KL_FACTOR + KL_FLOOR


def verdict(cell: Cell, bound: dict) -> str:
    """``costly`` when the cell's short windows and every long-context range are within the margins of the recipe's
    own cost (measured on the short windows: a position-dependent defect shows only in the long ranges), else
    ``broken``."""
    ranges = [(r.get("top1_agreement"), r.get("mean_kl")) for r in cell.long_context]
    costly = all(_within(t, k, bound) for t, k in [(cell.top1_agreement, cell.mean_kl), *ranges])
    return "costly" if costly else "broken"


def explain(kind: str, bound: dict, rounding: Rounding) -> str:
    """The line that leads a failed cell's problems: which of the two (``kind``, from :func:`verdict`), against what
    measurement, and what to do."""
    same = (
        f"PyTorch with this recipe's rounding ({rounding.label}, round to nearest) gets top-1 "
        f"{bound['top1_agreement']:.3f}, KL {bound['mean_kl']:.2g}, perplexity {bound['perplexity_delta_pct']:+.1f} %"
    )
    if kind == "costly":
        return f"costly, not broken: {same} on this model, so this is what the recipe costs here; {rounding.recover}"
    return f"broken: far outside this recipe's own cost ({same}): an export or runtime defect, not the precision"


def rounding_of(family: str, manifest: dict[str, Any], key: str) -> Rounding | None:
    """The grids that ``family``'s recipe rounds to, from the artifact's ``manifest`` (its registry entry), or None."""
    return entry(family, "rounding")(manifest, key) if FAMILIES[family].rounding else None


def attach(
    cells: dict[str, Cell], family: str, manifest: dict[str, Any], key: str, model_dir: Path, evidence: Evidence
) -> dict | None:
    """Measure what ``family``'s recipe (the artifact's ``manifest``; ``key``: its params key) costs the PyTorch
    model, once, if any cell failed its fidelity; each such cell's ``recipe_cost`` records the verdict, the line
    that explains it (:func:`explain`) and the bound. Returns the bound, or None."""
    failed = [c for c in cells.values() if fidelity_failed(c)]
    rounding = rounding_of(family, manifest, key) if failed else None
    if rounding is None:
        return None
    if not same_model(model_dir, evidence):  # a bound from another checkpoint than the reference's would mislead
        say(f"not measured: what the recipe costs ({model_dir} is not the checkpoint the reference was computed from)")
        return None
    with step(f"fidelity below the limits: what this recipe's rounding costs the PyTorch model ({rounding.label})"):
        bound = measure(model_dir, evidence.windows, evidence.logprobs, rounding)
    for cell in failed:  # the explanation leads the cell's problems wherever they are shown (records, report)
        kind = verdict(cell, bound)
        cell.recipe_cost = {
            "verdict": kind,
            "explanation": explain(kind, bound, rounding),
            "rounding": rounding.label,
            **bound,
        }
    return bound
