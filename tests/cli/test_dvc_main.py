"""`python -m pipeline.cli.dvc_main`: DVC without its `git add` hint, and with its errors (the demo runs DVC so)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import run_cmd

STAGES = """stages:
  ok:
    cmd: python -c "open('out.txt', 'w').write('hi')"
    outs: [out.txt]
  broken:
    cmd: python -c "raise SystemExit(3)"
"""


def test_dvc_main_drops_the_git_hint_and_keeps_errors(tmp_path: Path) -> None:
    run_cmd(["git", "init", "-q"], tmp_path)
    run_cmd([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    (tmp_path / "dvc.yaml").write_text(STAGES, encoding="utf-8")
    bare = run_cmd([sys.executable, "-m", "dvc", "repro", "ok"], tmp_path)
    assert "To track the changes with git" in bare.stdout + bare.stderr  # what DVC says by itself
    (tmp_path / "out.txt").unlink()
    (tmp_path / "dvc.lock").unlink()
    ran = run_cmd([sys.executable, "-m", "pipeline.cli.dvc_main", "repro", "ok"], tmp_path)
    assert "Running stage 'ok'" in ran.stdout and (tmp_path / "out.txt").read_text(encoding="utf-8") == "hi"
    assert "git add" not in ran.stdout + ran.stderr and "auto staging" not in ran.stdout + ran.stderr
    failed = run_cmd([sys.executable, "-m", "pipeline.cli.dvc_main", "repro", "broken"], tmp_path, check=False)
    assert failed.returncode != 0 and "ERROR: failed to reproduce 'broken'" in failed.stderr, failed.stderr
