"""User-facing errors and the one-line reporting every stage entry point shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class StageError(RuntimeError):
    """A stage cannot go on; the message is one line that says what to do."""


def fail(message: str) -> NoReturn:
    """Raise a :class:`StageError` with ``message``."""
    raise StageError(message)


def run_main(entry: Callable[[], object]) -> None:
    """Run a stage's ``main``: user errors become one line on stderr and exit code 2."""
    from pipeline.config import ConfigError

    try:
        entry()
    except (StageError, ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was moved into artifacts/", file=sys.stderr)
        sys.exit(130)
