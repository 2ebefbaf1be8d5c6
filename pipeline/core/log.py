"""Progress output: short timestamped lines on stderr, so long stages show what they are doing."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


def say(message: str) -> None:
    """Print one progress line."""
    print(f"[aipc {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(message: str) -> Iterator[dict]:
    """Announce a step, then report how long it took; yields a dict that receives ``seconds``."""
    say(f"{message} ...")
    info: dict = {}
    start = time.perf_counter()
    yield info
    info["seconds"] = round(time.perf_counter() - start, 3)
    say(f"{message}: done in {info['seconds']:.1f} s")


def console_safe() -> None:
    """Let a console that is not UTF-8 (cp1252 on Windows, output redirected) print anything: unknown
    characters (``Δ`` in the report, model output in chat) become ``?`` instead of a ``UnicodeEncodeError``."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
