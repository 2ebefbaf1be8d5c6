"""Greedy answers judged at the numerics users get by default, beside the same IR at pinned f32 (issue 34, item 2).

Teacher-forced drift can sit inside its limits while the greedy answer is garbage: on a 30-layer model the fp16 IR
at the CPU's default bf16 compute answered "What is the capital of France?" with ``L'Étoile, ...`` where at f32 it
said Paris, and its cell passed. So every cell generates the validation prompts (the reference's, in the model's own
chat template) twice in ``LLMPipeline``: at the runtime's default numerics with the IR's runtime config (what ``aipc
chat`` and the model card's code run, :mod:`pipeline.openvino.runtime_config`) and pinned to f32
(:data:`pipeline.openvino.numerics.PINNED`), and compares both with PyTorch (:func:`judge`).

A first-token flip, or a divergence before the answer's *near-tie point*, fails the cell at those numerics, with
the setting that fixes it; but only when the pinned f32 answers do not diverge so: otherwise it is the artifact
(judged by its teacher-forced fidelity), not the numerics. The near-tie point of an answer is its first position
where the IR's own f32 logits, teacher-forced on the prompt and PyTorch's answer so far, put the top two tokens
less than :data:`NEAR_TIE` apart (or prefer another token): from there on two correct runtimes may part ways.
``reference.json`` records no margins for its greedy answers (only for the held-out text), hence the f32 IR's.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.openvino import runtime_config
from pipeline.validation import matrix
from pipeline.validation.prompts import NEAR_TIE, until_stop


def default_numerics(ir_dir: Path, device: str) -> str:
    """The compute precision ``LLMPipeline`` runs ``ir_dir`` with on ``device`` by default, and where it comes from."""
    if device == "NPU":
        return "the NPU pipeline's defaults"
    from pipeline.openvino.numerics import short_type

    asked = runtime_config.properties(ir_dir, device).get("INFERENCE_PRECISION_HINT")
    if asked:
        return f"{short_type(asked)} compute ({runtime_config.RUNTIME_CONFIG})"
    import openvino as ov

    return f"{short_type(ov.Core().get_property(device, 'INFERENCE_PRECISION_HINT'))} compute (the {device}'s default)"


def tie_points(ir_dir: Path, reference: dict) -> list[int]:
    """Per prompt, the near-tie point of PyTorch's answer (its length when it has none): see the module docstring."""
    import numpy as np

    from pipeline.openvino.teacher_forced import forced_logits

    stop = set(reference.get("stop_token_ids", []))
    cases = [(case["prompt_ids"], until_stop(case["output_ids"], stop)) for case in reference["greedy"]]
    logits, _, _ = forced_logits(ir_dir, "CPU", [ids + answer[:-1] for ids, answer in cases], "f32")
    points = []
    for (ids, answer), rows in zip(cases, logits):
        point = len(answer)
        for k, row in enumerate(np.asarray(rows[len(ids) - 1 :], dtype=np.float64)[: len(answer)]):
            second, first = np.argsort(row)[-2:]
            if int(first) != answer[k] or row[first] - row[second] < NEAR_TIE:
                point = k
                break
        points.append(point)
    return points


def real_divergences(divergence: list[int | None], points: list[int]) -> list[str]:
    """The divergences that count: a first-token flip, or one before the answer's near-tie point."""
    return [
        f"prompt {i} token {d}"
        for i, (d, p) in enumerate(zip(divergence, points))
        if d is not None and (d == 0 or d < p)
    ]


