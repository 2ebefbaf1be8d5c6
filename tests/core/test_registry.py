"""The family registry (pipeline/core/registry.py), conf/ groups and dvc.yaml agree with each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import ConfigError
from pipeline.core.registry import FAMILIES, SHARED_STAGES, entry
from pipeline.core.stage import parse_variant

ROOT = Path(__file__).resolve().parents[2]


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def test_every_family_has_its_conf_group_and_stages() -> None:
    """A conf group per family, and its export and validate stages run the registry's modules over that group."""
    stages = dvc_stages()
    for family in FAMILIES.values():
        assert (ROOT / "conf" / family.name / "default.yaml").is_file(), f"no conf group for {family.name}"
        for which, stage in (("export", family.export_stage), ("validate", family.validate_stage)):
            assert stage in stages, f"dvc.yaml has no {stage} stage for family {family.name}"
            assert stages[stage]["foreach"] == f"${{{family.name}}}", f"{stage} does not iterate over {family.name}"
            assert stages[stage]["do"]["cmd"] == family.cmd(which)
            module_file = family.module(which).replace(".", "/") + ".py"
            assert module_file in stages[stage]["do"]["deps"], f"{stage} does not list its own module {module_file}"
            assert callable(entry(family.name, which))
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages[family.export_stage]["do"]["outs"]]
        assert outs == [f"{family.artifact_root.as_posix()}/${{key}}"]
        metrics = [next(iter(m)) for m in stages[family.validate_stage]["do"]["metrics"]]
        assert metrics == [f"artifacts/metrics/{family.metrics_prefix}-${{key}}.json"]


def test_dvc_yaml_has_no_stage_outside_the_registry() -> None:
    """Every stage of dvc.yaml is a family's export/validate stage or one of the shared stages."""
    known = set(SHARED_STAGES) | {s for f in FAMILIES.values() for s in (f.export_stage, f.validate_stage)}
    assert set(dvc_stages()) == known


def test_every_stage_module_in_dvc_yaml_exists() -> None:
    """Each ``python -m`` module of dvc.yaml is a file listed in that stage's deps."""
    for name, stage in dvc_stages().items():
        body = stage.get("do", stage)
        module = body["cmd"].split()[2]
        path = module.replace(".", "/") + ".py"
        assert (ROOT / path).is_file(), f"{name}: {path} missing"
        assert path in body["deps"], f"{name}: {path} not in its deps"


def test_stage_command_line_checks_the_variant_and_picks_the_flagged_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m pipeline.openvino.validate --npu int4`` is the NPU family; an unknown variant is one line."""
    monkeypatch.chdir(ROOT)  # params.yaml
    family, name, _ = parse_variant(["--npu", "int4"], "validate", "openvino", alternative="npu")
    assert (family.name, name) == ("npu", "int4")
    with pytest.raises(ConfigError, match=r"^unknown ONNX variant 'nope': configured ones are "):
        parse_variant(["nope"], "export", "onnx")


def test_every_family_declares_its_variant_config_and_the_core_names_none() -> None:
    """Each registry line names its variant config (``module:Class`` in the family's subpackage); the composed params
    hold one typed section per family, and core/config.py names no family's config (a new family never edits it)."""
    from pipeline.core.config import PipelineConfig, build, compose

    params = build(PipelineConfig, compose(["model=tiny"]))
    tree = ast.parse((ROOT / "pipeline" / "core" / "config.py").read_text(encoding="utf-8"))
    core = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
    }
    for family in FAMILIES.values():
        cls = family.variant_config()
        assert cls.__module__ == family.module("export").rsplit(".", 1)[0] + ".config", family.config
        variants = getattr(params, family.name)
        assert variants and all(isinstance(v, cls) for v in variants.values()), family.name
        assert cls.__name__ not in core, f"core/config.py uses {cls.__name__}"


def test_every_entry_point_takes_name_config_and_one_workspace() -> None:
    """One interface: ``run(name, cfg, ws=PROJECT, *, <family's own keywords>)`` for every export and validate."""
    import inspect

    from pipeline.core.workspace import PROJECT, Workspace

    for family in FAMILIES.values():
        for which in ("export", "validate"):
            params = list(inspect.signature(entry(family.name, which)).parameters.values())
            assert [p.name for p in params[:3]] == ["name", "cfg", "ws"], (family.name, which, params)
            assert params[2].default is PROJECT and params[2].annotation in (Workspace, "Workspace")
            rest = [p for p in params[3:] if p.kind is not inspect.Parameter.VAR_KEYWORD]
            assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest), (family.name, which, rest)
