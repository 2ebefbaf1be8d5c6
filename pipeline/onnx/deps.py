"""The ONNX family's part of ``aipc stages``' tables (:mod:`pipeline.core.stage_edges`; registry ``stage_deps``)."""

from __future__ import annotations

from pipeline.core.stage_edges import FamilyDeps

DEPS = FamilyDeps(
    # compat.run_script: `<runtime python> -I genai_runner.py` (Path(runner.__file__); it is imported too)
    launched={"pipeline/onnx/compat.py": ("pipeline/validation/genai_runner.py",)},
    sites={
        "pipeline/onnx/compat.py": "runs genai_runner.py: launched",
        "pipeline/onnx/validate.py": "runs genai_runner.py through compat.run_script: launched",
        "pipeline/onnx/chat_env.py": "runs chat_worker.py, which it imports too (aipc chat --device DML; no stage)",
        "pipeline/onnx/deps.py": "names these files; imports and runs nothing",
    },
)
