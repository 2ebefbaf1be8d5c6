"""Peak RSS per validation cell: exact on Linux (VmHWM reset), sampled where the peak cannot be reset (Windows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.validation import records

MIB = 2**20


def touch(n_mib: int) -> np.ndarray:
    """Allocate and write ``n_mib`` MiB, so the pages are resident."""
    block = np.empty(n_mib * MIB, dtype=np.uint8)
    block.fill(1)
    return block


@pytest.mark.parametrize("resettable", [True, False], ids=["linux-vmhwm", "sampled-as-on-windows"])
def test_each_cell_reports_its_own_peak_not_the_process_so_far(resettable: bool, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if not resettable:  # Windows has no way to reset the peak working set: clear_refs is unwritable there
        monkeypatch.setattr(records, "CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    elif not records.CLEAR_REFS.exists():
        pytest.skip("no /proc/self/clear_refs here")
    assert records.reset_peak_rss() is resettable
    big = touch(400)
    first = records.peak_rss_mb()
    del big
    assert records.reset_peak_rss() is resettable
    small = touch(40)
    second = records.peak_rss_mb()
    del small
    assert first - second > 250, f"the second cell must not inherit the first one's peak ({first} vs {second} MB)"
    records.reset_peak_rss()
