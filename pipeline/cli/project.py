"""``aipc`` commands over the whole project: compose ``params.yaml``, run DVC, the demo, the sweep, the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.cli.dvc_lock import dvc_repo_lock
from pipeline.core.composition import local_recipe
from pipeline.core.config import PARAMS_FILE, build, compose, dump_yaml, load_params
from pipeline.core.errors import fail
from pipeline.core.registry import FAMILIES


def cmd_compose(overrides: list[str]) -> None:
    """Compose conf/ (with Hydra overrides such as model=tiny) into params.yaml (refused while DVC runs here).

    Args:
        overrides: Hydra overrides, e.g. model=tiny openvino.int4.ratio=0.8.
    """
    data = compose(overrides)
    recipe = local_recipe(overrides, data)  # model=local: the recipe of the preset whose architecture it has
    if recipe:
        print(recipe[1])
        overrides = [*overrides, *recipe[0]]
        data = compose(overrides)
    check_loops(data)
    with dvc_repo_lock(rerun=" ".join(["aipc compose", *overrides])):
        PARAMS_FILE.write_text(dump_yaml(data), encoding="utf-8")
    first = next(iter(FAMILIES))  # the registry's first family (the OpenVINO IR): its variants say which recipe
    print(f"wrote {PARAMS_FILE} (model={data['model']['name']}, variants={', '.join(data[first])})")


def check_loops(data: dict) -> None:
    """Refuse a composition that lacks a section dvc.yaml runs a stage per entry of (``foreach: ${npu}``).

    DVC could not parse dvc.yaml then; removing single variants (``~onnx.cpu_int4``) is fine.
    """
    import re

    from pipeline.core.config import PROJECT_ROOT

    text = (PROJECT_ROOT / "dvc.yaml").read_text(encoding="utf-8") if (PROJECT_ROOT / "dvc.yaml").is_file() else ""
    loops = sorted(set(re.findall(r"^\s*foreach:\s*\$\{\s*(\w+)\s*\}", text, re.MULTILINE)))
    missing = [name for name in loops if not isinstance(data.get(name), dict)]
    if missing:
        fail(
            f"the composition has no {', '.join(missing)} section: dvc.yaml runs one stage per entry of each of "
            f"{', '.join(loops)}; leave out single variants instead, e.g. `aipc compose ~onnx.cpu_int4`"
        )


def cmd_check_config(overrides: list[str]) -> None:
    """Compose and type-check every model preset, and check params.yaml is not stale.

    Args:
        overrides: The Hydra overrides params.yaml was composed with, e.g. model=tiny.
    """
    from pipeline.core.config import CONF_DIR, PipelineConfig

    for preset in sorted((CONF_DIR / "model").glob("*.yaml")):
        extra = ["model.local_path=."] if preset.stem == "local" else []
        compose([f"model={preset.stem}", *extra])
        print(f"ok: model={preset.stem}")
    import yaml

    expected = compose(overrides)
    actual = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8")) if PARAMS_FILE.is_file() else None
    if actual != expected:
        build(PipelineConfig, actual or {})
        stale = sorted(k for k in set(expected) | set(actual or {}) if (actual or {}).get(k) != expected.get(k))
        fail(
            f"params.yaml is stale (sections {', '.join(stale)} differ from conf/ with overrides "
            f"{overrides or 'none'}): run `aipc compose {' '.join(overrides)}`".rstrip()
        )
    print(f"ok: params.yaml matches conf/ (overrides: {' '.join(overrides) or 'none'})")


def cmd_stages(argv: list[str]) -> None:
    """Check (--check) or rewrite (--write) the .py deps of every dvc.yaml stage: its code's import closure.

    Args:
        argv: --check (fail in one line if dvc.yaml is stale) or --write (rewrite only those deps lines).
    """
    from pipeline.core import stage_deps

    stage_deps.main(argv)


def cmd_sweep(
    overrides: list[str],
    executor: str | None = None,
    address: str | None = None,
    git: str | None = None,
    remote: str | None = None,
    memory: str | None = None,
) -> None:
    """Run the sweep grid from params.yaml as DVC experiments (local queue or Ray), and write the sweep report.

    Args:
        overrides: Hydra overrides applied to every sweep point, e.g. model=tiny.
        executor: local (default: DVC's queue on this machine) or ray (one Ray task per point; docs/sweeps.md).
        address: Ray cluster address (ray executor; default: RAY_ADDRESS or the cluster started on this machine).
        git: Git remote the Ray nodes clone from and push experiments to (default: origin).
        remote: DVC remote for the shared stages and the points' outputs (default: the project's default remote).
        memory: GiB of RAM Ray reserves per point (default: the measured peak of an earlier sweep, x 1.25).
    """
    from pipeline import sweep

    cfg = load_params().sweep
    if (executor or "local") not in sweep.EXECUTORS:
        fail(f"--executor must be one of {', '.join(sweep.EXECUTORS)}, got {executor!r}")
    refresh_local_model([])  # every point starts from this workspace's download
    if executor == "ray":
        from pipeline.sweep.ray_executor import run_sweep

        run_sweep(cfg, overrides, address, git or "origin", remote, memory)
        return
    if address or git or remote or memory:
        fail("--address, --git, --remote and --memory are for --executor ray")
    sweep.queue_and_run(cfg, overrides)
    sweep.report(cfg)


def cmd_sweep_report() -> None:
    """Rebuild artifacts/sweep/ (table, Pareto plot, recommended point) from `dvc exp show`."""
    from pipeline import sweep

    sweep.report(load_params().sweep)


def run_dvc(args: list[str], *, module: str = "dvc", **extra_env: str) -> int:
    """Run ``dvc <args>`` with this venv first on PATH, from the project root; its exit code.

    ``module`` runs DVC through another entry point (``pipeline.cli.dvc_main``: without its ``git add`` hint).
    """
    if not Path("dvc.yaml").is_file() or not Path(".dvc").is_dir():
        fail("run this from the project root (the folder with dvc.yaml and .dvc/)")
    from pipeline.core.envs import venv_env

    return subprocess.run([sys.executable, "-m", module, *args], env=venv_env(**extra_env), check=False).returncode


def cmd_repro(argv: list[str]) -> None:
    """`dvc repro [args]` with this venv's Python for every stage, no activation needed (e.g. `aipc repro validate@int4`).

    Args:
        argv: ``dvc repro``'s arguments, e.g. validate@int4.
    """
    refresh_local_model(argv)
    from pipeline.core.cache_links import guarded_repro

    code = guarded_repro(run_dvc, argv)  # outputs checked against their manifests before and after DVC
    if not argv and Path("artifacts/report/report.md").is_file():  # the whole pipeline: its answer at a glance
        print_summary()
    if code:
        fail(f"dvc repro failed (exit {code}); the lines above say which stage and why")


def metric_rows() -> list:
    """The report's rows (every cell of every configured artifact) from artifacts/metrics."""
    from pipeline.validation import report

    return report.collect_rows(report.configured_artifacts(load_params()), report.METRICS_DIR)


