"""Where the stages read and write: the project's layout, in the one object every family's entry points take.

``Workspace()`` is the project itself: ``artifacts/model`` (the checkpoint), ``artifacts/<family>/<variant>``
(the exports), ``artifacts/reference/reference.json``, ``artifacts/metrics`` and ``dvc.lock``. Tests and
benchmarks move any part: ``Workspace(artifacts=tmp)`` keeps the layout under another folder,
``Workspace(model=checkpoint, out=tmp / "ir")`` reads one checkpoint and writes the family's variants into one
folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.artifacts import ARTIFACTS


@dataclass(frozen=True)
class Workspace:
    """The folders of one run; each one left out follows ``artifacts`` as the project lays it out."""

    artifacts: Path = ARTIFACTS
    model: Path | None = None  # the checkpoint (default artifacts/model)
    out: Path | None = None  # the family's variants (default artifacts/<family>)
    reference: Path | None = None  # the reference stage's JSON, logprobs.npz beside it
    metrics: Path | None = None  # the validations' records (default artifacts/metrics)
    lock_file: Path = Path("dvc.lock")  # what vouches for an artifact's bytes (pipeline.core.hashes)

    @property
    def model_dir(self) -> Path:
        """The checkpoint folder the exports and the reference read."""
        return Path(self.model) if self.model else self.artifacts / "model"

    def root(self, family: str) -> Path:
        """The folder holding ``family``'s variants (``artifacts/openvino``)."""
        return Path(self.out) if self.out else self.artifacts / family

    @property
    def reference_path(self) -> Path:
        """The reference stage's JSON (``artifacts/reference/reference.json``)."""
        return Path(self.reference) if self.reference else self.artifacts / "reference" / "reference.json"

    @property
    def metrics_dir(self) -> Path:
        """Where a validation writes ``<family>-<variant>.json``."""
        return Path(self.metrics) if self.metrics else self.artifacts / "metrics"


PROJECT = Workspace()

# NNCF's caches (data-aware statistics, mixed-precision sensitivities), keyed by base IR (+ dataset): a sweep points
# every run at one folder so its points share them (the DVC queue's temporary workspaces, a Ray node's points).
NNCF_CACHE_ENV = "AIPC_NNCF_CACHE"


def nncf_cache(name: str = "") -> Path:
    """The folder of one NNCF cache (or their root): ``$AIPC_NNCF_CACHE/<name>``, else ``.aipc/<name>``."""
    return Path(os.environ.get(NNCF_CACHE_ENV) or ".aipc") / name
