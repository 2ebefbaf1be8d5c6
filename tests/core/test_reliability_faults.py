"""Faults give one line (issue 17.5): full disk, the disk check's units, TMPDIR on another drive, bad safetensors,
an unset local_path, the resource check of the ONNX and NPU-library exports, and a true interrupt message.

The full-disk tests mount a small tmpfs (root only; skipped elsewhere) and fill it with a real export.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest

from pipeline.core.workspace import Workspace
from pipeline.core import artifacts
from pipeline.core import resources as lean
from pipeline.core.artifacts import staged_dir
from pipeline.core.config import ModelConfig, PipelineConfig, build, compose
from pipeline.npu_lib.config import NpuLibVariantConfig
from pipeline.onnx.config import OnnxVariantConfig
from pipeline.core.errors import StageError, size_text
from pipeline.hub import download
from pipeline.npu_lib import env as npu_lib_env
from pipeline.npu_lib import export as export_npu_lib
from pipeline.onnx import export as export_onnx

from conftest import TINY_DIR

Usage = namedtuple("Usage", "total used free")


@pytest.fixture()
def tmpfs(tmp_path: Path):
    """A 12 MiB tmpfs (smaller than the tiny int4 IR with its staging), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); .ci/run runs as root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "model"
    download.run(ModelConfig.preset("tiny"), out)
    return out


def test_sizes_under_one_gib_are_in_mib() -> None:
    assert size_text(0.3 * 2**30) == "307 MiB" and size_text(5 * 2**20) == "5.0 MiB" and size_text(2**31) == "2.0 GiB"


def test_disk_check_never_says_zero_gib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIPC_SKIP_RESOURCE_CHECK", raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(2**40, 0, 40 * 2**20))
    with pytest.raises(StageError) as err:
        lean.check_resources("[int4] exporting", 0, 45 * 2**20, tmp_path)
    assert str(err.value) == (f"[int4] exporting needs about 45 MiB of disk under {tmp_path} but 40 MiB is free: "
                              "free 5.0 MiB or set AIPC_SKIP_RESOURCE_CHECK=1")


def test_enospc_injected_at_a_write_is_one_line_and_keeps_the_previous_output(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(2**40, 0, 2**30))
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep.txt").write_text("previous", encoding="utf-8")
    artifacts.expect_disk(tmp_path, 3 * 2**30)
    with pytest.raises(StageError) as err, staged_dir(final) as tmp:
        (tmp / "part.bin").write_bytes(b"x" * 2**20)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "part.bin"))
    assert str(err.value).startswith(f"disk full under {tmp_path} while writing {final}: it needs about 3.0 GiB "
                                  "and 1.0 GiB was free: free 2.0 GiB more")
    assert str(err.value).endswith(f"{final} was left as it was before this run")
    assert (final / "keep.txt").read_text(encoding="utf-8") == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_disk_full_during_a_real_export_is_one_line(tmpfs: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.openvino import export as export_openvino

    cfg = build(PipelineConfig, compose(["model=tiny"])).openvino["int4"]
    previous = tmpfs / "int4"
    previous.mkdir()
    (previous / "keep.txt").write_text("previous", encoding="utf-8")
    monkeypatch.delenv("AIPC_SKIP_RESOURCE_CHECK", raising=False)
    with pytest.raises(StageError) as err:  # the resource check stops it first, in MiB
        export_openvino.run("int4", cfg, Workspace(model=tiny_model, out=tmpfs), base_dir=None)
    assert "MiB of disk under" in str(err.value) and "0.0 GiB" not in str(err.value)
    monkeypatch.setenv("AIPC_SKIP_RESOURCE_CHECK", "1")  # then the disk fills during the export
    with pytest.raises(StageError) as err:
        export_openvino.run("int4", cfg, Workspace(model=tiny_model, out=tmpfs), base_dir=None)
    message = str(err.value)
    assert message.startswith(f"disk full under {tmpfs} while writing {previous}: it needs about ") and "\n" not in message
    assert (previous / "keep.txt").read_text(encoding="utf-8") == "previous" and sorted(p.name for p in tmpfs.iterdir()) == ["int4"]


def test_a_cpp_writer_error_on_a_full_disk_is_reported_as_disk_full(tmpfs: Path) -> None:
    with open(tmpfs / "filler", "wb") as handle:  # fill the tmpfs
        with pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 2**20)
                handle.flush()
    with pytest.raises(StageError) as err, staged_dir(tmpfs / "npu_lib"):
        raise StageError("[npu_lib-int4] compile failed in the isolated environment: basic_ios::clear: iostream error")
    assert str(err.value).startswith(f"disk full under {tmpfs} while writing {tmpfs / 'npu_lib'}")


