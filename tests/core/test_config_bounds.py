"""Issue 35.9: every numeric config value has a sane bound, so an absurd one is refused at compose time in one line."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import CONF_DIR, ConfigError, build, compose, pipeline_config_class

ABSURD = 10**11


def numeric_leaves(data: Any, path: tuple = ()) -> Iterator[tuple]:
    """The path of every int or float (not bool) in a composed configuration; list entries by index."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from numeric_leaves(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from numeric_leaves(value, (*path, i))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield path


def with_value(data: dict, path: tuple, value: Any) -> dict:
    changed = copy.deepcopy(data)
    target = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return changed


@pytest.mark.parametrize("preset", ["tiny", "phi3-mini-4k", "phi4-mini-instruct"])
def test_every_numeric_value_of_every_section_refuses_an_absurd_one(preset: str) -> None:
    data = compose([f"model={preset}"])
    leaves = [p for p in numeric_leaves(data) if p[0] != "sweep" or p[1] != "grid"]  # a grid point composes alone
    assert len(leaves) > 30, leaves
    accepted = []
    for path in leaves:
        for value in (ABSURD, float("inf")):
            try:
                build(pipeline_config_class(), with_value(data, path, value))
            except ConfigError as err:
                assert "\n" not in str(err) and str(path[-1]) in str(err), (path, str(err))
            else:
                accepted.append((".".join(map(str, path)), value))
    assert accepted == [], f"accepted absurd values: {accepted}"


@pytest.mark.parametrize(("override", "line"), [
    ("validate.max_new_tokens=100000000000", "validate.max_new_tokens must be at most 131072 tokens, got 100000000000"),
    ("validate.repeats=100000", "validate.repeats must be at most 100, got 100000"),
    ("openvino.int4.group_size=1000000", "openvino.int4.group_size must be at most 16384, got 1000000"),
    ("npu.int4.max_prompt_len=10000000", "npu.int4.max_prompt_len must be at most 131072 tokens, got 10000000"),
    ("validate.long_context.lengths=[3000,99999999]", "validate.long_context.lengths must hold token counts in (1, "
                                                      "131072], got [3000, 99999999]"),
])
def test_aipc_compose_refuses_an_absurd_value_in_one_line_and_writes_nothing(override: str, line: str,
                                                                             tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny", override], cwd=tmp_path,
                          capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"error: {line}"], done.stderr[-2000:]
    assert not (tmp_path / "params.yaml").exists()


def test_the_committed_values_stay_inside_their_bounds() -> None:
    presets = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "local")
    assert len(presets) >= 8
    for preset in presets:
        compose([f"model={preset}", "validate.profile=full"])  # raises on a default outside its own bound
