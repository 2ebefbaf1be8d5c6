"""The OpenVINO families' part of ``aipc stages``' tables (:mod:`pipeline.core.stage_edges`; registry ``stage_deps``)."""

from __future__ import annotations

from pipeline.core.stage_edges import FamilyDeps

DEPS = FamilyDeps(
    launched={},
    sites={
        "pipeline/openvino/rotary.py": "imports a transformers module, not project code",
        "pipeline/openvino/deps.py": "names these files; imports and runs nothing",
    },
)
