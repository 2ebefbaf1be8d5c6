"""`aipc compose` refuses to rewrite params.yaml while DVC holds this repository (issue 17.6).

DVC 3.67 holds ``.dvc/tmp/lock`` (zc.lockfile) while it plans and records, and releases it while a
stage's command runs, recording that stage in ``.dvc/tmp/rwlock`` instead. Each test holds the lock
the way DVC does: with DVC's own lock classes in another process, or by running ``dvc repro``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import run_cmd

COMPOSE = [sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"]


@pytest.fixture()
def dvc_repo(tmp_path: Path) -> Path:
    """An empty DVC repository with a params.yaml that compose would rewrite."""
    run_cmd([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], tmp_path)
    (tmp_path / "params.yaml").write_text("before: compose\n", encoding="utf-8")
    return tmp_path


def hold(repo: Path, code: str) -> subprocess.Popen:
    """Run ``code`` (which takes a DVC lock, then prints ``held``) in a child process; wait until it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=repo, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def assert_refused(repo: Path, reason: str) -> None:
    done = run_cmd(COMPOSE, repo, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to rewrite params.yaml: DVC is running"), lines
    assert reason in lines[0] and "rerun `aipc compose model=tiny`" in lines[0]
    assert (repo / "params.yaml").read_text(encoding="utf-8") == "before: compose\n"


def test_compose_refuses_while_dvc_holds_the_repository_lock(dvc_repo: Path) -> None:
    holder = hold(dvc_repo, """
        import time
        from dvc.lock import make_lock
        lock = make_lock(".dvc/tmp/lock", tmp_dir=".dvc/tmp")  # what dvc.repo.Repo takes
        lock.lock()
        print("held", flush=True)
        time.sleep(60)
    """)
    try:
        assert_refused(dvc_repo, f"pid {holder.pid} holds .dvc/tmp/lock")
    finally:
        holder.kill()
        holder.wait()
    run_cmd(COMPOSE, dvc_repo)  # released: compose goes ahead
    assert "model:" in (dvc_repo / "params.yaml").read_text(encoding="utf-8")


def test_compose_refuses_while_a_stage_runs_and_ignores_a_killed_one(dvc_repo: Path) -> None:
    holder = hold(dvc_repo, """
        import time
        from dvc.fs import localfs
        from dvc.rwlock import rwlock
        out = localfs.abspath("artifacts/model")
        with rwlock(".dvc/tmp", localfs, "dvc repro", [], [out], False):  # what a running stage holds
            print("held", flush=True)
            time.sleep(60)
    """)
    assert_refused(dvc_repo, f"`dvc repro` (pid {holder.pid}) is running a stage")
    holder.kill()  # SIGKILL (TerminateProcess on Windows): its rwlock entry stays behind, stale
    holder.wait()
    assert str(holder.pid) in (dvc_repo / ".dvc" / "tmp" / "rwlock").read_text(encoding="utf-8")
    run_cmd(COMPOSE, dvc_repo)
    assert "model:" in (dvc_repo / "params.yaml").read_text(encoding="utf-8")


def test_compose_refuses_during_a_real_dvc_repro(dvc_repo: Path) -> None:
    started, release = dvc_repo / "started", dvc_repo / "release"
    wait = (f"import pathlib, time; pathlib.Path('started').touch(); "
            f"[time.sleep(0.1) for _ in range(600) if not pathlib.Path('release').exists()]; "
            f"pathlib.Path('out.txt').write_text('done')")
    (dvc_repo / "dvc.yaml").write_text(f'stages:\n  slow:\n    cmd: {sys.executable} -c "{wait}"\n'
                                       "    outs:\n      - out.txt\n", encoding="utf-8")
    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=dvc_repo, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            if started.exists() or repro.poll() is not None:
                break
            time.sleep(0.1)
        assert started.exists(), repro.communicate()[0]
        assert_refused(dvc_repo, "is running a stage")
    finally:
        release.touch()
        output = repro.communicate(timeout=120)[0]
    assert repro.returncode == 0, output
    run_cmd(COMPOSE, dvc_repo)
    assert "model:" in (dvc_repo / "params.yaml").read_text(encoding="utf-8")
