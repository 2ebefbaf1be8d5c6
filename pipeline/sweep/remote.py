"""The driver's side of the shared remotes: the commit every node starts from, the shared stages, the results.

Before any point runs, the driver checks that its commit is on the git remote (nodes clone it from there),
reproduces the stages every point shares (download, reference, the base IR: those whose parameters the grid
does not touch) and pushes them with their run-cache entries, so a node restores them instead of
recomputing them. After the sweep it pulls the experiments' git refs back (``dvc exp pull --no-cache``),
which makes them ordinary local experiments: ``dvc exp show`` lists them and the report reads them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from pipeline.core.errors import fail
from pipeline.core.log import step
from pipeline.sweep.local import dvc


def git(*args: str, cwd: Path | None = None) -> str:
    """Run ``git ...``; its stdout, or one line naming the command that failed."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, encoding="utf-8", errors="replace", check=False
    )
    if done.returncode:
        detail = (done.stderr.strip().splitlines() or [""])[-1]
        fail(f"`git {' '.join(args)}` failed: {detail}")
    return done.stdout.rstrip()


def checked_commit(git_remote: str) -> tuple[str, str]:
    """The commit to sweep and the git remote's URL; fails unless the workspace is committed and pushed.

    Every node clones the commit from ``git_remote``: uncommitted changes (say a recomposed ``params.yaml``)
    or a commit that was never pushed would silently sweep something else, or nothing.
    """
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    if dirty:
        fail(f"uncommitted changes ({', '.join(dirty[:3])}): commit them and push, every node clones the commit")
    commit = git("rev-parse", "HEAD").strip()
    url = subprocess.run(
        ["git", "remote", "get-url", git_remote], capture_output=True, text=True, encoding="utf-8", check=False
    )
    if url.returncode:
        fail(f"no git remote '{git_remote}': add the remote every node can reach (`git remote add {git_remote} URL`)")
    git("fetch", "-q", git_remote)
    if not git("branch", "-r", "--contains", commit, "--list", f"{git_remote}/*"):
        fail(f"commit {commit[:7]} is not on git remote '{git_remote}': `git push {git_remote} HEAD` first")
    return commit, url.stdout.strip()


def _keys(dep: Any) -> list[str]:
    return list(dep.params) or [""]  # no keys: the stage depends on the whole params file


def _touched(keys: list[str], grid: list[str]) -> bool:
    return any(k == g or g.startswith(k + ".") or k.startswith(g + ".") or not k for k in keys for g in grid)


def shared_stages(targets: list[str], grid: list[str]) -> list[str]:
    """The stages the targets need that no grid key reaches (not through their params, nor their inputs)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(".") as repo:
        needed = {stage for target in targets for stage in repo.stage.collect(target, with_deps=True)}
        swept = {s for s in needed if any(_touched(_keys(d), grid) for d in s.deps if isinstance(d, ParamsDependency))}
        upstream = {s: set(repo.stage.collect(s.addressing, with_deps=True)) - {s} for s in needed}
        swept |= {s for s in needed if upstream[s] & swept}
        return sorted(s.addressing for s in needed - swept)


def push_shared(targets: list[str], grid: list[str], dvc_remote: str | None) -> list[str]:
    """Reproduce the shared stages here and push their outputs and run-cache entries; their names."""
    stages = shared_stages(targets, grid)
    if not stages:
        return []
    remote = ["-r", dvc_remote] if dvc_remote else []
    with step(f"reproducing the stages every point shares ({', '.join(stages)})"):
        dvc("repro", "-q", *stages)
    with step("pushing them and their run-cache entries to the DVC remote"):
        dvc("push", "--run-cache", *remote, *stages, capture=True)
    return stages


def pull_experiments(names: list[str], git_remote: str) -> None:
    """Pull the finished points' experiments (git refs only) from the git remote.

    The report needs only what git holds (params, the metrics file, ``dvc.lock``); the IRs stay in the DVC
    remote until one is wanted (``dvc exp apply <name>`` then ``dvc pull``), so the driver never downloads
    a full-size sweep (24 int4 IRs are 62 GiB of Phi-3-mini).
    """
    if not names:
        return
    with step(f"pulling {len(names)} experiments from git remote {git_remote}"):
        dvc("exp", "pull", "--force", "--no-cache", git_remote, *names, capture=True)
