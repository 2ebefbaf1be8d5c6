"""``aipc``: one console script; each subcommand is a thin front over a stage function.

Subcommands and their help come from the plain functions in :data:`COMMANDS` (docstring = help).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.config import PARAMS_FILE, build, compose, dump_yaml, load_params
from pipeline.core.errors import fail, run_main
from pipeline.core.stage import run_stage


def cmd_download() -> None:
    """Download the configured model into artifacts/model (hub, local folder or tiny)."""
    from pipeline.hub import download

    download.run(load_params().model)


def cmd_reference() -> None:
    """Run the original PyTorch model once and record the reference outputs."""
    from pipeline.validation import reference

    reference.run(load_params().validate)


def cmd_export_openvino(variant: str) -> None:
    """Export one OpenVINO IR variant (int4, int8, fp16, ...) from artifacts/model."""
    run_stage("openvino", "export", [variant])


def cmd_validate(variant: str) -> None:
    """Run one IR variant with openvino_genai and compare it with the PyTorch reference."""
    run_stage("openvino", "validate", [variant])


def cmd_export_onnx(variant: str) -> None:
    """Build one ONNX Runtime GenAI variant (dml_int4, dml_fp16, cpu_int4, ...) from artifacts/model."""
    run_stage("onnx", "export", [variant])


def cmd_validate_onnx(variant: str) -> None:
    """Run one ONNX variant with onnxruntime-genai and compare it with the PyTorch reference."""
    run_stage("onnx", "validate", [variant])


def cmd_onnx_compat(target: str) -> None:
    """Check an ONNX variant (or folder) loads and runs in onnxruntime-genai 0.13.1 and 0.14.1 (Windows DML users)."""
    from pipeline.onnx import compat as onnx_compat

    onnx_compat.main([target])


def cmd_export_npu(variant: str) -> None:
    """Export an NPU-ready IR (int4 sym, ratio 1.0) and, where an NPU exists, its compiled blob."""
    run_stage("npu", "export", [variant])


def cmd_validate_npu(variant: str) -> None:
    """Validate an NPU-ready IR on the NPU, or on CPU (labelled so) where there is none."""
    run_stage("openvino", "validate", ["--npu", variant])


def cmd_compile_npu_blob(artifact: str) -> None:
    """On the NPU machine: compile a deferred NPU artifact folder into a blob (weights included)."""
    from pipeline.openvino import export_npu

    facts = export_npu.compile_deferred(Path(artifact))
    print(json.dumps(facts, indent=2))


def cmd_export_npu_lib(variant: str) -> None:
    """Compile the original NPU recipe (intel-npu-acceleration-library int4/int8/fp16) in its own environment."""
    run_stage("npu_lib", "export", [variant])


def cmd_validate_npu_lib(variant: str) -> None:
    """Load an intel-npu-acceleration-library model (after its hash check), generate and compare with PyTorch."""
    run_stage("npu_lib", "validate", [variant])


def cmd_npu_lib_env() -> None:
    """Create (first use) or show the isolated intel-npu-acceleration-library environment."""
    from pipeline.npu_lib import env as npu_lib_env

    try:
        env = npu_lib_env.ensure(retry=True)
    except npu_lib_env.EnvUnavailable as err:
        fail(f"the isolated environment cannot be built here: {err}")
    print(json.dumps({"path": str(env.path), "python": str(env.python), **env.info}, indent=2))


def cmd_devices() -> None:
    """List CPU/GPU/NPU as OpenVINO sees them here, with versions or the reason a device is absent."""
    from pipeline.validation import devices

    for name, status in devices.detect().items():
        detail = status.full_name if status.available else status.reason
        print(f"{name:4} {'yes' if status.available else 'no ':3} {detail}")


def cmd_sweep(overrides: list[str]) -> None:
    """Queue the sweep grid from params.yaml as DVC experiments, run them, and write the sweep report."""
    from pipeline import sweep

    cfg = load_params().sweep
    sweep.queue_and_run(cfg, overrides)
    sweep.report(cfg)


def cmd_sweep_report() -> None:
    """Rebuild artifacts/sweep/ (table, Pareto plot, recommended point) from `dvc exp show`."""
    from pipeline import sweep

    sweep.report(load_params().sweep)


def cmd_chat(artifact: str, device: str = "CPU", prompt: str | None = None) -> None:
    """Chat with an exported IR (Phi-3 chat template, streamed); one-shot with --prompt."""
    from pipeline import chat

    chat.chat(Path(artifact), device, prompt)


def cmd_verify(artifact: str) -> None:
    """Check an artifact folder's files against its manifest and dvc.lock, as validate/chat/publish do first."""
    from pipeline.core.verify import stage_of, verify_folder

    manifest = verify_folder(Path(artifact))
    stage = stage_of(Path(artifact))
    print(
        f"ok: {artifact}: {len(manifest['files'])} files match {Path(artifact) / 'manifest.json'}"
        + (f" and dvc.lock's record of {stage}" if stage else "")
    )


