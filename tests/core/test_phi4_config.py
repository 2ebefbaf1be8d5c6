"""Phi-4-mini presets: both compose, their variants are valid on every target, an asymmetric NPU request is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, PipelineConfig, build, compose
from pipeline.winml.config import WinmlVariantConfig

PHI4_PRESETS = ["phi4-mini-instruct", "phi4-mini-reasoning"]


def optimum_phi4_mini_int4() -> dict:
    """optimum-intel's own tuned int4 config for Phi-4-mini-instruct, read from the installed package."""
    from optimum.intel.openvino.configuration import _DEFAULT_4BIT_WQ_CONFIGS

    return _DEFAULT_4BIT_WQ_CONFIGS["microsoft/Phi-4-mini-instruct"]


@pytest.mark.parametrize("preset", PHI4_PRESETS)
def test_phi4_preset_pins_a_revision_and_picks_optimum_intels_int4_for_cpu_gpu(preset: str) -> None:
    cfg = build(PipelineConfig, compose([f"model={preset}"]))
    assert cfg.model.repo_id.startswith("microsoft/Phi-4-mini-") and len(cfg.model.revision) == 40
    int4, upstream = cfg.openvino["int4"], optimum_phi4_mini_int4()
    assert (int4.group_size, int4.ratio, int4.sym) == (upstream["group_size"], upstream["ratio"], upstream["sym"])
    assert (cfg.openvino["int8"].weight_format, cfg.openvino["fp16"].weight_format) == ("int8", "fp16")


@pytest.mark.parametrize("preset", PHI4_PRESETS)
def test_phi4_npu_variants_are_symmetric_int4_and_winml_npu_wraps_them(preset: str) -> None:
    cfg = build(PipelineConfig, compose([f"model={preset}"]))
    for npu in cfg.npu.values():
        assert (npu.sym, npu.ratio) == (True, 1.0) and npu.group_size in (128, -1)
        assert npu.as_openvino().sym
    npu_packages = [w for w in cfg.winml.values() if w.device_type == "NPU"]
    assert npu_packages and all(w.source == "npu" and w.source_variant in cfg.npu for w in npu_packages)


@pytest.mark.parametrize("preset", PHI4_PRESETS)
def test_optimum_intels_asymmetric_phi4_config_is_refused_for_the_npu(preset: str) -> None:
    """optimum-intel's Phi-4-mini int4 (asym, group 64) asked of the NPU stops at load time in one line."""
    upstream = optimum_phi4_mini_int4()
    overrides = [f"npu.int4.sym={str(upstream['sym']).lower()}", f"npu.int4.group_size={upstream['group_size']}"]
    with pytest.raises(ConfigError) as exc:
        compose([f"model={preset}", *overrides])
    message = str(exc.value)
    assert "\n" not in message and "the NPU needs int4 symmetric weights" in message and "sym=False" in message
    with pytest.raises(ConfigError, match=r"^npu.int4: the NPU needs int4 symmetric weights.*got sym=False"):
        compose([f"model={preset}", "npu.int4.sym=false"])


def test_a_winml_npu_package_cannot_wrap_the_asymmetric_cpu_gpu_ir() -> None:
    with pytest.raises(ConfigError, match="device_type NPU needs the NPU-ready IR"):
        WinmlVariantConfig.from_conf(source="openvino", source_variant="int4", device_type="NPU")


def test_phi3_presets_keep_the_original_int4_recipe() -> None:
    """Only the Phi-4 presets pick conf/openvino/phi4-mini.yaml; openvino=default gives the Phi-3 recipe back."""
    phi3 = build(PipelineConfig, compose(["model=phi3-mini-4k"])).openvino["int4"]
    back = build(PipelineConfig, compose(["model=phi4-mini-instruct", "openvino=default"])).openvino["int4"]
    assert (phi3.group_size, phi3.ratio, phi3.sym) == (back.group_size, back.ratio, back.sym) == (128, 0.6, True)


def test_check_config_composes_both_phi4_presets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a folder of its own: the checkout's params.yaml is whatever the user last composed (`aipc demo`: tiny)."""
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    main(["compose", "model=phi4-mini-instruct"])
    main(["check-config", "model=phi4-mini-instruct"])
    out = capsys.readouterr().out
    assert all(f"ok: model={p}\n" in out for p in PHI4_PRESETS)
    assert "ok: params.yaml matches conf/ (overrides: model=phi4-mini-instruct)" in out


def test_a_local_phi4_checkpoint_gets_the_group_choices_every_phi4_preset_makes() -> None:
    """The local recipe is read from the preset's ``defaults`` (no module outside a family names it): the same for
    every Phi-4-mini preset, and each choice is an option of its family's conf group."""
    import yaml

    from pipeline.core.composition import phi4_groups
    from pipeline.core.config import CONF_DIR

    groups = phi4_groups()
    assert groups and all((CONF_DIR / g.split("=")[0] / f"{g.split('=')[1]}.yaml").is_file() for g in groups)
    for preset in PHI4_PRESETS:
        defaults = yaml.safe_load((CONF_DIR / "model" / f"{preset}.yaml").read_text(encoding="utf-8"))["defaults"]
        pairs = [(k, v) for d in defaults if isinstance(d, dict) for k, v in d.items() if k.startswith("override /")]
        chosen = [f"{k.split('/', 1)[1].split('@')[0]}={v}" for k, v in pairs]
        assert chosen == groups, preset