def print_summary() -> None:
    """Print the one-screen answer (pipeline/validation/summary.py) from the configured artifacts' metrics."""
    from pipeline.validation import report, summary

    rows = metric_rows()
    print(summary.console_summary(rows, str(report.OUT_DIR / "report.md")), flush=True)


def cmd_recommend() -> None:
    """Which artifact to run on each device (CPU, GPU, NPU, DML), from artifacts/metrics, and how sure that is."""
    from pipeline.validation import summary

    rows = metric_rows()
    if not any(r.ran for r in rows):
        fail("no validation cell has run here: run `aipc demo` or `aipc repro` first")
    for device, answer in summary.recommend(rows).items():
        print(f"{device}: {answer}")


def refresh_local_model(argv: list[str]) -> None:
    """With model=local, copy the folder again (``dvc repro -f -s download``) when its files changed since.

    DVC does not see that folder (:func:`pipeline.hub.download.local_changes`); forced, the stage writes the new
    checkpoint, so everything downstream reruns, and DVC's run cache cannot hand back the old copy.
    """
    if "--dry" in argv or not PARAMS_FILE.is_file():
        return
    from pipeline.hub.download import local_changes

    changed = local_changes(load_params().model)
    if changed:
        print(f"model.local_path changed since it was copied ({', '.join(changed)}): running download again")
        code = run_dvc(["repro", "-f", "-s", "download"])
        if code:
            fail(f"dvc repro -f -s download failed (exit {code}); the lines above say why")


