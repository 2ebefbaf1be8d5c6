"""Teacher-forced logits of an IR with ``ov.Core``, at a pinned or the device's own precision, and the fidelity
figures computed from them: artifact fidelity (f32 runtime, short and long windows) and device numerics
(:mod:`pipeline.openvino.numerics` says which precision ran).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.openvino import numerics
from pipeline.validation import fidelity
from pipeline.validation.evidence import Evidence


def forced_logits(
    ir_dir: Path, device: str, windows: list[list[int]], compute: str | None
) -> tuple[list[Any], str, numerics.Numerics]:
    """The IR's logits over ``windows`` (``ov.Core`` infer), the device that executed, and the numerics that ran.

    ``compute``: ``"f32"`` pins full precision (artifact fidelity), ``"bf16"``/``"f16"`` forces a target's compute
    precision, ``None`` keeps the device's defaults (device numerics).
    """
    import numpy as np
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(ir_dir / "openvino_model.xml")), device, numerics.settings(compute)
    )
    executed = ",".join(compiled.get_property("EXECUTION_DEVICES"))
    ran = numerics.read_back(compiled)
    request = compiled.create_infer_request()
    logits = []
    for window in windows:
        ids = np.array([window], dtype=np.int64)
        request.reset_state()
        request.infer(
            {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                "beam_idx": np.zeros(1, dtype=np.int32),
            }
        )
        logits.append(np.array(request.get_tensor("logits").data[0], dtype=np.float32))
    return logits, executed, ran


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
    ir_dir: Path, device: str, evidence: Evidence, pinned: list[Any], compute: str | None
) -> dict[str, Any]:
    """Device numerics: the IR at the device's defaults (or a forced precision), against PyTorch and the pinned run."""
    logits, _, ran = forced_logits(ir_dir, device, evidence.windows, compute)
    return {
        "device_fidelity": fidelity.compare(evidence.logprobs, logits).as_dict(),
        "device_numerics": ran.as_dict(),
        "drift": fidelity.agreement(pinned, logits),
    }
