"""Windows semantics emulated on Linux (tests/windows/winemu): each emulated rule, then the tiny pipeline under all of them.

The emulation (see ``tests/windows/winemu/_aipc_winemu.py``): read-only files cannot be deleted or replaced, a folder
holding an open or mapped file cannot be renamed, created paths must fit MAX_PATH from
``C:\\Users\\<20 chars>\\source\\repos\\aipc-pipeline``, consoles and ``open()`` default to cp1252.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, make_project, run_cmd
from winemu import WIN_HOME, WIN_ROOT, enabled, read_record, summarize, tree_overflows, winemu_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="emulates Windows on Linux (reads /proc); on Windows the real rules apply")


def run_emulated(code: str, project: Path, record: Path | None = None, strict: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter under the emulation (loaded by sitecustomize, as DVC's stages load it)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=project, capture_output=True,
                          env=winemu_env(project, record=record, strict=strict))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "out").mkdir(parents=True)
    (root / "out" / "weights.bin").write_bytes(b"\0" * 4096)
    return root


def test_readonly_file_cannot_be_deleted_or_replaced(project: Path) -> None:
    target = project / "out" / "weights.bin"
    link = project / "linked.bin"
    os.link(target, link)  # a DVC checkout: a hard link to a read-only cache file shares the flag
    target.chmod(0o444)
    (project / "new.bin").write_bytes(b"new")
    with enabled(project):
        for attempt in (link.unlink, lambda: os.remove(target), lambda: os.replace(project / "new.bin", link),
                        lambda: shutil.rmtree(project / "out"), lambda: open(link, "wb")):  # noqa: SIM115
            with pytest.raises(PermissionError, match=r"WinError 5"):
                attempt()
        link.chmod(0o644)  # what Windows code must do: clear the read-only flag first
        link.unlink()
        os.remove(target)
    assert not target.exists() and not link.exists()


def test_folder_with_an_open_or_mapped_file_cannot_be_renamed(project: Path) -> None:
    folder, weights = project / "out", project / "out" / "weights.bin"
    with enabled(project):
        with open(weights, "rb"):
            with pytest.raises(PermissionError, match="WinError 5"):
                os.replace(folder, project / "moved")
            with pytest.raises(PermissionError, match="WinError 32"):
                weights.unlink()
        with open(weights, "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:  # closed, still mapped (numpy memmap, safetensors, OpenVINO's .bin are this)
            with pytest.raises(PermissionError, match="WinError 5"):
                folder.rename(project / "moved")
        finally:
            mapping.close()
        folder.rename(project / "moved")
    assert (project / "moved" / "weights.bin").exists()


def test_open_file_in_another_process_of_the_project_blocks_the_rename(project: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'rb'); print('open', flush=True); sys.stdin.read()",
         str(project / "out" / "weights.bin")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=winemu_env(project))
    try:
        # Wait until the holder has the file open: renaming the folder while it was still opening it made its
        # open fail (the folder was briefly elsewhere), and then nothing held the file.
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        done = run_emulated("""
            import os
            try:
                os.replace("out", "moved")
            except PermissionError as exc:
                raise SystemExit(str(exc))
            os.replace("moved", "out")
            """, project)
    finally:
        holder.communicate(b"")
    assert done.returncode == 1 and b"rename-folder-with-open-file" in done.stderr, done.stderr


def test_windows_rename_rules(project: Path) -> None:
    (project / "a.txt").write_text("a", encoding="utf-8")
    (project / "b.txt").write_text("b", encoding="utf-8")
    (project / "empty").mkdir()
    with enabled(project):
        with pytest.raises(FileExistsError, match="WinError 183"):
            os.rename(project / "a.txt", project / "b.txt")
        with pytest.raises(PermissionError, match="WinError 5"):
            os.replace(project / "out", project / "empty")  # POSIX replaces an empty folder, Windows does not
        os.replace(project / "a.txt", project / "b.txt")
    assert (project / "b.txt").read_text(encoding="utf-8") == "a"


def test_long_paths_fail_in_strict_mode_and_are_recorded(project: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    budget = 259 - len(WIN_ROOT) - 1  # characters left for a file below the root
    fits, too_long = "f" * budget, "f" * (budget + 1)
    with enabled(project, record=record):
        (project / fits).write_bytes(b"")
        with pytest.raises(FileNotFoundError, match="WinError 206"):
            (project / too_long).write_bytes(b"")
        with pytest.raises(FileNotFoundError, match="WinError 206"):
            os.makedirs(project / ("d" * 120) / ("d" * 120))  # folders: 247 characters at most
    with enabled(project, record=record, strict=False):
        (project / too_long).write_bytes(b"")  # record mode: created, and noted
    entries = [e for e in read_record(record) if e["kind"] == "long-path"]
    assert [e["length"] for e in entries] == [260, 298, 260]
    assert entries[0]["windows"].startswith(WIN_ROOT + "\\")
    assert "long-path" in summarize(entries)


def test_console_and_default_encoding_are_cp1252(project: Path) -> None:
    done = run_emulated("print('ppl \\u0394 %')", project)
    assert done.returncode == 1 and b"UnicodeEncodeError" in done.stderr
    done = run_emulated("""
        from pathlib import Path
        Path("utf8.txt").write_text("\\u0394", encoding="utf-8")
        print(Path("utf8.txt").read_text())
        """, project)
    assert done.stdout.decode("cp1252").strip() == "\u00ce\u201d"  # UTF-8 bytes read as cp1252
    env = {**winemu_env(project), "PYTHONIOENCODING": "utf-8"}  # what a fix may set for its workers
    done = subprocess.run([sys.executable, "-c", "print('\\u0394')"], env=env, capture_output=True)
    assert done.returncode == 0 and done.stdout.decode("utf-8").strip() == "\u0394"


def test_emulation_is_off_without_the_switch(project: Path) -> None:
    env = {**winemu_env(project), "AIPC_WINEMU": "0"}
    code = "import os; os.chmod('out/weights.bin', 0o444); os.remove('out/weights.bin'); print('\\u0394')"
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env={**env, "PYTHONIOENCODING": "utf-8"},
                          capture_output=True)
    assert done.returncode == 0, done.stderr


def _aipc(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=project, env=env, capture_output=True)


# `aipc compile-npu-blob` with a stand-in NPU: the device is reported present and the compile writes a fake blob,
# so what runs for real is the folder handling (copy of read-only DVC files, manifest replace, staged rename).
FAKE_NPU_COMPILE = """
import dataclasses
from pipeline import cli
from pipeline.validation import devices
from pipeline.openvino import export_npu
real_detect = devices.detect
def detect(core=None):
    status = real_detect(core)
    status["NPU"] = dataclasses.replace(status["NPU"], available=True, full_name="emulated NPU", driver="0",
                                        compiler="0", reason=None)
    return status
