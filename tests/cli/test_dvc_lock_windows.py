"""The DVC-lock probe reads the holder's pid as zc.lockfile lays it out, so it works where byte 0 cannot be read.

On Windows, zc.lockfile (DVC's repository lock) locks byte 0 of ``.dvc/tmp/lock`` with ``msvcrt.locking``: a
mandatory lock, so another process reading that byte gets ``PermissionError`` (Linux has no mandatory locks, so
the file below refuses reads of byte 0 itself, as Windows does for the holder's locked range).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import zc.lockfile

from pipeline.cli.dvc_lock import lock_holder
from pipeline.core.errors import StageError


class ByteZeroLocked(io.FileIO):
    """A file whose byte 0 another process holds locked, as ``msvcrt.locking(fd, LK_NBLCK, 1)`` does on Windows."""

    def readinto(self, buffer):  # type: ignore[no-untyped-def]
        self.refuse_byte_zero()
        return super().readinto(buffer)

    def readall(self) -> bytes:
        self.refuse_byte_zero()
        return super().readall()

    def refuse_byte_zero(self) -> None:
        if self.tell() == 0:
            raise PermissionError(13, "Permission denied")  # what Windows raises for a read in a locked region


def test_the_holders_pid_is_read_past_the_byte_windows_keeps_locked(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    lock = zc.lockfile.LockFile(str(path))  # what DVC takes: writes " <pid>\n", byte 0 is the locked one
    try:
        with io.TextIOWrapper(io.BufferedReader(ByteZeroLocked(path, "r")), encoding="utf-8") as handle:
            with pytest.raises(PermissionError):
                handle.read()  # what reading from byte 0 does on Windows (the probe's old way)
            assert lock_holder(handle) == str(os.getpid())
    finally:
        lock.close()


def test_an_unreadable_lock_file_gives_no_pid_rather_than_a_traceback(tmp_path: Path) -> None:
    class Locked(ByteZeroLocked):
        def refuse_byte_zero(self) -> None:
            raise PermissionError(13, "Permission denied")  # a holder that locked the whole file

    (tmp_path / "lock").write_text(" 42\n", encoding="utf-8")
    with io.TextIOWrapper(io.BufferedReader(Locked(tmp_path / "lock", "r")), encoding="utf-8") as handle:
        assert lock_holder(handle) == ""


def test_compose_while_dvc_holds_the_lock_is_one_line_where_byte_zero_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.cli import dvc_lock

    def windows_open(path: Path, mode: str, encoding: str) -> io.TextIOWrapper:  # byte 0 unreadable, as on Windows
        return io.TextIOWrapper(io.BufferedRandom(ByteZeroLocked(path, mode.replace("+", "") + "+")), encoding=encoding)

    monkeypatch.setattr(dvc_lock, "open", windows_open, raising=False)
    dvc_tmp = tmp_path / ".dvc" / "tmp"
    dvc_tmp.mkdir(parents=True)
    lock = zc.lockfile.LockFile(str(dvc_tmp / "lock"))  # DVC's lock, held (flock here, msvcrt byte 0 on Windows)
    try:
        with pytest.raises(StageError) as refused, dvc_lock.dvc_repo_lock(dvc_tmp):
            pass
    finally:
        lock.close()
    line = str(refused.value)
    assert "\n" not in line and "DVC is running in this repository" in line
    assert f"(pid {os.getpid()} holds {(dvc_tmp / 'lock').as_posix()})" in line, line