def cmd_repair(stage: str) -> None:
    """Rebuild a stage's tampered output: drop its bad DVC cache entries, `dvc repro -f -s <stage>`, verify."""
    from pipeline.core.verify import repair

    for folder in repair(stage):
        print(f"repaired: {folder} matches its manifest and dvc.lock")


DVC_TMP = Path(".dvc") / "tmp"  # DVC 3.x keeps its repository lock (`lock`) and stage lock (`rwlock`) here


def _try_flock(handle: Any) -> bool:
    """Take an exclusive lock on an open file without waiting, as zc.lockfile (DVC's lock) does; False if held."""
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # zc.lockfile locks the first byte
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(handle: Any) -> None:
    """Release a lock taken by :func:`_try_flock` (Windows wants it released before the file is closed)."""
    with contextlib.suppress(OSError):
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _running_dvc_stages(dvc_tmp: Path) -> list[str]:
    """Commands of live processes that `.dvc/tmp/rwlock` records as reading or writing outputs.

    DVC releases its repository lock while a stage's command runs and records the stage in ``rwlock``
    instead (dvc/stage/decorators.py ``unlocked_repo``, dvc/rwlock.py); entries of dead pids are stale.
    """
    from pipeline.core.artifacts import pid_alive

    try:
        data = json.loads((dvc_tmp / "rwlock").read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return []
    infos = list(data.get("write", {}).values()) + [i for lst in data.get("read", {}).values() for i in lst]
    pids = {int(i["pid"]): i.get("cmd", "dvc") for i in infos if isinstance(i, dict) and "pid" in i}
    return sorted(f"`{cmd}` (pid {pid})" for pid, cmd in pids.items() if pid != os.getpid() and pid_alive(pid))


@contextlib.contextmanager
def dvc_repo_lock(dvc_tmp: Path = DVC_TMP, rerun: str = "aipc compose") -> Iterator[None]:
    """Hold DVC's repository lock while the block runs; fail in one line if DVC is busy in this repository.

    DVC 3.67 locks ``.dvc/tmp/lock`` with zc.lockfile (flock/msvcrt on the open file, pid written into it),
    or with a hard-link lock (flufl.lock) when ``core.hardlink_lock`` is set. The lock is tried the same
    way, without waiting and without writing into the file, so a DVC command started meanwhile waits and
    retries as it does for any other DVC process. Outside a DVC project this does nothing.
    """
    if not dvc_tmp.parent.is_dir():
        yield
        return
    busy = f"refusing to rewrite {PARAMS_FILE}: DVC is running in this repository"
    advice = f"wait for it to finish (or stop it), then rerun `{rerun}`"
    lockfile = dvc_tmp / "lock"
    if lockfile.is_file() and lockfile.stat().st_nlink > 1:  # flufl.lock: the lock file is a hard link to a claim
        fail(f"{busy} (it holds {lockfile.as_posix()}); {advice}")
    dvc_tmp.mkdir(parents=True, exist_ok=True)
    with open(lockfile, "a+", encoding="utf-8") as handle:  # a+: never truncates what DVC wrote
        if not _try_flock(handle):
            handle.seek(0)
            holder = handle.read().strip()
            fail(f"{busy} (pid {holder or '?'} holds {lockfile.as_posix()}); {advice}")
        stages = _running_dvc_stages(dvc_tmp)
        if stages:
            fail(f"{busy}: {', '.join(stages)} is running a stage ({(dvc_tmp / 'rwlock').as_posix()}); {advice}")
        try:
            yield
        finally:
            _unlock(handle)


def cmd_compose(overrides: list[str]) -> None:
    """Compose conf/ (with Hydra overrides such as model=tiny) into params.yaml (refused while DVC runs here)."""
    data = compose(overrides)
    with dvc_repo_lock(rerun=" ".join(["aipc compose", *overrides])):
        PARAMS_FILE.write_text(dump_yaml(data), encoding="utf-8")
    print(f"wrote {PARAMS_FILE} (model={data['model']['name']}, variants={', '.join(data['openvino'])})")


def cmd_check_config(overrides: list[str]) -> None:
    """Compose and type-check every model preset, and check params.yaml is not stale."""
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


def cmd_publish(argv: list[str]) -> None:
    """Publish validated artifacts (with a model card) to the Hugging Face Hub or a git remote; see `aipc publish --help`."""
    from pipeline.hub import publish

    publish.main(argv)


def cmd_pull(repo: str, revision: str, dest: str, endpoint: str | None = None) -> None:
    """Download a published artifact at a pinned revision (tag, branch or commit) and check it against its manifest."""
    from pipeline.hub import publish

    manifest = publish.pull(repo, revision, Path(dest), endpoint=endpoint)
    print(f"{repo}@{manifest['commit']}: {len(manifest['files'])} files in {dest}, every sha256 matches the manifest")


def run_dvc(args: list[str], **extra_env: str) -> int:
    """Run ``dvc <args>`` with this venv first on PATH, from the project root; its exit code."""
    if not Path("dvc.yaml").is_file() or not Path(".dvc").is_dir():
        fail("run this from the project root (the folder with dvc.yaml and .dvc/)")
    from pipeline.core.envs import venv_env

    return subprocess.run([sys.executable, "-m", "dvc", *args], env=venv_env(**extra_env), check=False).returncode


def cmd_repro(argv: list[str]) -> None:
    """`dvc repro [args]` with this venv's Python for every stage, no activation needed (e.g. `aipc repro validate@int4`)."""
    code = run_dvc(["repro", *argv])
    if code:
        fail(f"dvc repro failed (exit {code}); the lines above say which stage and why")


def cmd_exp_run(argv: list[str]) -> None:
    """`dvc exp run [args]` with this venv's Python for every stage (e.g. `aipc exp-run -S model=phi35-mini`)."""
    code = run_dvc(["exp", "run", *argv])
    if code:
        fail(f"dvc exp run failed (exit {code}); the lines above say which stage and why")


def cmd_demo() -> None:
    """Run the whole pipeline offline on the embedded tiny Phi-3 (compose model=tiny, dvc repro)."""
    if not Path("dvc.yaml").is_file() or not Path(".dvc").is_dir():
        fail("run `aipc demo` from the project root (the folder with dvc.yaml and .dvc/)")
    cmd_compose(["model=tiny"])
    code = run_dvc(["repro"], HF_HUB_OFFLINE="1")
    report = Path("artifacts/report/report.md")
    if report.is_file():  # written even when a cell failed: it is the report people most need then
        print(report.read_text(encoding="utf-8"))
    if code:
        from pipeline.validation import report as report_stage

        params = load_params()
        line = report_stage.verdict_line(
            report_stage.collect_rows(report_stage.configured_artifacts(params), report_stage.METRICS_DIR)
        )
        fail(line or f"dvc repro failed (exit {code}); the lines above say which stage and why")
    if not report.is_file():
        print(summary_table(Path("artifacts/metrics")))


def cmd_report() -> None:
    """Write artifacts/report/ (artifact x device table, plots) from artifacts/metrics, as the `report` stage does."""
    from pipeline.validation import report

    report.run(load_params())


def summary_table(metrics_dir: Path) -> str:
    """A Markdown table of every validation metrics file under ``metrics_dir``."""
    cols = [
        "artifact",
        "device_executed",
        "size_mb",
        "load_s",
        "ttft_ms",
        "tpot_ms",
        "tokens_per_s",
        "peak_rss_mb",
        "top1_agreement",
        "greedy_exact_match",
        "passed",
    ]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for path in sorted(metrics_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        rows.append("| " + " | ".join(str(data.get(c, "")) for c in cols) + " |")
    return "\n".join(rows)


COMMANDS = {
    "download": (cmd_download, []),
    "reference": (cmd_reference, []),
    "export-openvino": (cmd_export_openvino, ["variant"]),
    "validate": (cmd_validate, ["variant"]),
    "export-onnx": (cmd_export_onnx, ["variant"]),
    "validate-onnx": (cmd_validate_onnx, ["variant"]),
    "onnx-compat": (cmd_onnx_compat, ["target"]),
    "export-npu": (cmd_export_npu, ["variant"]),
    "validate-npu": (cmd_validate_npu, ["variant"]),
    "compile-npu-blob": (cmd_compile_npu_blob, ["artifact"]),
    "export-npu-lib": (cmd_export_npu_lib, ["variant"]),
    "validate-npu-lib": (cmd_validate_npu_lib, ["variant"]),
    "npu-lib-env": (cmd_npu_lib_env, []),
    "devices": (cmd_devices, []),
    "sweep": (cmd_sweep, ["overrides*"]),
    "sweep-report": (cmd_sweep_report, []),
    "chat": (cmd_chat, ["artifact", "--device", "--prompt"]),
    "compose": (cmd_compose, ["overrides*"]),
    "check-config": (cmd_check_config, ["overrides*"]),
    "demo": (cmd_demo, []),
    "repro": (cmd_repro, ["argv..."]),
    "exp-run": (cmd_exp_run, ["argv..."]),
    "report": (cmd_report, []),
    "publish": (cmd_publish, ["argv..."]),
    "pull": (cmd_pull, ["repo", "revision", "dest", "--endpoint"]),
    "verify": (cmd_verify, ["artifact"]),
    "repair": (cmd_repair, ["stage"]),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``aipc`` argument parser, one subcommand per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="aipc", description="Phi-3 -> Intel AI PC models, proven by running them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, args) in COMMANDS.items():
        doc = (func.__doc__ or "").strip().splitlines()[0]
        own_flags = any(a.endswith("...") for a in args)  # the command parses its own flags (and --help)
        p = sub.add_parser(
            name, help=doc, description=doc, **({"add_help": False, "prefix_chars": "+"} if own_flags else {})
        )
        for arg in args:
            if arg.endswith("..."):
                p.add_argument(arg[:-3], nargs="*")
            elif arg.endswith("*"):
                p.add_argument(arg[:-1], nargs="*", help="Hydra overrides, e.g. model=tiny openvino.int4.ratio=0.8")
            elif arg.startswith("--"):
                p.add_argument(arg, default=None)
            else:
                p.add_argument(arg)
        p.set_defaults(func=func, argnames=[a.rstrip("*.").lstrip("-") for a in args])
    return parser


EXPORTS = {
    "export-openvino",
    "export-onnx",
    "export-npu",
}  # run like their DVC stages (pipeline.core.memory.use_huge_pages)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``aipc`` console script."""
    from pipeline.core.log import console_safe

    console_safe()
    args = build_parser().parse_args(argv)
    if argv is None and args.command in EXPORTS:
        from pipeline.core.memory import use_huge_pages

        use_huge_pages()
    values = {a: getattr(args, a) for a in args.argnames}
    run_main(lambda: args.func(**{k: v for k, v in values.items() if v is not None}))


if __name__ == "__main__":
    main()
