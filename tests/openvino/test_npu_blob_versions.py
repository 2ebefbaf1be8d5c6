"""A saved NPU blob records what built it; chat and validate refuse a stale one in one line and build it again.

Real here: the blob compile, export and reload (the tiny NPU artifact's run settings route OpenVINO's NPU
pipeline to NPUW's CPU backend, as there is no NPU), the folder swap and the chat itself. Faked: that an NPU is
present (``devices.detect``) and this machine's versions (``npu_blob.machine_versions``, the one function that
reads them), so a driver update can be played out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.core.config import ModelConfig
from pipeline.core.errors import StageError
from pipeline.core.manifest import file_hashes
from pipeline.core.verify import verify_folder
from pipeline.core.workspace import Workspace
from pipeline.hub import download
from pipeline.openvino import export_npu, generation, npu_blob, npu_lane
from pipeline.openvino.config import NpuVariantConfig
from pipeline.validation import devices

BUILT_BY = {"openvino": "2026.3.0-fake", "npu_driver": "1.2", "npu_compiler": "7.1", "device": "Intel(R) AI Boost",
            "device_architecture": "3720"}
AFTER_UPDATE = {**BUILT_BY, "npu_driver": "1.10"}
STALE_LINE = ("the saved NPU blob was built by NPU driver 1.2; this machine has NPU driver 1.10: "
              "compiling again and replacing it")


def _fake_machine(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str]) -> None:
    present = devices.DeviceStatus("NPU", True, full_name=versions["device"], driver=versions["npu_driver"],
                                   compiler=versions["npu_compiler"])
    cpu = devices.DeviceStatus("CPU", True, full_name="CPU")
    monkeypatch.setattr(devices, "detect", lambda core=None: {"CPU": cpu, "NPU": present})
    monkeypatch.setattr(npu_blob, "machine_versions", lambda: dict(versions))


@pytest.fixture(scope="module")
def stale_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny NPU artifact with a real blob, compiled while the machine said NPU driver 1.2."""
    root = tmp_path_factory.mktemp("npu-blob")
    download.run(ModelConfig.preset("tiny"), root / "model")
    no_npu = {"CPU": devices.DeviceStatus("CPU", True), "NPU": devices.DeviceStatus("NPU", False, reason="none")}
    export_npu.run("int4", NpuVariantConfig.from_conf(), Workspace(model=root / "model", out=root / "npu"), status=no_npu)
    folder = root / "npu" / "int4"
    settings = json.loads((folder / export_npu.NPU_CONFIG).read_text(encoding="utf-8"))
    (folder / export_npu.NPU_CONFIG).write_text(json.dumps({**settings, **npu_lane.NPUW_CPU}), encoding="utf-8")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    (folder / "manifest.json").write_text(json.dumps({**manifest, "files": file_hashes(folder)}), encoding="utf-8")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _fake_machine(monkeypatch, BUILT_BY)
        export_npu.compile_deferred(folder)  # `aipc compile-npu-blob`
    return folder


@pytest.fixture
def artifact(stale_artifact: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "npu" / "int4"
    shutil.copytree(stale_artifact, folder)
    return folder


def _blob_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "saved NPU blob" in line]


def test_a_compiled_blob_records_what_built_it_and_the_manifest_lists_the_record(stale_artifact: Path) -> None:
    record = json.loads((stale_artifact / npu_blob.RECORD).read_text(encoding="utf-8"))
    assert record == {**BUILT_BY, "compiled_for": "NPUW on CPU"}
    manifest = verify_folder(stale_artifact)  # `aipc verify` passes on the compiled folder
    assert {export_npu.BLOB, npu_blob.RECORD} <= set(manifest["files"])
    assert manifest["npu_blob"]["record"] == npu_blob.RECORD


