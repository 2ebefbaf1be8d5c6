"""bootstrap.py: a failed install of the main venv stops with pip's own reason in one line, not a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_a_failed_pinned_install_is_pips_reason_in_one_line(tmp_path: Path) -> None:
    code = (
        "import runpy, sys; from pathlib import Path; bootstrap = runpy.run_path(sys.argv[1]); "
        "bootstrap['pip_install'].__globals__['VENV'] = Path(sys.argv[2]); "
        "bootstrap['pip_install'](sys.executable, ['--dry-run', '--no-index', 'aipc-no-such-package==1.0'])"
    )
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "bootstrap.py"), str(tmp_path)],
                          capture_output=True, text=True, encoding="utf-8", errors="replace")
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith(f"error: pip could not install aipc-no-such-package==1.0 into {tmp_path}: "
                           "No matching distribution found for aipc-no-such-package==1.0"), last
    assert (tmp_path / "aipc-pip.log").is_file()


def test_each_install_step_prints_a_start_line_and_its_elapsed_time(capsys) -> None:
    import runpy

    bootstrap = runpy.run_path(str(ROOT / "bootstrap.py"))
    with bootstrap["timed"]("2/3 this package"):
        print("pip's own lines")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[bootstrap] step 2/3 this package ..." and lines[1] == "pip's own lines"
    assert re.fullmatch(r"\[bootstrap\] step 2/3 this package: done in \d+ s", lines[2])
