"""`aipc presets` and `aipc --version` (issue 31 item 5): what can be composed, read from conf/, and what is installed."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.config import compose
from pipeline.core.registry import FAMILIES

from conftest import ROOT, run_cmd


def test_presets_lists_every_model_family_variant_and_group(tmp_path: Path) -> None:
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "presets"], tmp_path)
    lines = done.stdout.splitlines()
    for model in (ROOT / "conf" / "model").glob("*.yaml"):
        assert any(line.split()[:1] == [model.stem] for line in lines), model.stem
    assert any(line.split()[:2] == ["phi3-mini-4k", "microsoft/Phi-3-mini-4k-instruct"] for line in lines)
    composed = compose([])  # a family's variants: its default.yaml's keys and those its `defaults` list composes
    for name in FAMILIES:
        variants = composed[name]
        line = next(line for line in lines if line.split()[:1] == [name])
        assert line.endswith(", ".join(variants)), line
    assert any(line.startswith("sweep (aipc compose sweep=NAME): ") and "data_aware" in line for line in lines)


def test_version_is_the_installed_distributions() -> None:
    from importlib import metadata

    done = run_cmd([sys.executable, "-m", "pipeline.cli", "--version"], ROOT)
    assert done.stdout.strip() == f"aipc {metadata.version('aipc-pipeline')}"
