"""One sweep point on one node (the body of a Ray task; plain Python, no Ray): clone, fetch, run, push.

The clone is the point's clean workspace at the driver's commit, so the experiment runs in it directly:
``dvc exp run`` there does what ``--temp`` does in a shared workspace, and leaves the outputs checked out
so they can be pushed before the experiment is published. The order is what keeps both remotes free of
half-written points: (1) ``dvc push`` uploads the outputs (content-addressed objects, each written whole),
(2) ``dvc exp push --no-cache`` publishes the experiment's git ref last. A worker killed before (2) leaves
at most unreferenced whole objects in the DVC remote and nothing in the git remote; Ray's retry runs the
point again under the same name and, the outputs being deterministic, uploads the same objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import remove_tree
from pipeline.core.envs import venv_env
from pipeline.core.workspace import NNCF_CACHE_ENV

NODE_CACHE_ENV = "AIPC_SWEEP_CACHE"  # the node's caches, shared by the points it runs (default: a temp folder)
SCRATCH_ENV = "AIPC_SWEEP_SCRATCH"  # where the node makes the points' workspaces (default: the temp folder)


@dataclass
class PointSpec:
    """What a node needs to run one point: where the code and data are, and which point it is."""

    name: str  # the experiment name (pipeline.sweep.grid.point_name)
    values: dict[str, Any]  # the grid values of this point
    set_params: list[str]  # its ``-S`` arguments, fixed overrides included
    targets: list[str]  # the stages it runs (sweep.targets)
    git_url: str  # the git remote both sides push to and pull from
    commit: str  # the driver's commit: every point starts from it
    metrics_file: str  # sweep.metrics_file, read back for the driver's log
    shared: list[str] = field(default_factory=list)  # stages every point shares (restored from the run cache)
    dvc_remote: str | None = None  # a DVC remote name in the project's .dvc/config (None: its default remote)
    keep_workspace: bool = False  # leave the clone on the node (debugging)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the stages (not secrets)


REMOTE_TRIES = 3  # clone, fetch and push talk to the remotes: a failure there is tried again, twice
RETRY_WAIT_S = 2.0  # before the second try; twice that before the third
TAIL_LINES = 40  # lines of a failed command's output kept in the point's result (``ray_points.json``)


class PointFailed(RuntimeError):
    """A command of the point failed: the point is reported as failed, and not retried by Ray.

    ``tail``: the last :data:`TAIL_LINES` lines the command printed, so the driver's record says why.
    """

    def __init__(self, message: str, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.tail = tail or []


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, Any]:
    """Run ``args`` in ``cwd``; its output and its rusage (peak RSS of it and its descendants)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace"
        )
        if sys.platform == "win32":  # Ray nodes run Linux (docs/sweeps.md); no rusage of the children here
            proc.wait()
            usage = None
        else:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode:
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        ours = [line for line in lines if line.startswith("error: ")]  # a stage's own one-line reason
        detail = ours[-1].removeprefix("error: ") if ours else " | ".join(lines[-2:])
        command = " ".join((args[2:] if args[1:2] == ["-m"] else args)[:3])  # "dvc exp run", not its -S list
        raise PointFailed(f"`{command}` exit {proc.returncode}: {detail}", lines[-TAIL_LINES:])
    return out, usage


def run_point(spec: PointSpec) -> dict[str, Any]:
    """Run one point in a fresh clone and publish it; never raises for a failing point.

    Returns:
        ``{"name", "status": "ok"|"failed", "error", "metrics", "peak_rss_bytes", "seconds": {phase: s}, "host",
        "retried": [{"phase", "error"}]}``, and ``"log_tail"`` (the failing command's last lines) when it failed.
    """
    scratch = Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"aipc-{spec.name}-", dir=scratch))
    result: dict[str, Any] = {
        "name": spec.name,
        "values": spec.values,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
    }
    seconds: dict[str, float] = {}
    retried: list[dict[str, str]] = []
    try:
        result.update(status="ok", error=None, **_phases(spec, work, seconds, retried))
    except PointFailed as err:
        result.update(status="failed", error=f"{err} (in {next(reversed(seconds), '?')})", log_tail=err.tail)
    finally:
        result["seconds"] = seconds
        result["retried"] = retried
        result["ended"] = time.time()
        if not spec.keep_workspace:
            with contextlib.suppress(OSError):
                remove_tree(work)
    return result


