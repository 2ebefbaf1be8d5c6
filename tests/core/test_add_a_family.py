"""The add-a-family checklist of docs/architecture.md, followed for a throwaway ``toy`` family, nothing under
pipeline/core/ edited.

In a temporary project: a ``pipeline/toy/`` subpackage (config, export, validate modules, written by this test; the
temporary ``pipeline/`` joins the package's ``__path__``), a conf group (``conf/toy/default.yaml`` and
``conf/toy/variant/base.yaml``, added to ``conf/config.yaml``'s defaults), one :class:`Family` entry (monkeypatched
into ``FAMILIES``) and a ``dvc.yaml`` stage pair. Then: the params compose with a typed ``toy`` section;
``aipc export toy one`` and ``aipc validate toy one`` run it (the validation verifies the artifact first, as every
stage does); the report gives it a row; ``aipc stages``' closures give its stages their code deps and add its config
module to every stage's (the registry imports it). No DVC run, no model.

What the tools read beyond the stages comes from the family's own package through its registry line too: here its
RAM row (``ram=``), its ``aipc plan`` rows (``plan=``), its target devices (``devices=``) and its model card
(``card=``), none edited into pipeline/core/. Known gaps: ``pipeline/core/verify.py``'s ``STAGES`` and
``pipeline/cli``'s ``COMMANDS`` are read from the registry at import, so a family patched in later (as here) gets no
``dvc.lock`` check, repair hint or commands of its own; a real registry line has them.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import pipeline
from pipeline.cli import families as verbs
from pipeline.cli import main
from pipeline.core import stage_deps
from pipeline.core.config import compose, dump_yaml, load_params, pipeline_config_class
from pipeline.core.registry import FAMILIES, Family
from pipeline.validation.report import collect_rows, configured_artifacts, markdown_table

ROOT = Path(__file__).resolve().parents[2]
TOY = Family(
    "toy",
    "Toy",
    "toy artifact",
    "export_toy",
    "pipeline.toy.export:run",
    "validate_toy",
    "pipeline.toy.validate:run",
    "pipeline.toy.config:ToyVariantConfig",
    publishable=False,
    devices=("CPU",),
    card="pipeline.toy.extras:CARD",
    plan="pipeline.toy.extras:PLAN",
    ram="pipeline.toy.extras:STAGE_RAM",
)
MODULES = {
    "__init__.py": '"""A throwaway family (tests/core/test_add_a_family.py)."""\n',
    "config.py": '''
        """Variant config of the ``toy`` family (``toy.<v>``)."""

        from __future__ import annotations

        from pipeline.core.typed import ConfigError, FromConf, _typed


        @_typed(conf="toy/variant/base.yaml")
        class ToyVariantConfig(FromConf):
            """One toy artifact: a file of ``size`` bytes."""

            size: int

            def __post_init__(self) -> None:
                if self.size < 1:
                    raise ConfigError(f"toy size must be positive, got {self.size}")
        ''',
    "export.py": '''
        """Stage ``export_toy@<variant>``: a file of ``size`` bytes and its manifest."""

        from __future__ import annotations

        from pipeline.core.artifacts import staged_dir
        from pipeline.core.errors import run_main
        from pipeline.core.manifest import write_manifest
        from pipeline.core.stage import run_stage
        from pipeline.core.workspace import PROJECT, Workspace
        from pipeline.toy.config import ToyVariantConfig


        def run(name: str, cfg: ToyVariantConfig, ws: Workspace = PROJECT) -> dict:
            """Write ``artifacts/toy/<name>``."""
            with staged_dir(ws.root("toy") / name) as out:
                (out / "weights.bin").write_bytes(b"t" * cfg.size)
                return write_manifest(out, stage="export_toy", variant=name, format="toy")


        if __name__ == "__main__":
            run_main(lambda: run_stage("toy", "export"))
        ''',
    "validate.py": '''
        """Stage ``validate_toy@<variant>``: one passed CPU cell."""

        from __future__ import annotations

        from pipeline.core.artifacts import write_json_atomic
        from pipeline.core.config import ValidateConfig
        from pipeline.core.errors import run_main
        from pipeline.core.manifest import read_manifest
        from pipeline.core.stage import run_stage
        from pipeline.core.workspace import PROJECT, Workspace


        def run(name: str, cfg: ValidateConfig, ws: Workspace = PROJECT) -> dict:
            """Write ``artifacts/metrics/toy-<name>.json``."""
            size = read_manifest(ws.root("toy") / name)["size_bytes"]
            cell = {"status": "passed", "device_executed": "CPU", "top1_agreement": 1.0, "mean_kl": 0.0}
            metrics = {"artifact": f"toy-{name}", "size_mb": size / 1e6, "cells": {"CPU": cell}}
            write_json_atomic(ws.metrics_dir / f"toy-{name}.json", metrics)
            return metrics


        if __name__ == "__main__":
            run_main(lambda: run_stage("toy", "validate"))
        ''',
}
MODULES["extras.py"] = '''
    """What the tools read about toy artifacts: the RAM row, the plan rows, the card."""

    from __future__ import annotations

    from pipeline.core.cards import CardFormat
    from pipeline.core.resources import FamilyPlan

    STAGE_RAM = {"validate_toy": {"one": (1.5, 0.25)}}


    def rows(section, ctx):
        return [(f"validate_toy@{v}", ctx.ram("validate_toy", v, ctx.folder("toy", v, v)), False) for v in section]


    PLAN = FamilyPlan({"one": 0.5}, rows)
    CARD = CardFormat("toy-lib", ("toy",), "toy artifact", "the toy file", lambda p: ["cpu"], lambda m, pin: ("pip", pin))
    '''
CONF = {
    "toy/default.yaml": "# Toy artifacts (tests/core/test_add_a_family.py).\ndefaults:\n  - variant@one: base\n  - _self_\n",
    "toy/variant/base.yaml": "# Every key of a toy variant and its default.\nsize: 16\n",
}


def stage_pair(family: Family) -> str:
    """The family's dvc.yaml stages, as docs/architecture.md's checklist writes them (code deps left to --write)."""
    root, metrics = family.artifact_root.as_posix(), f"artifacts/metrics/{family.metrics_prefix}-${{key}}.json"
    return textwrap.dedent(f"""
      {family.export_stage}:
        foreach: ${{{family.name}}}
        do:
          cmd: {family.cmd("export")}
          deps:
            - {family.module("export").replace(".", "/")}.py
          params:
            - {family.name}.${{key}}
          outs:
            - {root}/${{key}}
      {family.validate_stage}:
        foreach: ${{{family.name}}}
        do:
          cmd: {family.cmd("validate")}
          deps:
            - {family.module("validate").replace(".", "/")}.py
            - {root}/${{key}}
            - artifacts/reference
          metrics:
            - {metrics}:
                cache: false
    """).replace("\n", "\n  ")


@pytest.fixture
def toy_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project with the toy family added by the checklist's steps, the working directory."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "pipeline", project / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copytree(ROOT / "conf", project / "conf")
    for name, text in MODULES.items():
        (project / "pipeline" / "toy").mkdir(exist_ok=True)
        (project / "pipeline" / "toy" / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    for name, text in CONF.items():
        (project / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (project / "conf" / name).write_text(text, encoding="utf-8")
    config = project / "conf" / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("  - model:", "  - toy: default\n  - model:"), "utf-8")
    (project / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(pipeline, "__path__", [*pipeline.__path__, str(project / "pipeline")])
    monkeypatch.setitem(FAMILIES, TOY.name, TOY)
    pipeline_config_class.cache_clear()  # the params' class has one section per family
    monkeypatch.chdir(project)
    (project / "params.yaml").write_text(dump_yaml(compose(["model=tiny", "+validate.devices.toy=[CPU]"], conf_dir=project / "conf")), "utf-8")
    reference = project / "artifacts" / "reference"
    reference.mkdir(parents=True)
    (reference / "reference.json").write_text("{}", encoding="utf-8")
    from pipeline.core.manifest import write_manifest

    write_manifest(reference, stage="reference")
    yield project
    pipeline_config_class.cache_clear()
    for name in [m for m in sys.modules if m == "pipeline.toy" or m.startswith("pipeline.toy.")]:
        del sys.modules[name]


def test_the_conf_group_composes_into_a_typed_section(toy_project: Path) -> None:
    params = load_params()
    config = TOY.variant_config()
    assert list(params.toy) == ["one"] and isinstance(params.toy["one"], config) and params.toy["one"].size == 16
    with pytest.raises(ValueError, match="toy size must be positive"):
        config(size=0)


def test_the_cli_verbs_run_its_stages(toy_project: Path, capsys: pytest.CaptureFixture) -> None:
    assert "toy artifact, stage export_toy@<variant>; variants: one" in verbs.verb_parser("export").format_help()
    main(["export", "toy", "one"])
    assert (toy_project / "artifacts" / "toy" / "one" / "weights.bin").read_bytes() == b"t" * 16
    main(["validate", "toy", "one"])
    metrics = yaml.safe_load((toy_project / "artifacts" / "metrics" / "toy-one.json").read_text(encoding="utf-8"))
    assert metrics["cells"]["CPU"]["status"] == "passed"
    capsys.readouterr()
    for argv in (["validate", "toy", "two"], ["validate", "toy", "one"]):
        if argv[-1] == "one":  # tampered after its export: refused before the family's code runs, as the stage does
            (toy_project / "artifacts" / "toy" / "one" / "weights.bin").write_bytes(b"u" * 16)
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1, err
        assert ("unknown Toy variant 'two': configured ones are one" if argv[-1] == "two" else "does not match") in err[0]


def test_the_report_gives_it_a_row(toy_project: Path) -> None:
    main(["export", "toy", "one"])
    main(["validate", "toy", "one"])
    artifacts = configured_artifacts(load_params())
    assert ("toy-one", "validate_toy@one") in artifacts
    rows = [r for r in collect_rows(artifacts, Path("artifacts/metrics")) if r.artifact == "toy-one"]
    assert [(r.cell, r.status) for r in rows] == [("CPU", "passed")]
    assert "toy-one" in markdown_table(rows)


def test_aipc_stages_writes_its_code_deps(toy_project: Path) -> None:
    text = (toy_project / "dvc.yaml").read_text(encoding="utf-8").replace("\n  report:", stage_pair(TOY) + "\n  report:")
    stages = yaml.safe_load(text)["stages"]
    for which, name in (("export", TOY.export_stage), ("validate", TOY.validate_stage)):
        assert stages[name]["foreach"] == "${toy}" and stages[name]["do"]["cmd"] == TOY.cmd(which)
    wanted, written = stage_deps.generate(toy_project, text)
    assert wanted["export_toy"][0] == "pipeline/toy/export.py" and "pipeline/core/stage.py" in wanted["export_toy"]
    assert wanted["validate_toy"][0] == "pipeline/toy/validate.py"
    # the registry imports every family's config when a stage builds its params: every stage depends on it now
    assert all("pipeline/toy/config.py" in deps for deps in wanted.values())
    after = yaml.safe_load(written)["stages"]
    assert after["validate_toy"]["do"]["deps"][-2:] == ["artifacts/toy/${key}", "artifacts/reference"]
    assert stage_deps.changes(after, wanted) == {}


def test_its_ram_row_plan_devices_and_card_come_from_its_package(toy_project: Path) -> None:
    from pipeline.cli.plan import plan_rows
    from pipeline.core.resources import ram_for
    from pipeline.hub.model_card import card_format

    assert ram_for("validate_toy", "one", 2**30, "linux") == int(1.5 * 2**30 + 0.25 * 2**30)
    params = load_params()
    rows = dict((stage, need) for stage, need, _ in plan_rows(params, "linux", 2**30))
    assert rows["validate_toy@one"] == int(1.5 * 2**29 + 0.25 * 2**30)  # its folder: half the checkpoint, planned
    assert params.validate.devices.get("toy") == ["CPU"]
    assert card_format("toy").library == "toy-lib"
