"""What every validator compares an artifact with: the reference (and its log-probs) and the thresholds.

Shared by the OpenVINO (:mod:`pipeline.openvino.validate`) and ONNX (:mod:`pipeline.onnx.validate`) validators.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import ValidateConfig
from pipeline.validation import fidelity, matrix


@dataclass
class Evidence:
    """What every cell of one artifact compares against: the reference and its log-probs, short and long."""

    reference: dict
    logprobs: fidelity.ReferenceLogprobs
    long_logprobs: fidelity.ReferenceLogprobs | None
    source_files: dict[str, str] | None = None  # sha256 of the checkpoint's files the reference was computed from

    @classmethod
    def load(cls, reference_path: Path) -> Evidence:
        """Read the ``reference`` stage's JSON and the ``.npz`` files beside it."""
        folder = Path(reference_path).parent
        long_file, manifest = folder / fidelity.LONG_LOGPROBS_FILE, folder / "manifest.json"
        return cls(
            json.loads(Path(reference_path).read_text(encoding="utf-8")),
            fidelity.ReferenceLogprobs.load(folder / fidelity.LOGPROBS_FILE),
            fidelity.ReferenceLogprobs.load(long_file) if long_file.is_file() else None,
            json.loads(manifest.read_text(encoding="utf-8")).get("source_files_sha256") if manifest.is_file() else None,
        )

    @property
    def windows(self) -> list[list[int]]:
        """The held-out windows the short-context fidelity is computed over."""
        return [w["input_ids"] for w in self.reference["teacher_forced"]]

    @property
    def long_windows(self) -> list[list[int]]:
        """The long-context windows (none when the reference has no long-context part)."""
        return (self.reference.get("long_context") or {}).get("windows", []) if self.long_logprobs else []

    def compare_long(self, logits: list[np.ndarray]) -> list[dict[str, Any]]:
        """Fidelity per long-context range of ``logits`` (one per :attr:`long_windows`); none without them."""
        if self.long_logprobs is None or not self.long_windows:
            return []
        return fidelity.compare_ranges(self.long_logprobs, logits, self.reference["long_context"]["boundaries"])


def verdicts_for(cfg: ValidateConfig, weight_format: str) -> matrix.Verdicts:
    """The thresholds of one artifact: its weight format's, the compute precisions', the long-context ranges'."""
    device = {c: matrix.Thresholds(f"{c} compute", **cfg.device_numerics.thresholds(c)) for c in ("f32", "bf16", "f16")}
    return matrix.Verdicts(
        matrix.Thresholds(weight_format, **cfg.thresholds(weight_format)),
        device,
        matrix.Thresholds(weight_format, **cfg.long_context_thresholds(weight_format)),
    )
