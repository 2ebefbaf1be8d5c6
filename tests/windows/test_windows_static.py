"""The static Windows check (scripts/check_windows.py): its rules on small samples, then pipeline/, tests/, scripts/."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_windows", ROOT / "scripts" / "check_windows.py")
check_windows = sys.modules["check_windows"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(check_windows)


def findings(tmp_path: Path, code: str) -> list[tuple[int, str]]:
    path = tmp_path / "sample.py"
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return [(f.line, f.rule) for f in check_windows.check_file(path, root=tmp_path)]


def test_each_rule_finds_its_windows_ism(tmp_path: Path) -> None:
    code = """
        import os, shutil, signal, subprocess
        import fcntl
        from pathlib import Path
        os.getloadavg()
        os.kill(1, signal.SIGKILL)
        open("a.txt")
        Path("a").read_text()
        Path("a").write_text("x")
        subprocess.run(["git"], text=True)
        os.rename("a", "b")
        os.replace(staging_dir, final)
        shutil.rmtree("x", ignore_errors=True)
        python = venv / "bin" / "python"
        Path("/proc/self/status")
    """
    assert findings(tmp_path, code) == [
        (3, "posix-only"), (5, "posix-only"), (6, "posix-only"), (7, "encoding"), (8, "encoding"), (9, "encoding"),
        (10, "encoding"), (11, "rename"), (12, "rename"), (13, "rmtree-ignore"), (14, "venv-bin"), (15, "posix-path"),
    ]


def test_guards_and_allow_comments_silence_a_finding(tmp_path: Path) -> None:
    code = """
        import os, platform, sys
        from pathlib import Path
        if os.name != "nt":
            os.getloadavg()
        system = platform.system()
        if system == "Linux" and Path("/proc/cpuinfo").exists():
            pass
        try:
            import resource
        except ImportError:
            resource = None
        def pick():
            if sys.platform == "win32":
                return "Scripts"
            return "bin"
        python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        open("a.txt", encoding="utf-8")
        open("a.bin", "rb")
        Path("a").read_text("utf-8")
        os.replace("a.tmp", "a.json")
        os.fork()  # windows-ok: this sample says so
    """
    assert findings(tmp_path, code) == []


def test_skip_markers_off_windows_guard_a_test_its_class_or_its_module(tmp_path: Path) -> None:
    code = """
        import os, signal, sys
        import pytest
        linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
        @pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
        def test_a():
            os.kill(1, signal.SIGKILL)
        @linux_only
        class TestB:
            def test_b(self):
                open("/proc/self/status", "rb")
        def test_c():
            if sys.platform == "win32":
                pytest.skip("POSIX only")
            os.getuid()
        @pytest.mark.skipif(os.environ.get("CI") is None, reason="not a platform test")
        def test_d():
            os.getuid()
    """
    assert findings(tmp_path, code) == [(18, "posix-only")]
    module = 'import os, pytest\npytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name == "nt", reason="x")]\nos.fork()\n'
    assert findings(tmp_path, module) == []
    assert findings(tmp_path, module.replace('os.name == "nt"', "False")) == [(3, "posix-only")]


def test_a_python_child_keeps_the_locale_encoding_unless_told_otherwise(tmp_path: Path) -> None:
    code = """
        import subprocess, sys
        subprocess.run([sys.executable, "-c", "print(1)"], text=True)
        subprocess.run([str(venv / "python"), "-V"], capture_output=True, text=True)
        subprocess.run([sys.executable, "-V"], text=True, env={"PYTHONIOENCODING": "utf-8"})
        subprocess.run(["git", "status"], text=True)
    """
    assert findings(tmp_path, code) == [(5, "encoding"), (6, "encoding")]


def test_pipeline_tests_scripts_and_bootstrap_have_no_unguarded_windows_isms() -> None:
    assert set(check_windows.DEFAULT_TARGETS) == {"pipeline", "tests", "scripts", "bootstrap.py"}
    found = check_windows.check()
    assert not found, "\n".join(map(str, found))


def test_every_allowed_exception_still_exists() -> None:
    """An allow-list entry whose code is gone is stale: remove it."""
    for path, _rule, function in check_windows.ALLOWED:
        source = (ROOT / path).read_text(encoding="utf-8")
        if function not in ("*", "<module>"):
            assert f"def {function.split('.')[-1]}(" in source, f"{path}: {function} no longer exists"