def compile_blob(folder, settings):
    (folder / "openvino_model.blob").write_bytes(b"emulated blob")
    return {"blob": "openvino_model.blob", "compile_s": 0.0}
devices.detect, export_npu.compile_blob = detect, compile_blob
cli.main(["compile-npu-blob", "artifacts/npu/int4"])
"""


def one_variant_per_family(project: Path) -> tuple[list[str], set[str]]:
    """The validate stage of every family's first variant, and every stage ``dvc repro --force`` of them runs.

    Each family's export and validate code is the same for all its variants, and the shared stages rewrite the same
    bytes (tests/core/test_reliability_determinism.py), so the other variants stay up to date. What the emulation then
    sees: every kind of stage replacing its outputs and writing beside the DVC checkouts of the others, in about half
    the time of building every variant.
    """
    from pipeline.core.composition import read_params
    from pipeline.core.registry import FAMILIES, SHARED_FOLDERS

    params = read_params(project / "params.yaml")
    targets, expected = [], set(SHARED_FOLDERS.values())  # download, reference, export_openvino_base
    for family in FAMILIES.values():
        variant = next(iter(params[family.name]))
        targets.append(f"{family.validate_stage}@{variant}")
        expected |= {f"{family.export_stage}@{variant}", f"{family.validate_stage}@{variant}"}
    return targets, expected


@pytest.mark.slow
def test_tiny_pipeline_under_windows_semantics(tmp_path: Path) -> None:
    """``dvc repro`` of the tiny model, ``aipc demo`` and ``aipc compile-npu-blob`` pass with every Windows rule in force.

    Starting from the checkout's demo build (CI: demo, then tests), the shared stages and one variant of every family
    run again under the emulation (``--force``); without a demo in the checkout, every stage does.
    """
    from shared_workspace import seed_from_checkout

    project = make_project(tmp_path / "project")
    seeded = seed_from_checkout(ROOT, project)
    record = tmp_path / "winemu.jsonl"
    env = winemu_env(project, record=record, strict=False)  # long paths recorded, all reported at once below
    compose = _aipc(project, env, "compose", "model=tiny")
    assert compose.returncode == 0, compose.stderr.decode(errors="replace")[-3000:]
    targets, expected = one_variant_per_family(project) if seeded else ([], set())
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro", *(["--force", *targets] if seeded else [])],
                           cwd=project, env=env, capture_output=True)
    entries = read_record(record)
    log = repro.stdout.decode(errors="replace")
    assert repro.returncode == 0, (f"dvc repro failed under Windows semantics:\n{summarize(entries)}\n"
                                   f"{log[-3000:]}\n{repro.stderr.decode(errors='replace')[-3000:]}")
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert expected <= ran, f"not run under the emulation: {sorted(expected - ran)}"
    demo = _aipc(project, env, "demo")  # the README's command: a no-op repro, then the report on a cp1252 console
    assert demo.returncode == 0, demo.stderr.decode("cp1252", errors="replace")[-3000:]
    blob = subprocess.run([sys.executable, "-c", FAKE_NPU_COMPILE], cwd=project, env=env, capture_output=True)
    assert blob.returncode == 0, f"{summarize(read_record(record))}\n{blob.stderr.decode(errors='replace')[-3000:]}"
    long_paths = [e for e in read_record(record) if e["kind"] == "long-path"]
    assert not long_paths, summarize(long_paths)
    manifest = json.loads((project / "artifacts" / "npu" / "int4" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["npu_blob"]["blob"] == "openvino_model.blob"


def test_tree_overflows_measures_a_venv_as_windows_lays_it_out(tmp_path: Path) -> None:
    site = tmp_path / "env" / "lib" / "python{}.{}".format(*sys.version_info[:2]) / "site-packages"
    (site / ("p" * 170)).mkdir(parents=True)
    (site / ("p" * 170) / "LICENSE").write_text("x", encoding="utf-8")
    (tmp_path / "env" / "bin").mkdir()
    (tmp_path / "env" / "bin" / "python").write_text("", encoding="utf-8")
    (over,) = tree_overflows(str(tmp_path / "env"), WIN_ROOT + "\\.aipc\\envs\\nl-0123456789")
    assert over[1] == WIN_ROOT + "\\.aipc\\envs\\nl-0123456789\\Lib\\site-packages\\" + "p" * 170 + "\\LICENSE"
    assert tree_overflows(str(tmp_path / "env"), "C:\\e") == []


def test_installed_environments_fit_windows_paths_where_they_would_live() -> None:
    """The project's .venv at the realistic root, the npu-lib env in %LOCALAPPDATA%\\aipc (npu_lib_env.envs_root)."""
    venv = Path(sys.prefix)
    assert not tree_overflows(str(venv), WIN_ROOT + "\\.venv")[:3]
    envs = venv.resolve().parent / ".aipc" / "envs"
    for env in sorted(envs.glob("nl-*")) if envs.is_dir() else []:
        if env.is_dir():
            assert not tree_overflows(str(env), WIN_HOME + "\\AppData\\Local\\aipc\\" + env.name)[:3]
