"""The NPU library family's part of ``aipc stages``' tables (:mod:`pipeline.core.stage_edges`; registry
``stage_deps``)."""

from __future__ import annotations

from pipeline.core.stage_edges import FamilyDeps

DEPS = FamilyDeps(
    # env.run_worker: `<library venv python> -P -s worker.py ...` (WORKER, a path beside env.py)
    launched={"pipeline/npu_lib/env.py": ("pipeline/npu_lib/worker.py",)},
    sites={
        "pipeline/npu_lib/worker_pickle.py": "imports the classes a pickle names (torch), not project code",
        "pipeline/npu_lib/env.py": "runs worker.py: launched",
        "pipeline/npu_lib/worker.py": "names its packages in sys.modules (worker's venv); its imports are static",
        "pipeline/npu_lib/deps.py": "names these files; imports and runs nothing",
    },
)
