"""Nothing tampered is trusted, nothing failed loses the previous output, under real ``dvc repro`` (issue 17.1, 17.4).

One project copy on the tiny model runs only ``dvc repro export_openvino@int4`` (download, base IR, int4 IR).
The tests run in file order on it: DVC semantics with ``persist: true`` first, then a flipped byte in the
int4 IR (hard-linked into ``.dvc/cache``) refused by validate, chat and publish, and ``aipc repair``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core import hashes
from pipeline.core.errors import StageError
from pipeline.core.hashes import dvc_dir_md5, file_digests
from pipeline.core.manifest import write_manifest
from pipeline.core.verify import stage_of, verify_folder

from conftest import make_project, run_cmd

DVC = [sys.executable, "-m", "dvc"]
AIPC = [sys.executable, "-m", "pipeline.cli"]
IR = Path("artifacts/openvino/int4")
STAGE = "export_openvino@int4"

@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project whose int4 IR was built by ``dvc repro export_openvino@int4`` on model=tiny."""
    project = make_project(tmp_path_factory.mktemp("verify") / "project")
    run_cmd(AIPC + ["compose", "model=tiny"], project)
    run_cmd(DVC + ["repro", STAGE], project)
    return project


def locked(project: Path) -> str:
    """The md5 dvc.lock records for the int4 IR."""
    stages = yaml.safe_load((project / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    return stages[STAGE]["outs"][0]["md5"]


@pytest.mark.slow
def test_persist_keeps_dvc_semantics_and_a_failed_stage_keeps_the_previous_output(project: Path) -> None:
    ir = project / IR
    again = run_cmd(DVC + ["repro", STAGE], project)
    assert "Running stage" not in again.stdout, again.stdout  # nothing changed: nothing runs
    assert "up to date" in run_cmd(DVC + ["status", "--with-deps", STAGE], project).stdout
    before, md5 = (ir / "manifest.json").read_bytes(), locked(project)

    # 96 does not divide 256: with the fallback at `error` (the default `adjust` would pick another group) it fails
    run_cmd(AIPC + ["compose", "model=tiny", "openvino.int4.group_size=96", "openvino.int4.group_size_fallback=error"],
            project)
    failed = run_cmd(DVC + ["repro", STAGE], project, check=False)
    assert failed.returncode and "group_size 96 does not divide" in failed.stderr + failed.stdout
    assert (ir / "manifest.json").read_bytes() == before, "DVC must not delete a persist output before the run"
    assert (ir / "openvino_model.bin").is_file() and locked(project) == md5
    assert not [p.name for p in ir.parent.iterdir() if p.name.startswith(".") and p.name != ".gitignore"]

    run_cmd(AIPC + ["compose", "model=tiny", "openvino.int4.group_size=64"], project)
    changed = run_cmd(DVC + ["repro", STAGE], project)
    assert f"Running stage '{STAGE}'" in changed.stdout
    assert json.loads((ir / "manifest.json").read_text(encoding="utf-8"))["parameters"]["group_size"] == 64
    assert locked(project) != md5
    assert "up to date" in run_cmd(DVC + ["status", "--with-deps", STAGE], project).stdout

    # persist: true turns DVC's run-cache off for the stage (dvc/stage/cache.py `_can_cache`): going back to
    # the earlier parameters reruns the export rather than restoring it; the cache still holds both outputs.
    run_cmd(AIPC + ["compose", "model=tiny"], project)
    back = run_cmd(DVC + ["repro", STAGE], project)
    assert f"Running stage '{STAGE}'" in back.stdout and "checking out outputs" not in back.stdout
    assert json.loads((ir / "manifest.json").read_text(encoding="utf-8"))["parameters"]["group_size"] == 128
    assert "up to date" in run_cmd(DVC + ["status", "--with-deps", STAGE], project).stdout


def flip_one_byte(path: Path, offset: int = 4096) -> tuple[int, int]:
    """Flip one byte in place (same inode, so the hard-linked cache entry too) and put mtime back."""
    st = path.stat()
    os.chmod(path, 0o644)  # DVC made it read-only
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0xFF]))
    os.chmod(path, st.st_mode)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ino == st.st_ino
    return st.st_ino, st.st_nlink


