"""docs/configuration.md's reference is generated from conf/ (issue 31 item 5) and must not drift from it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.cli import conf_docs
from pipeline.core.config import CONF_DIR
from pipeline.core.errors import StageError

from conftest import ROOT, run_cmd


def test_committed_docs_are_what_the_generator_writes() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == conf_docs.expected(), "docs/configuration.md is stale: run `aipc conf-docs --write`"


def test_the_reference_has_every_conf_group_and_every_key_of_each_file() -> None:
    text = conf_docs.render()
    groups = sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir())
    assert sorted(line.removeprefix("### ") for line in text.splitlines() if line.startswith("### ")) == groups
    for path in CONF_DIR.rglob("*.yaml"):
        if path.parent == CONF_DIR:  # config.yaml: the groups themselves
            continue
        for key, _ in conf_docs.commented_keys(path.read_text(encoding="utf-8")):
            assert f"| `{key}` |" in text or any(
                k.startswith(f"{key}.") for k, _ in conf_docs.commented_keys(path.read_text(encoding="utf-8"))
            ), f"{path.relative_to(CONF_DIR)}: {key}"


def test_a_key_its_default_and_its_comment_are_one_row() -> None:
    rows = conf_docs.table(CONF_DIR / "openvino" / "variant" / "base.yaml")
    assert "| `group_size` | `128` | weights sharing one scale; -1 = per channel |" in rows
    continued = conf_docs.table(CONF_DIR / "validate" / "default.yaml")  # a comment carried on to the next line
    row = next(r for r in continued if r.startswith("| `stand_in_speed` |"))
    assert row.endswith("(NPU library at full size: 0.15 tok/s, 8-10 of its 22 minutes) |"), row


def test_check_fails_in_one_line_when_the_docs_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text(conf_docs.expected().replace("| `ratio` | `1.0` |", "| `ratio` | `0.6` |"), encoding="utf-8")
    monkeypatch.setattr(conf_docs, "DOC", doc)
    monkeypatch.setattr(conf_docs, "PROJECT_ROOT", tmp_path)
    with pytest.raises(StageError, match=r"^docs/configuration.md differs from conf/: run `aipc conf-docs --write`$"):
        conf_docs.main(["--check"])
    conf_docs.main(["--write"])
    assert doc.read_text(encoding="utf-8") == conf_docs.expected(doc)
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "conf-docs", "--check"], ROOT)
    assert done.stdout.strip() == "ok: docs/configuration.md matches conf/"
