"""``aipc``: one console script; each subcommand is a thin front over a stage function.

Subcommands and their help come from the plain functions in :data:`COMMANDS` (docstring = help).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.config import PARAMS_FILE, ConfigError, build, compose, dump_yaml, load_params
from pipeline.errors import fail, run_main


def cmd_download() -> None:
    """Download the configured model into artifacts/model (hub, local folder or tiny)."""
    from pipeline import download

    download.run(load_params().model)


def cmd_reference() -> None:
    """Run the original PyTorch model once and record the reference outputs."""
    from pipeline import reference

    reference.run(load_params().validate)


def cmd_export_openvino(variant: str) -> None:
    """Export one OpenVINO IR variant (int4, int8, fp16, ...) from artifacts/model."""
    from pipeline import export_openvino

    export_openvino.main([variant])


def cmd_validate(variant: str) -> None:
    """Run one IR variant with openvino_genai and compare it with the PyTorch reference."""
    from pipeline import validate

    validate.main([variant])


def cmd_export_npu(variant: str) -> None:
    """Export an NPU-ready IR (int4 sym, ratio 1.0) and, where an NPU exists, its compiled blob."""
    from pipeline import export_npu

    export_npu.main([variant])


def cmd_validate_npu(variant: str) -> None:
    """Validate an NPU-ready IR on the NPU, or on CPU (labelled so) where there is none."""
    from pipeline import validate

    validate.main(["--npu", variant])


def cmd_compile_npu_blob(artifact: str) -> None:
    """On the NPU machine: compile a deferred NPU artifact folder into a blob (weights included)."""
    from pipeline import export_npu

    facts = export_npu.compile_deferred(Path(artifact))
    print(json.dumps(facts, indent=2))


def cmd_devices() -> None:
    """List CPU/GPU/NPU as OpenVINO sees them here, with versions or the reason a device is absent."""
    from pipeline import devices

    for name, status in devices.detect().items():
        detail = status.full_name if status.available else status.reason
        print(f"{name:4} {'yes' if status.available else 'no ':3} {detail}")


def cmd_compose(overrides: list[str]) -> None:
    """Compose conf/ (with Hydra overrides such as model=tiny) into params.yaml."""
    data = compose(overrides)
    PARAMS_FILE.write_text(dump_yaml(data), encoding="utf-8")
    print(f"wrote {PARAMS_FILE} (model={data['model']['name']}, variants={', '.join(data['openvino'])})")


def cmd_check_config(overrides: list[str]) -> None:
    """Compose and type-check every model preset, and check params.yaml is not stale."""
    from pipeline.config import CONF_DIR, PipelineConfig

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
        fail(f"params.yaml is stale (sections {', '.join(stale)} differ from conf/ with overrides "
             f"{overrides or 'none'}): run `aipc compose {' '.join(overrides)}`".rstrip())
    print(f"ok: params.yaml matches conf/ (overrides: {' '.join(overrides) or 'none'})")


def cmd_demo() -> None:
    """Run the whole pipeline offline on the embedded tiny Phi-3 (compose model=tiny, dvc repro)."""
    if not Path("dvc.yaml").is_file() or not Path(".dvc").is_dir():
        fail("run `aipc demo` from the project root (the folder with dvc.yaml and .dvc/)")
    cmd_compose(["model=tiny"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                                         os.environ.get("PATH", "")])}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], env=env, check=False)
    if done.returncode:
        fail(f"dvc repro failed (exit {done.returncode}); the lines above say which stage and why")
    print(summary_table(Path("artifacts/metrics")))


def summary_table(metrics_dir: Path) -> str:
    """A Markdown table of every validation metrics file under ``metrics_dir``."""
    cols = ["artifact", "device_executed", "size_mb", "load_s", "ttft_ms", "tpot_ms", "tokens_per_s",
            "peak_rss_mb", "top1_agreement", "greedy_exact_match", "passed"]
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
    "export-npu": (cmd_export_npu, ["variant"]),
    "validate-npu": (cmd_validate_npu, ["variant"]),
    "compile-npu-blob": (cmd_compile_npu_blob, ["artifact"]),
    "devices": (cmd_devices, []),
    "compose": (cmd_compose, ["overrides*"]),
    "check-config": (cmd_check_config, ["overrides*"]),
    "demo": (cmd_demo, []),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``aipc`` argument parser, one subcommand per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="aipc", description="Phi-3 -> Intel AI PC models, proven by running them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, args) in COMMANDS.items():
        doc = (func.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc)
        for arg in args:
            if arg.endswith("*"):
                p.add_argument(arg[:-1], nargs="*", help="Hydra overrides, e.g. model=tiny openvino.int4.ratio=0.8")
            else:
                p.add_argument(arg)
        p.set_defaults(func=func, argnames=[a.rstrip("*") for a in args])
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``aipc`` console script."""
    args = build_parser().parse_args(argv)
    run_main(lambda: args.func(*(getattr(args, a) for a in args.argnames)))


if __name__ == "__main__":
    main()