def test_chat_refuses_a_blob_from_another_driver_in_one_line_and_replaces_it(
        artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import chat

    stale = (artifact / export_npu.BLOB).stat()
    _fake_machine(monkeypatch, AFTER_UPDATE)
    answer = chat.chat(artifact, "NPU", prompt="Can you introduce yourself?", max_new_tokens=4)
    assert isinstance(answer, str)
    said = _blob_lines(capsys.readouterr().err)
    assert len(said) == 1 and said[0].endswith(STALE_LINE), said
    record = json.loads((artifact / npu_blob.RECORD).read_text(encoding="utf-8"))
    assert record == {**AFTER_UPDATE, "compiled_for": "NPUW on CPU"}
    fresh = (artifact / export_npu.BLOB).stat()
    assert (fresh.st_ino, fresh.st_mtime_ns) != (stale.st_ino, stale.st_mtime_ns), "the stale blob was loaded"
    verify_folder(artifact)  # the manifest lists the new blob and record

    chat.chat(artifact, "NPU", prompt="Hi", max_new_tokens=4)  # now it matches: reused as is
    assert _blob_lines(capsys.readouterr().err) == []
    again = (artifact / export_npu.BLOB).stat()
    assert (again.st_ino, again.st_mtime_ns) == (fresh.st_ino, fresh.st_mtime_ns)


def test_validate_compiles_a_stale_blob_again_but_the_npuw_lane_leaves_it_alone(
        artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_machine(monkeypatch, {**BUILT_BY, "openvino": "2026.4.1-fake"})
    properties = generation.device_properties(artifact, "NPU")
    assert properties["BLOB_PATH"] == str(artifact / export_npu.BLOB)
    said = _blob_lines(capsys.readouterr().err)
    assert len(said) == 1 and said[0].endswith(
        "the saved NPU blob was built by OpenVINO 2026.3.0-fake; this machine has OpenVINO 2026.4.1-fake: "
        "compiling again and replacing it"), said
    rebuilt = {**BUILT_BY, "openvino": "2026.4.1-fake", "compiled_for": "NPUW on CPU"}
    assert npu_blob.read_record(artifact) == rebuilt
    verify_folder(artifact)

    _fake_machine(monkeypatch, {**BUILT_BY, "openvino": "2026.5.0-fake"})
    lane = generation.device_properties(artifact, "NPU", use_blob=False)  # NPUW on the CPU: no NPU blob involved
    assert "BLOB_PATH" not in lane and _blob_lines(capsys.readouterr().err) == []
    assert npu_blob.read_record(artifact) == rebuilt


def test_a_blob_without_a_record_is_stale_and_every_differing_fact_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(npu_blob, "machine_versions", lambda: dict(AFTER_UPDATE))
    assert npu_blob.stale_reason(tmp_path, {}) == (
        f"the saved NPU blob has no record of what built it ({npu_blob.RECORD})")
    npu_blob.write_record(tmp_path, {})
    assert npu_blob.stale_reason(tmp_path, {}) is None
    reason = npu_blob.stale_reason(tmp_path, npu_lane.NPUW_CPU)
    assert reason == "the saved NPU blob was built by compiled for NPU; this machine has compiled for NPUW on CPU"
    monkeypatch.setattr(npu_blob, "machine_versions", lambda: {**BUILT_BY, "device_architecture": "4000"})
    assert npu_blob.stale_reason(tmp_path, {}) == (
        "the saved NPU blob was built by NPU driver 1.10, architecture 3720; this machine has NPU driver 1.2, "
        "architecture 4000")


def test_without_an_npu_the_versions_read_as_unavailable_not_an_error() -> None:
    versions = npu_blob.machine_versions()
    assert set(versions) == set(npu_blob.FACTS) - {"compiled_for"}
    import openvino as ov

    assert versions["openvino"] == ov.get_version()
    if "NPU" not in ov.Core().available_devices:
        assert versions["npu_driver"] == npu_blob.UNAVAILABLE


def test_rebuilding_needs_an_npu(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = {"NPU": devices.DeviceStatus("NPU", False, reason="no NPU device node")}
    monkeypatch.setattr(devices, "detect", lambda core=None: absent)
    monkeypatch.setattr(npu_blob, "machine_versions", lambda: dict(AFTER_UPDATE))
    with pytest.raises(StageError, match="no NPU on this machine"):
        npu_blob.reusable_blob(artifact, json.loads((artifact / export_npu.NPU_CONFIG).read_text(encoding="utf-8")))
    assert npu_blob.read_record(artifact) == {**BUILT_BY, "compiled_for": "NPUW on CPU"}, "left as it was"
