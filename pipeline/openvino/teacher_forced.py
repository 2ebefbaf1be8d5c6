"""Teacher-forced logits of an IR with ``ov.Core``, at a pinned or the device's own precision, and the fidelity
figures computed from them: artifact fidelity (f32 runtime, short and long windows) and device numerics
(:mod:`pipeline.openvino.numerics` says which precision ran).

Every window is one prefill from an empty KV cache, so the pinned (f32) runs compile the IR without its state
(:func:`without_state`): a stateful IR keeps every layer's keys and values for the whole window (3.0 GiB in f32
for Phi-3-mini's 4096-token long-context window) where a stateless pass frees each layer's after use. At f32 the
attention is the same; measured on Phi-3-mini-shaped int4, 4096 tokens: peak 8.7 -> 6.0 GiB, 300 -> 214 s, logits
within 6e-5 and the same argmax everywhere (``docs/benchmarks.md``). The device-default and forced-precision runs
keep the state: there the KV cache precision (u8, f16, bf16) is part of the numerics under test.

At f32 the CPU plugin widens f16 weights to f32 (Phi-3-mini's fp16 IR: 14.0 GiB), so a pinned pass whose widened
weights exceed :data:`pipeline.openvino.pieces.PIECE_BYTES` runs a run of decoder layers at a time
(:mod:`pipeline.openvino.pieces`): Phi-3-mini fp16, windows of 64 + 512 + 4096 tokens, peak 5.89 GiB in 6 pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.openvino import numerics
from pipeline.validation import fidelity
from pipeline.validation.evidence import Evidence


def without_state(model: Any) -> Any:
    """``model`` (an ``ov.Model``, changed in place) with its KV-cache state cut out: every ``ReadValue`` replaced by
    its initial value (the empty cache) and every ``Assign`` and variable removed, so a prefill from an empty cache
    computes the same logits without keeping the keys and values."""
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            op.output(0).replace(op.input_value(0))
    for sink in list(model.get_sinks()):
        model.remove_sink(sink)
    for variable in list(model.get_variables()):
        model.remove_variable(variable)
    model.validate_nodes_and_infer_types()
    return model


def forced_logits(
    ir_dir: Path,
    device: str,
    windows: list[list[int]],
    compute: str | None,
    stateful: bool | None = None,
    piece_bytes: int | None = None,
    properties: dict[str, Any] | None = None,
) -> tuple[list[Any], str, numerics.Numerics]:
    """The IR's logits over ``windows`` (``ov.Core`` infer), the device that executed, and the numerics that ran.

    ``compute``: ``"f32"`` pins full precision (artifact fidelity; compiled :func:`without_state`), ``"bf16"``/``"f16"``
    forces a target's compute precision, ``None`` keeps the device's defaults (device numerics). ``stateful``
    overrides whether the IR keeps its KV-cache state (default: all but the pinned runs do). A pinned pass whose
    widened float weights exceed ``piece_bytes`` (default :data:`pieces.PIECE_BYTES`) runs in runs of layers
    (:mod:`pipeline.openvino.pieces`). ``properties`` go on top (the IR's runtime config: what its users load it with).
    """
    import numpy as np
    import openvino as ov

    from pipeline.openvino import pieces

    core = ov.Core()
    model = core.read_model(str(ir_dir / "openvino_model.xml"))
    stateful = compute != "f32" if stateful is None else stateful
    if not stateful:
        model = without_state(model)
    count = pieces.piece_count(model, piece_bytes, str(ir_dir)) if compute == "f32" and not stateful else 1
    carried: list[Any] = [None] * len(windows)
    runs: list[tuple[str, numerics.Numerics]] = []
    for number, piece in enumerate(pieces.pieces(model, count) if count > 1 else [model], start=1):
        compiled = core.compile_model(piece, device, {**numerics.settings(compute), **(properties or {})})
        runs.append((",".join(compiled.get_property("EXECUTION_DEVICES")), numerics.read_back(compiled)))
        request = compiled.create_infer_request()
        for index, window in enumerate(windows):
            ids = np.array([window], dtype=np.int64)
            if stateful:
                request.reset_state()
            feed = {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                "beam_idx": np.zeros(1, dtype=np.int32),
            }
            if carried[index] is not None:
                feed["hidden"] = carried[index]
            request.infer(feed)
            out = request.get_tensor("logits") if number == count else request.get_output_tensor(0)
            carried[index] = np.array(out.data, dtype=np.float32)
        del request, compiled  # one piece's widened weights at a time
    if any(run != runs[0] for run in runs):  # every piece must have run as the whole model would have
        raise RuntimeError(f"the pieces of {ir_dir} did not run alike: {runs}")
    executed, ran = runs[0]
    return [out[0] for out in carried], executed, ran


def pinned_fidelity(ir_dir: Path, device: str, evidence: Evidence) -> tuple[dict[str, Any], list[Any], str]:
    """Artifact fidelity: the IR at f32 runtime precision, short windows and long-context ranges."""
    windows = evidence.windows + evidence.long_windows
    logits, executed, ran = forced_logits(ir_dir, device, windows, "f32")
    short = logits[: len(evidence.windows)]
    long = evidence.compare_long(logits[len(evidence.windows) :])
    return (
        {
            "fidelity": fidelity.compare(evidence.logprobs, short).as_dict(),
            "numerics": ran.as_dict(),
            "long_context": long,
        },
        short,
        executed,
    )


def numerics_fidelity(
    ir_dir: Path,
    device: str,
    evidence: Evidence,
    pinned: list[Any],
    compute: str | None,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Device numerics: the IR at the device's defaults with ``properties`` (its runtime config), or a forced
    precision, against PyTorch and the pinned run."""
    logits, _, ran = forced_logits(ir_dir, device, evidence.windows, compute, properties=properties)
    return {
        "device_fidelity": fidelity.compare(evidence.logprobs, logits).as_dict(),
        "device_numerics": ran.as_dict(),
        "drift": fidelity.agreement(pinned, logits),
    }