def judge(
    cell: matrix.Cell,
    ir_dir: Path,
    reference: dict,
    answers: dict[str, list[list[int]]],
    numerics: str,
    fix: str | None,
    shipped: bool = False,
) -> None:
    """Record both exact-match figures on ``cell`` and fail it where only the default numerics' answers diverge.

    Args:
        cell: A cell that ran; its ``greedy_exact_match`` is the default numerics' (set by :func:`matrix.judge`).
        ir_dir: The IR (its f32 logits give the near-tie points).
        reference: ``reference.json``.
        answers: ``{"default": ..., "f32": ...}`` greedy token ids per prompt.
        numerics: Label of the default run (:func:`default_numerics`, or an emulation cell's forced precision).
        fix: The setting that makes the device answer as at f32 (``None``: none exists, the NPU).
        shipped: The IR's runtime config already applies ``fix`` (an emulation cell forcing what it overrides): the
            divergence is a note on what loaders without that config get, not a failure.
    """
    exact, divergence = matrix.greedy_match(answers["default"], reference)
    exact_f32, divergence_f32 = matrix.greedy_match(answers["f32"], reference)
    cell.greedy_exact_match, cell.first_divergence = round(exact, 4), divergence
    cell.greedy_numerics, cell.greedy_exact_match_f32 = numerics, round(exact_f32, 4)
    cell.first_divergence_f32 = divergence_f32
    if all(d is None for d in divergence):
        return
    points = tie_points(ir_dir, reference)
    wrong, wrong_f32 = real_divergences(divergence, points), real_divergences(divergence_f32, points)
    if not wrong:
        return
    if wrong_f32:
        note = f"greedy answers diverge at pinned f32 too ({', '.join(wrong_f32)}): the artifact's, not the numerics'"
        cell.note = "; ".join(filter(None, [cell.note, note]))
        return
    where = (
        f"greedy answers at {numerics} diverge from PyTorch ({', '.join(wrong)}) where pinned f32 answers as it does"
    )
    if shipped:
        note = f"{where}; {runtime_config.RUNTIME_CONFIG} pins f32 compute: only loaders that ignore it answer so"
        cell.note = "; ".join(filter(None, [cell.note, note]))
        return
    cell.problems.append(f"{where}: {f'set {fix}' if fix else 'no runtime setting gives this device f32 compute'}")
    cell.status = "failed"


def near_ties(ir_dir: Path, reference: dict, ours: list[list[int]], theirs: list[list[int]]) -> list[str] | None:
    """Where two greedy runs of one IR part ways: each first divergence as text if every one is a near tie, else None.

    A near tie: at the first differing position the IR's own f32 logits (teacher-forced on the shared prefix) rank
    the other run's token second, less than :data:`NEAR_TIE` below the first. Any other divergence is a real one.
    """
    import numpy as np

    from pipeline.openvino.teacher_forced import forced_logits

    points = [(i, j) for i, (a, b) in enumerate(zip(ours, theirs)) if (j := matrix.first_divergence(a, b)) is not None]
    if any(j >= min(len(ours[i]), len(theirs[i])) for i, j in points):
        return None  # one run stopped early (EOS) where the other went on: not a tie between two tokens
    windows = [reference["greedy"][i]["prompt_ids"] + ours[i][:j] for i, j in points]
    logits, _, _ = forced_logits(ir_dir, "CPU", windows, "f32")
    found = []
    for (i, j), window_logits in zip(points, logits):
        last = np.asarray(window_logits[-1], dtype=np.float64)
        first, second = np.argsort(last)[-2:][::-1]
        gap = float(last[first] - last[second])
        if {int(first), int(second)} != {ours[i][j], theirs[i][j]} or gap >= NEAR_TIE:
            return None
        found.append(f"prompt {i} token {j}: gap {gap:.3f}")
    return found


def same_tokens_as_cpu(
    cells: dict[str, matrix.Cell], outputs: dict[str, list[list[int]]], ir_dir: Path, reference: dict
) -> None:
    """The NPU pipeline through NPUW must generate the CPU pipeline's tokens, but for near ties of the IR itself.

    The two runs differ in more than the backend (NPUW's static shapes and f16 KV cache; the CPU plugin's own
    defaults), so where the IR's f32 logits leave the two candidates within :data:`NEAR_TIE` either token is right:
    the cell keeps its verdict and says where. Any other difference fails the cell.
    """
    npuw = cells.get("NPU")
    cpu = next((c for c in (matrix.STAND_IN, "CPU") if c in outputs), None)
    if npuw is None or "NPU" not in outputs or cpu is None or npuw.device_executed == "NPU":
        return
    if outputs["NPU"] == outputs[cpu]:
        return
    ties = near_ties(ir_dir, reference, outputs[cpu], outputs["NPU"])
    if ties is not None:
        note = f"NPUW broke near ties differently from the CPU pipeline ({cpu} cell; f32 top-2 gap < {NEAR_TIE}): "
        npuw.note = "; ".join(filter(None, [npuw.note, note + ", ".join(ties)]))
        return
    npuw.problems.append(
        f"the NPU pipeline through NPUW generated other tokens than the CPU pipeline ({cpu} cell), "
        f"not at a near tie of the IR's own logits"
    )
    npuw.status = "failed"
