"""conf/ is the one source of default values (issue 31 item 4): no config class field has a default of its own, every
section builds from its YAML, and a variant a user adds gets the YAML's values or one line naming what is missing."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import CONF_DIR, ConfigError, ModelConfig, build, compose, pipeline_config_class
from pipeline.core.registry import FAMILIES

PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def sections(cls: type) -> set[type]:
    """Every config dataclass reachable from ``cls``'s fields (nested sections, dict and list values)."""
    found: set[type] = set()
    todo: list[typing.Any] = [typing.get_type_hints(cls, include_extras=True)[f.name] for f in dataclasses.fields(cls)]
    while todo:
        tp = todo.pop()
        if dataclasses.is_dataclass(tp) and isinstance(tp, type) and tp not in found:
            found.add(tp)
            todo += [typing.get_type_hints(tp, include_extras=True)[f.name] for f in dataclasses.fields(tp)]
        todo += list(typing.get_args(tp))
    return found


def base_yaml(family: str) -> dict:
    return yaml.safe_load((CONF_DIR / family / "variant" / "base.yaml").read_text(encoding="utf-8"))


def test_no_config_class_field_has_a_default_that_competes_with_conf() -> None:
    """A default in a class would be a second source beside conf/ (they disagreed: ratio 1.0 against 0.6)."""
    found = sections(pipeline_config_class())
    assert {f.variant_config() for f in FAMILIES.values()} <= found  # the walk reaches every family's variants
    assert {"ModelConfig", "ValidateConfig", "LongContextConfig", "SweepConfig"} <= {c.__name__ for c in found}
    with_defaults = [
        f"{cls.__name__}.{f.name}"
        for cls in found
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert not with_defaults, f"defaults belong in conf/ (the class's _conf file), not the class: {with_defaults}"


def test_every_section_builds_from_the_conf_file_it_names() -> None:
    """``from_conf()`` reads the file each class names, so the YAML holds a value for every field (no default)."""
    for cls in sections(pipeline_config_class()):
        if cls.__name__ in ("ChatMessage", "ModelConfig"):  # no defaults at all; name and source are each preset's
            continue
        data = yaml.safe_load((CONF_DIR / cls._conf).read_text(encoding="utf-8"))
        for key in cls._home.split(".")[1:]:
            data = data[key]
        assert cls.from_conf() == build(cls, {k: v for k, v in data.items() if k != "defaults"}), cls.__name__
    with pytest.raises(ConfigError, match=r"^missing config key 'model.name': its default is in conf/model/preset/"):
        ModelConfig.from_conf()


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_helper_is_what_hydra_composes(preset: str) -> None:
    extra = {"local_path": "/models/mine"} if preset == "local" else {}
    overrides = [f"model={preset}"] + ["model.local_path=/models/mine"] * bool(extra)
    assert ModelConfig.preset(preset, **extra) == build(ModelConfig, compose(overrides)["model"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_user_variant_started_from_the_base_gets_every_value_of_the_yaml(family: str) -> None:
    composed = compose([f"+{family}/variant@{family}.mine=base"])
    assert composed[family]["mine"] == base_yaml(family)
    cls = FAMILIES[family].variant_config()
    assert build(cls, composed[family]["mine"]) == cls.from_conf()


def test_a_partial_user_variant_keeps_the_yaml_value_of_every_key_it_leaves_out() -> None:
    partial = "{weight_format: int4, group_size: 64}"
    mine = compose(["+openvino/variant@openvino.int4g64=base", f"+openvino.int4g64={partial}"])["openvino"]["int4g64"]
    assert mine == {**base_yaml("openvino"), "group_size": 64}


def test_a_partial_user_variant_without_its_base_is_one_line_naming_the_key_and_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        compose(["+openvino.int4g64={weight_format: int4, group_size: 64}"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "missing config key 'openvino.int4g64.ratio': start the variant from "
        "conf/openvino/variant/base.yaml, which sets every key: "
        "add +openvino/variant@openvino.int4g64=base first"
    )


def test_dvc_composes_a_user_variant_from_its_base_as_aipc_does(tmp_path: Path) -> None:
    """``dvc exp run -S`` composes with DVC's own Hydra call; the base reaches params.yaml the same way."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import compose_and_dump

    args = ["+npu/variant@npu.int4cw=base", "npu.int4cw.group_size=-1"]
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF_DIR), None, "config", str(tmp_path), to_path_overrides(args)["params.yaml"])
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["npu"] == compose(args)["npu"]
    assert compose(args)["npu"]["int4cw"] == {**base_yaml("npu"), "group_size": -1}