def cmd_exp_run(argv: list[str]) -> None:
    """`dvc exp run [args]` with this venv's Python for every stage (e.g. `aipc exp-run -S model=phi35-mini`).

    Args:
        argv: ``dvc exp run``'s arguments, e.g. -S model=phi35-mini.
    """
    refresh_local_model(argv)
    code = run_dvc(["exp", "run", *keep_workspace_composition(argv)])
    if code:
        fail(f"dvc exp run failed (exit {code}); the lines above say which stage and why")


SET_PARAM_FLAGS = ("-S", "--set-param")


def params_yaml_overrides(argv: list[str]) -> list[str]:
    """The ``-S`` / ``--set-param`` values in ``argv`` that DVC applies to params.yaml (composing it with Hydra)."""
    values = []
    for i, arg in enumerate(argv):
        if arg in SET_PARAM_FLAGS and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith("--set-param="):
            values.append(arg.split("=", 1)[1])
        elif arg.startswith("-S") and len(arg) > 2 and not arg.startswith("--"):
            values.append(arg[2:])
    key_file = [(v.split("=", 1)[0], v) for v in values]
    return [v.split(":", 1)[1] if ":" in k else v for k, v in key_file if ":" not in k or k.startswith("params.yaml:")]


def override_key(override: str) -> str:
    """The dotted key an override sets: ``model`` for ``model=tiny``, ``a.b`` for ``+a.b=1`` or ``~a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def keep_workspace_composition(argv: list[str]) -> list[str]:
    """``dvc exp run``'s arguments with the workspace's own composition first, so ``-S`` changes only what it names.

    With Hydra on (.dvc/config), any ``-S`` for params.yaml makes DVC compose params.yaml from conf/ and those
    arguments alone: in a ``model=tiny`` workspace, ``-S openvino.int4.ratio=0.8`` would convert the real Phi-3.
    The overrides that give back this params.yaml go first; the user's win where they name the same key or group.
    """
    user = params_yaml_overrides(argv)
    if not user or "--no-hydra" in argv:  # DVC leaves params.yaml as it is (or edits only the keys named)
        return argv
    from pipeline.core.composition import workspace_overrides

    named = [override_key(o) for o in user]
    keep = [o for o in workspace_overrides() if not any(f"{override_key(o)}.".startswith(f"{k}.") for k in named)]
    if keep:
        print(f"keeping this workspace's composition: -S {' -S '.join(keep)}")
    return [arg for o in keep for arg in ("-S", o)] + argv


def cmd_demo() -> None:
    """Run the whole pipeline offline on the embedded tiny Phi-3 (compose model=tiny, dvc repro)."""
    if not Path("dvc.yaml").is_file() or not Path(".dvc").is_dir():
        fail("run `aipc demo` from the project root (the folder with dvc.yaml and .dvc/)")
    cmd_compose(["model=tiny"])
    # DVC without its `git add` hint for dvc.lock (pipeline/cli/dvc_main.py; --quiet would hide its errors too).
    # The answer comes last, in one screen (print_summary).
    from pipeline.core.cache_links import guarded_repro

    code = guarded_repro(lambda args: run_dvc(args, module="pipeline.cli.dvc_main", HF_HUB_OFFLINE="1"), [])
    report = Path("artifacts/report/report.md")
    if report.is_file():  # written even when a cell failed: it is the summary people most need then
        print_summary()
    if code:
        from pipeline.validation import report as report_stage

        line = report_stage.verdict_line(metric_rows())
        fail(line or f"dvc repro failed (exit {code}); the lines above say which stage and why")
    if not report.is_file():
        print(summary_table(Path("artifacts/metrics")))


def cmd_report() -> None:
    """Write artifacts/report/ (artifact x device table, plots) from artifacts/metrics, as the `report` stage does."""
    from pipeline.validation import report

    report.run(load_params())


def summary_table(metrics_dir: Path) -> str:
    """A Markdown table of every validation metrics file under ``metrics_dir``."""
    from pipeline.validation.report import SPEED_KEYS

    cols = ["artifact", "size_mb", *SPEED_KEYS, "top1_agreement", "greedy_exact_match", "passed"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for path in sorted(metrics_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        rows.append("| " + " | ".join(str(data.get(c, "")) for c in cols) + " |")
    return "\n".join(rows)
