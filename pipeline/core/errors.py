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
    """What an interrupt did to ``artifacts/``, from what this process wrote (:mod:`pipeline.core.artifacts`)."""
    writing = ", ".join(sorted({p.as_posix() for p in (*WRITING, *KEPT)}))
    moved = ", ".join(p.as_posix() for p in MOVED)
    if moved:
        return (
            f"interrupted after {moved} was replaced"
            + (f"; {writing} keeps its previous contents" if writing else "")
            + ": rerun to finish"
        )
    if writing:
        return f"interrupted; nothing was moved into artifacts/ ({writing} keeps its previous contents)"
    return "interrupted; nothing was moved into artifacts/"


def _exit_now(code: int) -> NoReturn:
    """Exit without joining other threads: OpenVINO's telemetry thread otherwise prints tracebacks on Ctrl-C."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_main(entry: Callable[[], object]) -> None:
    """Run a stage's ``main``: user errors become one line on stderr and exit code 2.

    A full disk anywhere (ENOSPC/EDQUOT) is one line too; an interrupt says what it left in ``artifacts/``
    (outputs are replaced only when complete: :func:`pipeline.core.artifacts.staged_dir`) and exits at once.
    """
    from pipeline.core.config import ConfigError

    try:
        entry()
    except (StageError, ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = err.filename or "the output drive"
        print(
            f"error: disk full writing {where}: free space on that drive and rerun "
            "(outputs are replaced only when complete, so the previous ones are intact)",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: {interrupt_message()}", file=sys.stderr)
        _exit_now(130)
