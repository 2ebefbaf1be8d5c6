"""Peak RSS per validation cell: exact on Linux (VmHWM reset), sampled where the peak cannot be reset (Windows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.validation import records

CELLS = """
import json, sys
from pathlib import Path
import numpy as np
from pipeline.validation import records
if sys.argv[1] == "sampled":  # Windows has no way to reset the peak working set: clear_refs is unwritable there
    records.CLEAR_REFS = Path(sys.argv[2]) / "missing" / "clear_refs"
def touch(n_mib):
    block = np.empty(n_mib * 2**20, dtype=np.uint8)
    block.fill(1)
    return block
resets = [records.reset_peak_rss()]
big = touch(400)
first = records.peak_rss_mb()
del big
resets.append(records.reset_peak_rss())
small = touch(40)
second = records.peak_rss_mb()
print(json.dumps({"resets": resets, "first": first, "second": second}))
"""


@pytest.mark.parametrize("resettable", [True, False], ids=["linux-vmhwm", "sampled-as-on-windows"])
def test_each_cell_reports_its_own_peak_not_the_process_so_far(resettable: bool, tmp_path: Path) -> None:
    """In a fresh process: a test process's other threads (left by earlier tests) would move its RSS meanwhile."""
    import json
    import subprocess
    import sys

    if resettable and not records.CLEAR_REFS.exists():
        pytest.skip("no /proc/self/clear_refs here")
    mode = "vmhwm" if resettable else "sampled"
    done = subprocess.run([sys.executable, "-c", CELLS, mode, str(tmp_path)], capture_output=True, text=True, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    first, second = got["first"], got["second"]
    assert got["resets"] == [resettable, resettable]
    assert first - second > 250, f"the second cell must not inherit the first one's peak ({first} vs {second} MB)"
