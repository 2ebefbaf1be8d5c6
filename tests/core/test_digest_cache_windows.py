"""The digest cache works on every platform: Windows identifies a file by its NTFS file index and ChangeTime.

``os.stat`` on Windows gives the volume serial number (``st_dev``) and the NTFS file index (``st_ino``), but its
``st_ctime`` is the creation time, which an in-place rewrite does not move; the cache reads NTFS's ChangeTime
instead. The tests marked ``win32`` run only there (this machine cannot call kernel32).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.core import hashes
from pipeline.core.hashes import file_digests, filetime_to_ns

windows_only = pytest.mark.skipif(sys.platform != "win32", reason="reads NTFS's ChangeTime through kernel32")


def old_file(path: Path, data: bytes) -> Path:
    """A file written, then dated 10 s back (its change time stays "now": accepted with RACY_NS = 0)."""
    path.write_bytes(data)
    os.utime(path, ns=(time.time_ns() - 10**10,) * 2)
    return path


def rewrite_in_place(path: Path) -> None:
    """Flip the first byte in place and put the modification time back, as a careless tool might."""
    st = path.stat()
    with open(path, "r+b") as handle:
        first = handle.read(1)[0]
        handle.seek(0)
        handle.write(bytes([first ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_filetime_converts_to_unix_nanoseconds() -> None:
    y2k = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    filetime = int((y2k - datetime.datetime(1601, 1, 1, tzinfo=datetime.UTC)).total_seconds()) * 10**7
    assert filetime_to_ns(filetime) == int(y2k.timestamp()) * 10**9
    assert filetime_to_ns(hashes.FILETIME_EPOCH + 1) == 100


def test_the_cache_remembers_and_reuses_a_digest_on_this_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "digests.json"
    monkeypatch.setenv("AIPC_DIGEST_CACHE", str(cache))
    monkeypatch.setattr(hashes, "RACY_NS", 0)
    path = old_file(tmp_path / "w.bin", b"weights" * 1000)
    first = file_digests([path])[path]
    entries = json.loads(cache.read_text(encoding="utf-8"))  # on Windows the cache was off: no file at all
    assert list(entries.values()) == [list(first)]
    key = next(iter(entries))
    assert key.split(":")[1] == str(path.stat().st_ino) != "0", "keyed by the file index"
    cache.write_text(json.dumps({key: ["from", "cache"]}), encoding="utf-8")
    assert file_digests([path])[path] == ("from", "cache"), "an unchanged file is not read again"
    rewrite_in_place(path)
    assert file_digests([path])[path] not in (first, ("from", "cache")), "a rewrite with mtime put back is read"


@windows_only
def test_ntfs_change_time_moves_on_a_rewrite_that_puts_mtime_back(tmp_path: Path) -> None:
    path = old_file(tmp_path / "w.bin", b"weights" * 1000)
    before = hashes.windows_change_time_ns(path)
    assert before > path.stat().st_mtime_ns, "os.utime itself is a change"
    time.sleep(0.05)
    rewrite_in_place(path)
    assert hashes.windows_change_time_ns(path) > before
    assert path.stat().st_ctime_ns < before, "os.stat's st_ctime is the creation time: it did not move"