@pytest.mark.slow
def test_flipped_ir_byte_is_refused_by_validate_chat_publish_and_repaired(project: Path) -> None:
    bin_path = project / IR / "openvino_model.bin"
    genuine = bin_path.read_bytes()
    time.sleep(2.1)  # let the digest cache remember the genuine file (it skips files changed in the last 2 s)
    run_cmd(AIPC + ["verify", str(IR)], project)
    assert json.loads((project / ".aipc" / "digests.json").read_text(encoding="utf-8")), "the digest cache was filled"
    inode, links = flip_one_byte(bin_path)
    assert links >= 2, "the IR is hard-linked into .dvc/cache (cache.type hardlink): the flip reached the cache"

    expected = (f"error: {IR / 'openvino_model.bin'} does not match the sha256 in {IR / 'manifest.json'} "
                f"(modified after it was built): repair with `aipc repair {STAGE}`")
    for args in (["validate", "int4"], ["chat", str(IR), "--prompt", "hi"], ["publish", "--dry-run", "openvino/int4"]):
        done = run_cmd(AIPC + args, project, check=False)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert done.stderr.strip().splitlines() == [expected], (args, done.stderr[-2000:])
    direct = run_cmd([sys.executable, "-m", "pipeline.openvino.validate", "int4"], project, check=False)
    assert direct.stderr.strip().splitlines() == [expected]  # what `dvc repro validate@int4` runs

    repaired = run_cmd(AIPC + ["repair", STAGE], project)
    assert "dropped 1 tampered cache file(s)" in repaired.stderr + repaired.stdout
    assert bin_path.read_bytes() == genuine and bin_path.stat().st_ino != inode
    run_cmd(AIPC + ["verify", str(IR)], project)
    assert "up to date" in run_cmd(DVC + ["status", "--with-deps", STAGE], project).stdout


def old_file(path: Path, data: bytes) -> Path:
    """A file written, then dated 10 s back (older than the digest cache's racy window)."""
    path.write_bytes(data)
    os.utime(path, ns=(time.time_ns() - 10**10,) * 2)
    return path


def test_digest_cache_is_not_fooled_by_an_in_place_flip_that_keeps_mtime(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPC_DIGEST_CACHE", str(tmp_path / "digests.json"))
    monkeypatch.setattr(hashes, "RACY_NS", 0)  # ctime is "now" (utime sets it): accept it for this test
    path = old_file(tmp_path / "w.bin", b"genuine bytes" * 1000)
    first = file_digests([path])[path]
    assert len(json.loads((tmp_path / "digests.json").read_text(encoding="utf-8"))) == 1
    flip_one_byte(path, offset=3)
    assert file_digests([path])[path] != first, "same inode, size and mtime: ctime differs, so it is read again"


def test_a_file_changed_in_the_last_two_seconds_is_not_remembered(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPC_DIGEST_CACHE", str(tmp_path / "digests.json"))
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"x" * 100)
    file_digests([path])
    assert not (tmp_path / "digests.json").exists()


def test_stage_of_maps_artifact_folders_to_their_stages(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    assert [stage_of(art / p, tmp_path) for p in ("openvino/int4", "npu/int4", "onnx/cpu_int4", "npu_lib/int8",
                                                  "model", "reference", "openvino_base", "openvino", "elsewhere")] == [
        "export_openvino@int4", "export_npu@int4", "export_onnx@cpu_int4", "export_npu_lib@int8", "download",
        "reference", "export_openvino_base", None, None]


@pytest.fixture()
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """artifacts/openvino/int4 with a manifest, recorded in a dvc.lock as export_openvino@int4 would be."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AIPC_RUNS_DIR", str(tmp_path / "runs"))
    folder = tmp_path / "artifacts" / "openvino" / "int4"
    folder.mkdir(parents=True)
    (folder / "openvino_model.bin").write_bytes(b"weights" * 100)
    (folder / "openvino_model.xml").write_text("<net/>", encoding="utf-8")
    write_manifest(folder, stage="export_openvino", variant="int4")
    lock = {"schema": "2.0", "stages": {STAGE: {"cmd": "x", "outs": [
        {"path": "artifacts/openvino/int4", "md5": dvc_dir_md5(folder), "hash": "md5"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock), encoding="utf-8")
    return folder


def test_verify_accepts_the_recorded_folder(recorded: Path) -> None:
    assert verify_folder(recorded)["variant"] == "int4"


def test_a_file_swapped_together_with_its_manifest_hash_is_refused_by_dvc_lock(recorded: Path) -> None:
    (recorded / "openvino_model.bin").write_bytes(b"tampered" * 100)
    manifest = json.loads((recorded / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["openvino_model.bin"] = {"bytes": 800, "sha256": hashes.sha256_file(recorded / "openvino_model.bin")}
    (recorded / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(StageError, match=r"^artifacts/openvino/int4/manifest.json \(with the files it lists\) is not what "
                                         r"dvc.lock recorded for export_openvino@int4 .*: repair with `aipc repair "
                                         r"export_openvino@int4`, or, if you changed it on purpose .*`dvc commit "
                                         r"export_openvino@int4`$"):
        verify_folder(recorded)


@pytest.mark.parametrize("change, words", [
    (lambda f: (f / "extra.xml").write_text("<net/>", encoding="utf-8"), "extra.xml is not listed in"),
    (lambda f: (f / "openvino_model.xml").unlink(), "openvino_model.xml is missing"),
    (lambda f: (f / "manifest.json").unlink(), "manifest.json missing, so nothing vouches for"),
    (lambda f: (f / "openvino_model.xml").write_text("<net></net>", encoding="utf-8"), "openvino_model.xml is not the size"),
])
def test_added_missing_or_resized_files_are_refused(recorded: Path, change, words: str) -> None:
    change(recorded)
    with pytest.raises(StageError, match=words) as err:
        verify_folder(recorded)
    assert str(err.value).endswith("repair with `aipc repair export_openvino@int4`")
