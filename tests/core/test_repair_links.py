"""Issue 35.3: trust nothing the cache hands back unchecked, under real ``dvc repro`` with hard-linked outputs.

One project copy on the tiny model runs ``dvc repro export_winml@cpu export_winml@gpu``: the int4 IR and the two
Windows ML packages that hold its ``openvino_model.bin`` byte for byte, so all three files and the DVC cache entry
are one inode. A byte flipped in any of them (mtime put back) is then repaired everywhere by ``aipc repair``, and
``aipc repro`` drops it instead of reporting the stages up to date. The tests run in file order on the project.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import pytest
from conftest import make_project, run_cmd
from test_reliability_verify import flip_one_byte

DVC = [sys.executable, "-m", "dvc"]
AIPC = [sys.executable, "-m", "pipeline.cli"]
OUTPUTS = {
    "export_openvino@int4": Path("artifacts/openvino/int4"),
    "export_winml@cpu": Path("artifacts/winml/cpu"),
    "export_winml@gpu": Path("artifacts/winml/gpu"),
}
BIN = "openvino_model.bin"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project whose int4 IR and both IR-wrapping Windows ML packages were built on model=tiny."""
    project = make_project(tmp_path_factory.mktemp("links") / "project")
    run_cmd(AIPC + ["compose", "model=tiny"], project)
    run_cmd(DVC + ["repro", "export_winml@cpu", "export_winml@gpu"], project)
    return project


def cache_entry(project: Path) -> Path:
    """The DVC cache file the three ``openvino_model.bin`` are hard links of."""
    ino = (project / OUTPUTS["export_openvino@int4"] / BIN).stat().st_ino
    return next(p for p in (project / ".dvc" / "cache").rglob("*") if p.is_file() and p.stat().st_ino == ino)


def assert_all_genuine(project: Path, genuine: bytes) -> None:
    """Every copy holds the genuine bytes, verifies, and the cache entry hashes to its name."""
    for folder in OUTPUTS.values():
        assert (project / folder / BIN).read_bytes() == genuine, folder
        run_cmd(AIPC + ["verify", str(folder)], project)
    entry = cache_entry(project)
    assert hashlib.md5(entry.read_bytes()).hexdigest() == entry.parent.name + entry.name


def test_the_three_files_are_one_cache_entry(project: Path) -> None:
    inodes = {(project / folder / BIN).stat().st_ino for folder in OUTPUTS.values()}
    assert len(inodes) == 1 and cache_entry(project).stat().st_nlink >= 4


def test_repair_of_the_ir_rebuilds_or_relinks_every_output_that_linked_the_flipped_bytes(project: Path) -> None:
    genuine = (project / OUTPUTS["export_openvino@int4"] / BIN).read_bytes()
    flip_one_byte(project / OUTPUTS["export_openvino@int4"] / BIN)
    assert (project / OUTPUTS["export_winml@gpu"] / BIN).read_bytes() != genuine, "the flip reached the packages"

    repaired = run_cmd(AIPC + ["repair", "export_openvino@int4"], project)
    said = repaired.stdout + repaired.stderr
    assert "dropped 1 tampered cache file(s)" in said and "export_winml@cpu, export_winml@gpu linked the same" in said
    for folder in OUTPUTS.values():
        assert f"repaired: {folder} matches" in repaired.stdout, folder
    assert_all_genuine(project, genuine)
    assert "up to date" in run_cmd(DVC + ["status", "export_winml@cpu", "export_winml@gpu"], project).stdout


def test_repair_of_a_package_rebuilds_the_ir_it_wraps_first(project: Path) -> None:
    genuine = (project / OUTPUTS["export_winml@gpu"] / BIN).read_bytes()
    flip_one_byte(project / OUTPUTS["export_winml@gpu"] / BIN, offset=8192)

    repaired = run_cmd(AIPC + ["repair", "export_winml@gpu"], project)
    assert "export_openvino@int4, export_winml@cpu linked the same" in repaired.stdout + repaired.stderr
    assert_all_genuine(project, genuine)


def test_repro_does_not_call_a_flipped_output_up_to_date(project: Path) -> None:
    genuine = (project / OUTPUTS["export_winml@cpu"] / BIN).read_bytes()
    time.sleep(2.1)  # the digest cache remembers files unchanged for 2 s: the check below is the cheap one
    run_cmd(AIPC + ["repro", "export_winml@cpu", "export_winml@gpu"], project)
    flip_one_byte(project / OUTPUTS["export_winml@cpu"] / BIN, offset=12288)
    status = run_cmd(DVC + ["status", "export_winml@cpu", "export_winml@gpu"], project).stdout
    assert "up to date" in status, "DVC alone does not see an in-place flip that keeps mtime"

    done = run_cmd(AIPC + ["repro", "export_winml@cpu", "export_winml@gpu"], project)
    said = done.stdout + done.stderr
    assert "did not match their manifest or linked a corrupted cache object" in said, said[-3000:]
    assert "dropped them and 1 cache object(s)" in said
    assert_all_genuine(project, genuine)
