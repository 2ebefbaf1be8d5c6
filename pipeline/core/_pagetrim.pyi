"""Types of the native page trimmer (``_pagetrim.c``, built at install on Linux; see ``memory.MappedPageTrimmer``)."""

from collections.abc import Sequence

def start(files: Sequence[tuple[int, int]], interval: float, /) -> object:
    """Trim the mappings of ``files`` ((st_dev, st_ino) pairs) every ``interval`` seconds in a native thread."""

def stop(handle: object, /) -> tuple[int, int]:
    """Stop the thread ``handle`` names and wait for it; the trimming passes it made, and its ``malloc_trim`` calls."""
