"""A real (tiny) validation prints its estimate and a line per cell done (issue 33.4; the functions: tests/core/test_eta.py).

On the tiny model the estimate is under a minute, so the stage prints none (``eta.MIN_ETA_S``); lowered to 0 here,
the demo project's int4 IR must print the start line naming its cells, then one line per cell that ran, in order.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.core import eta
from pipeline.core.config import ValidateConfig, build, compose
from pipeline.core.errors import StageError
from pipeline.core.workspace import Workspace
from pipeline.openvino import validate


@pytest.mark.slow
def test_a_tiny_validation_prints_its_estimate_and_each_cell(
    demo_project, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, _ = demo_project
    artifacts = project / "artifacts"
    cfg = build(ValidateConfig, compose(["model=tiny", "validate.repeats=1", "validate.warmup=0"])["validate"])
    target = validate.openvino_target("int4", cfg, Workspace(out=artifacts / "openvino"))
    ws = Workspace(model=artifacts / "model", reference=artifacts / "reference" / "reference.json", metrics=tmp_path)
    monkeypatch.setattr(eta, "MIN_ETA_S", 0.0)  # the tiny model's estimate is under it (tests/core/test_eta.py)
    try:
        metrics = validate.run(target, cfg, ws)
    except StageError:  # a failed cell still reports its progress; the lines are what is checked here
        metrics = None
    err = capsys.readouterr().err
    start = re.search(r"validate@int4: about \d+ s at this model size \(measured 10\.8 min .*cells: (.*)\)\n", err)
    assert start, err[-3000:]
    cells = start.group(1).split(", ")
    assert cells[0] == "CPU"
    done = re.findall(r"\[openvino-int4\] cell (\d) of (\d) done \((.*?)\), \d+ s elapsed", err)
    assert [(int(k), name) for k, _, name in done] == list(enumerate(cells, 1)), err[-3000:]
    assert metrics is None or set(cells) <= set(metrics["cells"])