def _phases(spec: PointSpec, work: Path, seconds: dict[str, float], retried: list[dict[str, str]]) -> dict[str, Any]:
    """Clone, fetch, run, push; ``seconds`` gets each phase's time, ``retried`` each remote command tried again.

    Only the commands that talk to a remote (git clone, ``dvc repro --pull``, ``dvc push``, ``dvc exp push``) are
    tried again, :data:`REMOTE_TRIES` times in all: a network or server hiccup after a long run must not lose the
    point. They are idempotent (content-addressed objects, a forced ref). The experiment itself is never tried
    again: a point that fails there fails the same way every time.
    """
    node_cache = Path(os.environ.get(NODE_CACHE_ENV) or Path(tempfile.gettempdir()) / "aipc-sweep-cache")
    # The NNCF caches (statistics, sensitivities; keyed by base IR and dataset) are the node's: its points share them
    env = venv_env(**{NNCF_CACHE_ENV: str(node_cache.absolute()), **spec.env})
    env.pop("DVC_ROOT", None)  # a DVC stage environment must not leak into the clone's DVC
    dvc = [sys.executable, "-m", "dvc"]

    def timed(
        phase: str, args: list[str], cwd: Path = work, tries: int = 1, before_retry: Callable[[], None] | None = None
    ) -> tuple[str, Any]:
        """Run ``args`` up to ``tries`` times (``before_retry`` undoes a failed try); the phase's time counts all."""
        start = time.perf_counter()
        try:
            for attempt in range(1, tries):
                try:
                    return _run(args, cwd, env)
                except PointFailed as err:
                    retried.append({"phase": phase, "error": str(err)})
                    if before_retry:
                        before_retry()
                    time.sleep(RETRY_WAIT_S * attempt)
            return _run(args, cwd, env)  # the last try: its failure is the point's
        finally:
            seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - start, 3)

    def empty_workspace() -> None:  # git clone wants an empty folder
        for leftover in work.iterdir():
            remove_tree(leftover)

    clone = ["git", "clone", "-q", "--no-checkout", spec.git_url, str(work)]
    timed("clone", clone, work.parent, REMOTE_TRIES, empty_workspace)
    timed("clone", ["git", "checkout", "-q", "--detach", spec.commit])
    timed("clone", [*dvc, "config", "--local", "cache.dir", str(node_cache / "dvc")])
    if spec.dvc_remote:  # `exp run --pull` reads the run cache from the default remote
        timed("clone", [*dvc, "remote", "default", "--local", spec.dvc_remote])
    if spec.shared:  # one point of the node at a time fills the node's cache (two DVCs pulling one cache race)
        with node_lock(node_cache):
            timed("fetch", [*dvc, "repro", "--pull", *spec.shared], tries=REMOTE_TRIES)
    # --pull: run-cache entries from the remote, then only the objects of the entries that match
    _, usage = timed("run", [*dvc, "exp", "run", "--pull", "-n", spec.name, *spec.set_params, *spec.targets])
    metrics_path = work / spec.metrics_file
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    timed("push", [*dvc, "push", "-q"], tries=REMOTE_TRIES)
    timed("push", [*dvc, "exp", "push", "--no-cache", "--force", "origin", spec.name], tries=REMOTE_TRIES)
    return {"metrics": metrics, "peak_rss_bytes": usage.ru_maxrss * 1024 if usage else None}


@contextlib.contextmanager
def node_lock(node_cache: Path) -> Iterator[None]:
    """Hold the node's fetch lock (an OS lock: released if this worker dies)."""
    from filelock import FileLock

    node_cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(node_cache / "fetch.lock")):
        yield
