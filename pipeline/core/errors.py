"""User-facing errors and the one-line reporting every stage entry point shares."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

# What this process did to artifacts/ (kept by pipeline.core.artifacts.staged_dir), for the interrupt message.
WRITING: set[Path] = set()  # outputs this process is writing now (staged_dir blocks)
MOVED: list[Path] = []  # outputs this process has replaced so far
KEPT: list[Path] = []  # outputs whose writing failed or was interrupted: left as they were


class StageError(RuntimeError):
    """A stage cannot go on; the message is one line that says what to do."""


def fail(message: str) -> NoReturn:
    """Raise a :class:`StageError` with ``message``."""
    raise StageError(message)


def size_text(n_bytes: float) -> str:
    """A size for people: ``1.4 GiB``; under 1 GiB ``37 MiB`` or ``0.4 MiB`` (never "0.0 GiB")."""
    if abs(n_bytes) >= 2**30:
        return f"{n_bytes / 2**30:.1f} GiB"
    mib = n_bytes / 2**20
    return f"{mib:.0f} MiB" if abs(mib) >= 10 else f"{mib:.1f} MiB"


def interrupt_message() -> str:
    """What an interrupt did to ``artifacts/``, from what this process wrote (:mod:`pipeline.core.artifacts`).

    An output this process was writing keeps its previous contents only if it had any: DVC deletes the
    outputs of most stages (download, reference, the base IR, the validations) before it runs them.
    """
    unfinished = sorted({p.as_posix(): p for p in (*WRITING, *KEPT)}.items())
    kept = ", ".join(name for name, p in unfinished if p.exists())
    gone = ", ".join(name for name, p in unfinished if not p.exists())
    said = "; ".join(
        [*([f"{kept} keeps its previous contents"] if kept else []), *([f"nothing is at {gone} now"] if gone else [])]
    )
    moved = ", ".join(p.as_posix() for p in MOVED)
    if moved:
        return f"interrupted after {moved} was replaced" + (f"; {said}" if said else "") + ": rerun to finish"
    if gone:
        return f"interrupted; nothing was moved into artifacts/ ({said}): rerun to build it"
    if kept:
        return f"interrupted; nothing was moved into artifacts/ ({said})"
    return "interrupted; nothing was moved into artifacts/"


def _exit_now(code: int) -> NoReturn:
    """Exit without joining other threads: OpenVINO's telemetry thread otherwise prints tracebacks on Ctrl-C."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)  # a read-only folder or drive, a file another program holds
INTACT = "outputs are replaced only when complete, so the previous ones are intact"


def os_error_line(err: OSError) -> str | None:
    """One line for a full disk or a refused write (naming the output being written), None for other errors."""
    where = err.filename or "the output drive"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full writing {where}: free space on that drive and rerun ({INTACT})"
    if err.errno not in REFUSED:
        return None
    target = f"writing {KEPT[-1].as_posix()} ({where})" if KEPT else f"on {where}"
    return (
        f"{err.strerror or 'permission denied'} {target}: make that folder writable (or close the program that "
        f"holds the file) and rerun ({INTACT})"
    )


def run_main(entry: Callable[[], object]) -> None:
    """Run a stage's ``main``: user errors become one line on stderr and exit code 2.

    A full disk anywhere (ENOSPC/EDQUOT) or a refused write (a read-only output folder) is one line too
    (:func:`os_error_line`); an interrupt says what it left in ``artifacts/`` (outputs are replaced only when
    complete: :func:`pipeline.core.artifacts.staged_dir`) and exits at once.
    """
    from pipeline.core.config import ConfigError

    try:
        entry()
    except (StageError, ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        line = os_error_line(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: {interrupt_message()}", file=sys.stderr)
        _exit_now(130)
