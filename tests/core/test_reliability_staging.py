"""What a kill -9 leaves beside an output is cleaned up by the next run, and the previous output survives (issue 17.4).

Staged folders are named ``.<name>.tmp-<pid>-<random>`` / ``.<name>.old-<pid>-<random>``; the next
``staged_dir`` for ``<name>`` removes those whose process is gone, never one a live process is writing.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from pipeline.core.artifacts import remove_tree, staged_dir, sweep_stale, write_json_atomic

from conftest import ROOT


def writer(out: Path, body: str) -> subprocess.Popen:
    """A child process in ``staged_dir(out)`` running ``body`` (``tmp`` is the staged folder); started once it prints."""
    code = ("import os, sys, time\nfrom pathlib import Path\nfrom pipeline.core.artifacts import staged_dir\n"
            f"with staged_dir(Path({str(out)!r})) as tmp:\n" + textwrap.indent(textwrap.dedent(body), "    "))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


PARTIAL = """
    (tmp / "openvino_model.bin").write_bytes(b"half" * 1000)
    os.chmod(tmp / "openvino_model.bin", 0o444)  # read-only, as DVC's cache files are
    print("writing", flush=True)
    time.sleep(120)
"""


def kill9(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL; TerminateProcess on Windows
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def previous(tmp_path: Path) -> Path:
    out = tmp_path / "artifacts" / "int4"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("previous artifact", encoding="utf-8")
    return out


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."))


def test_kill9_mid_write_keeps_the_previous_output_and_the_next_run_cleans_up(previous: Path) -> None:
    killed = writer(previous, PARTIAL)
    kill9(killed)
    assert leftovers(previous) and all(n.startswith(f".int4.tmp-{killed.pid}-") for n in leftovers(previous))
    assert (previous / "keep.txt").read_text(encoding="utf-8") == "previous artifact"
    live = writer(previous, PARTIAL)  # another run still writing: its folder must survive the sweep
    try:
        with staged_dir(previous) as tmp:
            (tmp / "new.txt").write_text("new artifact", encoding="utf-8")
        assert (previous / "new.txt").read_text(encoding="utf-8") == "new artifact" and not (previous / "keep.txt").exists()
        names = leftovers(previous)
        assert len(names) == 1 and names[0].startswith(f".int4.tmp-{live.pid}-"), names
    finally:
        kill9(live)
    sweep_stale(previous)
    assert leftovers(previous) == []


def test_kill9_between_the_two_renames_restores_the_previous_output(previous: Path) -> None:
    proc = writer(previous, """
        import pipeline.core.artifacts as artifacts
        real = os.replace
        def replace(src, dst):  # stop right after the old output was moved aside
            real(src, dst)
            if ".old-" in str(dst):
                print("writing", flush=True)
                time.sleep(120)
        artifacts.os.replace = replace
        (tmp / "new.txt").write_text("new artifact")
    """)
    kill9(proc)
    assert not previous.exists() and leftovers(previous)[0].startswith(f".int4.old-{proc.pid}-")
    restored = sweep_stale(previous)
    assert (previous / "keep.txt").read_text(encoding="utf-8") == "previous artifact", restored
    assert leftovers(previous) == []  # the half-moved new output is removed too


def test_stale_json_temp_files_are_removed_by_the_next_write(tmp_path: Path) -> None:
    stale = tmp_path / f".openvino-int4.json.tmp-{dead_pid()}"
    stale.write_text("{", encoding="utf-8")
    write_json_atomic(tmp_path / "openvino-int4.json", {"passed": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["openvino-int4.json"]


def test_unparseable_or_foreign_names_are_left_alone(previous: Path) -> None:
    for name in (".int4.tmp-abc12345", ".int8.tmp-1-x", ".int4.old-notapid", "int4.tmp-1"):
        (previous.parent / name).mkdir()
    sweep_stale(previous)
    assert len(list(previous.parent.iterdir())) == 5


@pytest.mark.skipif(os.name == "nt" or not hasattr(os, "setuid"), reason="POSIX permission bits")
def test_remove_tree_removes_read_only_files_and_folders() -> None:
    # As root, permission bits do not stop unlink: the removal runs as an unprivileged user then.
    base = Path(tempfile.mkdtemp(prefix="aipc-ro-"))
    try:
        tree = base / ".int4.old-1"
        (tree / "sub").mkdir(parents=True)
        for f in (tree / "a.bin", tree / "sub" / "b.bin"):
            f.write_bytes(b"x")
            f.chmod(0o444)
        (tree / "sub").chmod(0o555)
        tree.chmod(0o555)
        user = {}
        if os.getuid() == 0:
            for p in (base, tree, tree / "sub", tree / "a.bin", tree / "sub" / "b.bin"):
                os.chown(p, 65534, 65534)
            user = {"user": 65534, "group": 65534}
        code = ("import shutil, sys; from pathlib import Path; from pipeline.core.artifacts import remove_tree; "
                "p = Path(sys.argv[1]); shutil.rmtree(p, ignore_errors=True); print(p.exists()); remove_tree(p); "
                "print(p.exists())")
        done = subprocess.run([sys.executable, "-c", code, str(tree)], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, **user)
        assert done.stdout.split() == ["True", "False"], done.stderr  # plain rmtree leaves it; remove_tree does not
    finally:
        for p in base.rglob("*"):
            p.chmod(stat.S_IRWXU)
        remove_tree(base)
