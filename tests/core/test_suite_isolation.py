"""The test suite does not depend on the checkout's state, and starts no DVC analytics daemon (issue 35.8)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_project, run_cmd

# The tests that used to read the checkout's params.yaml: `aipc demo` (model=tiny) made them fail.
WORKSPACE_READERS = [
    "tests/core/test_config.py::test_committed_params_yaml_is_not_stale",
    "tests/core/test_phi4_config.py::test_check_config_composes_both_phi4_presets",
    "tests/sweep/test_sweep_grid.py::test_bad_sweep_input_fails_in_one_line",
]


def test_tests_that_read_the_checkout_pass_after_the_demo_recomposed_it(tmp_path: Path) -> None:
    """`python bootstrap.py demo` then `python bootstrap.py test`: the demo leaves params.yaml at model=tiny."""
    project = make_project(tmp_path / "p")
    shutil.copytree(ROOT / "tests", project / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    run_cmd(["git", "add", "tests"], project)
    run_cmd(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "tests"], project)
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    assert "name: tiny-phi3" in (project / "params.yaml").read_text(encoding="utf-8")
    done = run_cmd([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *WORKSPACE_READERS], project,
                   check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"{len(WORKSPACE_READERS)} passed" in done.stdout


def test_dvc_in_a_temporary_repository_starts_no_analytics_daemon(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh `dvc init` has analytics on; DVC opens DVC_DAEMON_LOGFILE before it spawns any daemon."""
    repo, log = tmp_path / "repo", tmp_path / "daemon.log"
    repo.mkdir()
    monkeypatch.setenv("DVC_DAEMON_LOGFILE", str(log))
    monkeypatch.setenv("DVC_ANALYTICS_ENDPOINT", "http://127.0.0.1:9")  # should one start anyway: nothing leaves
    run_cmd([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], repo)
    run_cmd([sys.executable, "-m", "dvc", "status"], repo)
    assert not log.exists(), "a dvc command started a daemon (analytics) in a temporary repository"
    from dvc import analytics

    monkeypatch.chdir(repo)
    assert os.environ.get("DVC_NO_ANALYTICS") and not analytics.is_enabled()
