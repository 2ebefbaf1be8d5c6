"""``aipc convert MODEL --to TARGET ...``: one model to the named targets, built and validated, in one command.

Like ``optimum-cli export openvino``, but each target is this pipeline's own: ``params.yaml`` is composed for the
model (a preset of ``conf/model/`` or a checkpoint folder, which becomes ``model=local``), then ``dvc repro`` runs
exactly the targets' validate stages, which pull in what they need (download, reference, the base IR, the export)
and nothing else. The ``report`` stage is left out: it reads every configured artifact's metrics, so it would build
them all (``aipc repro`` does). The answer is the targets' own rows (:mod:`pipeline.validation.summary`) and where
their folders are; the exit code is 2 when a target failed, was refused or has no metrics.

The first line says which model runs, and a ``params.yaml`` composed for another model or with other settings is
named as it is replaced: ``aipc exp-run`` once converted the real Phi-3 in a ``model=tiny`` workspace, silently.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.composition import hydra_value, local_recipe
from pipeline.core.config import CONF_DIR, PARAMS_FILE, compose
from pipeline.core.errors import fail
from pipeline.core.registry import FAMILIES, Family

LOCAL_PRESET = "local"  # conf/model/local.yaml: convert takes the folder itself instead


def convert_parser() -> argparse.ArgumentParser:
    """The parser of ``aipc convert`` (``--to`` repeats; the rest are Hydra overrides)."""
    parser = argparse.ArgumentParser(
        prog="aipc convert",
        description="Compose params.yaml for MODEL, then build and validate only the --to targets (dvc repro of "
        "their validate stages), and print their verdicts.",
        epilog="examples:\n  aipc convert tiny --to openvino-int4 --to npu-int4\n"
        "  aipc convert D:/models/my-phi3 --to onnx-cpu_int4 openvino.int4.ratio=0.8\n"
        "`aipc presets` lists the models, and the families and variants that make the targets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a model preset (aipc presets) or a local checkpoint folder")
    parser.add_argument(
        "--to", action="append", default=[], metavar="TARGET", help="an artifact, FAMILY-VARIANT (repeat for more)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. openvino.int4.ratio=0.8")
    return parser


def presets() -> list[str]:
    """The model presets convert accepts by name (``local`` is a folder instead)."""
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != LOCAL_PRESET)


def model_overrides(model: str) -> list[str]:
    """The overrides that pick ``model``: ``model=<preset>``, or ``model=local`` + the folder's absolute path.

    A preset's name wins over a folder of that name in the current directory (``./tiny`` names the folder).
    """
    if model in presets():
        return [f"model={model}"]
    if model == LOCAL_PRESET:
        fail("pass the checkpoint folder itself, e.g. `aipc convert D:/models/my-phi3 --to openvino-int4`")
    folder = Path(model).expanduser()
    if not folder.is_dir():
        fail(f"'{model}' is neither a model preset ({', '.join(presets())}) nor a folder")
    from pipeline.hub.download import check_model_folder

    check_model_folder(folder.resolve(), model)  # one line when it is not a Phi-3 checkpoint
    return ["model=local", f"model.local_path={hydra_value(folder.resolve().as_posix())}"]


def available_targets(data: dict) -> dict[str, tuple[Family, str]]:
    """Every artifact the composition configures, ``openvino-int4`` -> (family, variant), in pipeline order."""
    return {f.artifact(v): (f, v) for f in FAMILIES.values() for v in data.get(f.name) or {}}


def pick_targets(names: list[str], data: dict) -> list[tuple[str, Family, str]]:
    """The targets ``names`` asks for, each once, in the order given (one line naming the valid ones otherwise)."""
    available = available_targets(data)
    valid = ", ".join(available)
    if not names:
        fail(f"name at least one target with --to, e.g. --to openvino-int4; valid ones: {valid}")
    unknown = [n for n in names if n not in available]
    if unknown:
        fail(f"unknown target {', '.join(repr(n) for n in unknown)}: valid ones for this model are {valid}")
    return [(n, *available[n]) for n in dict.fromkeys(names)]


def model_words(data: dict, overrides: list[str]) -> str:
    """Which model runs, for the first line: ``model=tiny (tiny-phi3, embedded)``, the repo and revision, or the folder."""
    model = data["model"]
    where = {"tiny": "embedded", "local": str(model.get("local_path"))}.get(model.get("source"))
    where = where or f"{model.get('repo_id')} at {str(model.get('revision'))[:8]}"
    return f"{overrides[0]} ({model.get('name')}, {where})"


def replaced_line(data: dict) -> str | None:
    """What recomposing ``params.yaml`` changes, when it held another model or other settings; else None."""
    from pipeline.core.composition import read_params

    old = read_params() if PARAMS_FILE.is_file() else {}
    changed = sorted(k for k in set(old) | set(data) if old.get(k) != data.get(k))
    if not old or not changed:
        return None
    before, after = (old.get("model") or {}).get("name"), data["model"]["name"]
    switch = f"model {before} -> {after}; " if before != after else ""
    return f"params.yaml was composed otherwise ({switch}sections {', '.join(changed)} change): recomposing it"


def cmd_convert(argv: list[str]) -> None:
    """Convert a preset or checkpoint folder to the --to targets, each validated (`aipc convert tiny --to openvino-int8`).

    Args:
        argv: MODEL (a preset from `aipc presets`, or a checkpoint folder), --to FAMILY-VARIANT (repeatable), then
            any Hydra overrides; `aipc convert --help` says more.
    """
    from pipeline.cli import project

    args = convert_parser().parse_intermixed_args(argv)  # overrides before or after --to
    if any(project.override_key(o) == "model" for o in args.overrides):
        fail("the model is convert's first argument, not an override: `aipc convert MODEL --to ...`")
    overrides = [*model_overrides(args.model), *args.overrides]
    data = compose(overrides)
    recipe = local_recipe(overrides, data)  # model=local with Phi-4-mini's architecture: that preset's recipe
    data = compose([*overrides, *recipe[0]]) if recipe else data
    targets = pick_targets(args.to, data)
    stages = [f"{family.validate_stage}@{variant}" for _, family, variant in targets]
    print(f"aipc convert: {model_words(data, overrides)} -> {', '.join(n for n, _, _ in targets)}", flush=True)
    replaced = replaced_line(data)
    if replaced:
        print(replaced)
    project.cmd_compose(overrides)  # the same composition (its recipe line too), under DVC's lock
    print(f"dvc repro {' '.join(stages)}", flush=True)  # after compose's lines: DVC writes to the same stdout
    project.refresh_local_model(stages)
    from pipeline.core.cache_links import guarded_repro

    code = guarded_repro(lambda a: project.run_dvc(a, module="pipeline.cli.dvc_main"), stages)
    print_verdicts(targets, code)


def print_verdicts(targets: list[tuple[str, Family, str]], code: int) -> None:
    """The targets' rows, recommendations and folders; fail in one line when one failed or DVC did."""
    from pipeline.validation import report, summary

    metrics = [(name, f"{family.validate_stage}@{variant}") for name, family, variant in targets]
    rows = report.collect_rows(metrics, report.METRICS_DIR)
    profiles = sorted({str(r.data["profile"]) for r in rows if r.data.get("profile")})  # as aipc demo's summary
    print(report.counts_text(report.summary(rows)) + (f"; profile {', '.join(profiles)}" if profiles else ""))
    print("\n".join(summary.artifact_lines(rows)))
    devices = [d for d in summary.DEVICES if any(r.cell == d for r in rows)]
    for device, answer in summary.recommend(rows, devices).items():
        print(f"Run on {device}: {answer}")
    for name, family, variant in targets:
        folder = (family.artifact_root / variant).as_posix()
        print(f"{name}: {folder} (every cell: {(report.METRICS_DIR / f'{name}.json').as_posix()})")
    line = failure_line(rows, code)
    if line:
        fail(line)


def failure_line(rows: list, code: int) -> str | None:
    """One line naming every failed cell, refused export and target without metrics; ``None`` when all is well."""
    from pipeline.validation import report

    said = [f"{r.artifact} @ {r.cell} ({report.first_problem(r)})" for r in rows if r.status == "failed"]
    said += [
        f"{r.artifact} refused at export ({r.data.get('reason') or 'refused'})" for r in rows if r.status == "refused"
    ]
    said += [f"{r.artifact} has no metrics" for r in rows if r.status == "missing"]
    dvc = f"dvc repro failed (exit {code}); the lines above say which stage and why" if code else ""
    if said:
        return f"{len(said)} problem(s): {'; '.join(said)}" + (f"; {dvc}" if dvc else "")
    return dvc or None
