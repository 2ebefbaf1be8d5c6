"""Configuration: composition of every preset, staleness of params.yaml, load-time errors."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import CONF_DIR, ConfigError, PipelineConfig, ValidateConfig, build, compose, load_params
from pipeline.openvino.config import OpenVinoVariantConfig
from pipeline.openvino.export import check_group_size

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_preset_composes_and_type_checks(preset: str) -> None:
    extra = ["model.local_path=/somewhere"] if preset == "local" else []
    data = compose([f"model={preset}", *extra])
    cfg = build(PipelineConfig, data)
    assert cfg.openvino["int4"].weight_format == "int4"
    if cfg.model.source == "hub":
        assert len(cfg.model.revision) == 40, "hub presets pin a full commit sha"
        assert not any(p.endswith((".bin", ".pt")) for p in cfg.model.allow_patterns)


def test_default_model_is_phi3_mini_4k_with_original_int4_recipe() -> None:
    cfg = build(PipelineConfig, compose([]))
    assert cfg.model.repo_id == "microsoft/Phi-3-mini-4k-instruct"
    int4 = cfg.openvino["int4"]
    assert (int4.group_size, int4.ratio, int4.sym) == (128, 0.6, True)


def committed_params_yaml() -> str | None:
    """``params.yaml`` as it would be committed: git's index (HEAD in a clean clone); None outside a git checkout."""
    done = subprocess.run(["git", "show", ":params.yaml"], cwd=ROOT, capture_output=True, encoding="utf-8")
    return done.stdout if done.returncode == 0 else None


def test_committed_params_yaml_is_not_stale() -> None:
    """What a fresh clone gets matches conf/. The working tree's file is the user's: `aipc demo` recomposes it."""
    expected, working = compose([]), yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    if working == expected:  # conf/ and params.yaml recomposed together, maybe not staged yet
        return
    committed = committed_params_yaml()
    assert committed is not None, "params.yaml is stale (and this is no git checkout): run `aipc compose`"
    assert yaml.safe_load(committed) == expected, "the params.yaml git would commit is stale: `aipc compose`, add it"


def test_check_config_command_detects_stale_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    main(["compose"])
    main(["check-config"])
    text = (tmp_path / "params.yaml").read_text(encoding="utf-8").replace("ratio: 0.6", "ratio: 0.8")
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["check-config"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "params.yaml is stale" in err[0] and "openvino" in err[0]


@pytest.mark.parametrize("override, message", [
    ("openvino.int4.ratio=1.5", "ratio must be in (0, 1]"),
    ("openvino.int4.group_size=0", "group_size must be positive"),
    ("openvino.int4.weight_format=int3", "weight_format must be one of"),
    ("openvino.int4.awq=true", "need data"),
    ("openvino.int4.sym=maybe", "must be true or false"),
    ("validate.repeats=0", "validate.repeats must be positive"),
    ("openvino.int4.group_size='64'", "openvino.int4.group_size must be an integer, got '64'"),
    ("openvino.int4.group_size=true", "openvino.int4.group_size must be an integer, got True"),
    ("+validate.max_mean_kl.int3=1", "validate.max_mean_kl key must be one of int4, int8, fp16; got 'int3'"),
    ("validate.emulate_numerics=[f8]", "validate.emulate_numerics[0] must be one of bf16, f16; got 'f8'"),
    ("model=local", "model.local_path is required for source=local: pass model.local_path="),
])
def test_bad_values_fail_at_load_time_with_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        compose([override])
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_key_in_params_yaml_is_rejected(tmp_path: Path) -> None:
    data = compose([])
    data["openvino"]["int4"]["grup_size"] = 64
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown config key 'openvino.int4.grup_size'"):
        load_params(path)


def test_local_preset_without_local_path_fails_in_params_yaml_too(tmp_path: Path) -> None:
    data = compose(["model=local", "model.local_path=/somewhere"])
    data["model"]["local_path"] = "???"  # what a composition that left it unset writes
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^model.local_path is required for source=local"):
        load_params(path)


def test_constructing_a_section_directly_checks_it_too() -> None:
    with pytest.raises(ConfigError, match=r"^ratio must be in \(0, 1\], got 1.5"):
        OpenVinoVariantConfig.from_conf(ratio=1.5)
    with pytest.raises(ConfigError, match=r"^validate.repeats must be positive, got 0$"):
        ValidateConfig.from_conf(prompts=["hi"], repeats=0)
    assert dataclasses.asdict(OpenVinoVariantConfig.from_conf(ratio=1))["ratio"] == 1.0


def test_missing_params_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="aipc compose"):
        load_params(tmp_path / "params.yaml")


def test_group_size_that_does_not_divide_hidden_size_is_rejected() -> None:
    cfg = OpenVinoVariantConfig.from_conf(weight_format="int4", group_size=100, ratio=1.0)
    with pytest.raises(ConfigError, match="group_size 100 does not divide hidden_size 256"):
        check_group_size(cfg, {"hidden_size": 256, "intermediate_size": 512})
    check_group_size(OpenVinoVariantConfig.from_conf(group_size=128), {"hidden_size": 256, "intermediate_size": 512})
    check_group_size(OpenVinoVariantConfig.from_conf(group_size=100, group_size_fallback="adjust"),
                     {"hidden_size": 256, "intermediate_size": 512})


def test_validate_config_requires_prompts() -> None:
    with pytest.raises(ConfigError, match="at least one prompt"):
        ValidateConfig.from_conf(prompts=[])