def test_tmpdir_on_another_drive_is_moved_beside_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) here")
    scratch = Path(tempfile.mkdtemp(dir=other))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    with staged_dir(tmp_path / "int4") as tmp:
        assert os.stat(tempfile.gettempdir()).st_dev == os.stat(tmp).st_dev and os.environ["TMPDIR"] == tempfile.tempdir
        with tempfile.TemporaryDirectory() as saved:  # what optimum-intel's quantizer does, then renames
            (Path(saved) / "model.xml").write_text("<net/>", encoding="utf-8")
            Path(saved, "model.xml").rename(tmp / "openvino_model.xml")
    assert tempfile.tempdir == str(scratch) and os.environ["TMPDIR"] == str(scratch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int4"]
    shutil.rmtree(scratch)


@pytest.mark.slow
def test_real_int4_export_with_tmpdir_on_another_drive(tmp_path: Path, tiny_model: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.openvino import export as export_openvino

    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) here")
    scratch = Path(tempfile.mkdtemp(dir=other))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # was: Invalid cross-device link from optimum's save
    cfg = build(PipelineConfig, compose(["model=tiny"])).openvino["int4"]
    manifest = export_openvino.run("int4", cfg, Workspace(model=tiny_model, out=tmp_path / "ov"), base_dir=None)
    assert manifest["files"]["openvino_model.bin"]["bytes"] > 0
    shutil.rmtree(scratch)


def local_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "my-phi3"
    shutil.copytree(TINY_DIR, folder)
    return folder


def test_truncated_safetensors_is_refused_naming_the_users_file(tmp_path: Path) -> None:
    folder = local_copy(tmp_path)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - 1000)
    with pytest.raises(StageError) as err:
        download.run(ModelConfig.preset("local", local_path=str(folder)), tmp_path / "model")
    assert str(err.value) == (f"{weights} is truncated: {weights.stat().st_size} bytes where its header describes "
                              f"{weights.stat().st_size + 1000}: download or copy it again")
    assert not (tmp_path / "model").exists() and ".tmp-" not in str(err.value)


@pytest.mark.parametrize("damage, words", [
    (lambda data: data[:8] + b"{not json" + data[17:], "is corrupt: its safetensors header is not valid JSON"),
    (lambda data: (2**40).to_bytes(8, "little") + data[8:], "is truncated or not a safetensors file"),
    (lambda data: data[:4], "is truncated or not a safetensors file"),
])
def test_corrupt_safetensors_header_is_refused(tmp_path: Path, damage, words: str) -> None:
    folder = local_copy(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(StageError) as err:
        download.run(ModelConfig.preset("local", local_path=str(folder)), tmp_path / "model")
    assert str(err.value).startswith(f"{weights} {words}")


def test_local_model_without_local_path_is_one_line_at_download(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"^model.local_path is not set for model=local: point it at your model"):
        download.run(ModelConfig.preset("local", local_path="???"), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def short_of_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.delenv("AIPC_SKIP_RESOURCE_CHECK", raising=False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: namedtuple("VM", "available")(2**20))


def test_onnx_export_checks_resources_first(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short_of_ram(monkeypatch)
    with pytest.raises(StageError, match=r"^\[cpu_int4\] building int4 ONNX needs about .* of RAM but 1.0 MiB"):
        export_onnx.run("cpu_int4", OnnxVariantConfig.from_conf(execution_provider="cpu", precision="int4"), Workspace(model=tiny_model, out=tmp_path / "onnx"))
    assert not (tmp_path / "onnx").exists()


def test_npu_lib_export_checks_resources_first(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short_of_ram(monkeypatch)
    monkeypatch.setattr(npu_lib_env, "ensure", lambda root=None: npu_lib_env.NpuLibEnv(tmp_path, Path(sys.executable), {}))
    with pytest.raises(StageError, match=r"^\[npu_lib-int4\] compiling int4 with the NPU library needs about .* of RAM"):
        export_npu_lib.run("int4", NpuLibVariantConfig.from_conf(dtype="int4"), Workspace(model=tiny_model, out=tmp_path / "npu_lib"))
    assert not (tmp_path / "npu_lib").exists()


INTERRUPTED = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from pipeline.core.artifacts import staged_dir
    from pipeline.core.errors import run_main

    def telemetry():  # like OpenVINO's telemetry sender: a non-daemon thread that dies noisily at shutdown
        time.sleep(3)
        raise RuntimeError("telemetry traceback")

    def main():
        threading.Thread(target=telemetry).start()
        if sys.argv[2] == "after":
            with staged_dir(Path(sys.argv[1]) / "first"):
                pass
        with staged_dir(Path(sys.argv[1]) / "int4"):
            raise KeyboardInterrupt

    run_main(main)
""")


@pytest.mark.parametrize("when", ["before", "after"])
def test_interrupt_message_is_true_and_alone(tmp_path: Path, when: str) -> None:
    (tmp_path / "int4").mkdir()
    (tmp_path / "int4" / "keep.txt").write_text("previous", encoding="utf-8")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", INTERRUPTED, str(tmp_path), when], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 130 and time.monotonic() - start < 3, "exits without waiting for the thread"
    expected = {"before": f"error: interrupted; nothing was moved into artifacts/ ({tmp_path / 'int4'} keeps its previous contents)",
                "after": f"error: interrupted after {tmp_path / 'first'} was replaced; {tmp_path / 'int4'} keeps its "
                         "previous contents: rerun to finish"}[when]
    assert done.stderr.strip().splitlines() == [expected]
    assert (tmp_path / "int4" / "keep.txt").read_text(encoding="utf-8") == "previous"
