"""Memory tools every export uses: page trimming, read-ahead, huge pages, peak RSS.

Measured on a Phi-3-mini-shaped checkpoint (``benchmarks/memory_breakdown.py``); the OpenVINO-only
measures (bf16 trace, in-place fp16 rewrite, the export's RAM/disk table) are in :mod:`pipeline.openvino.lean`.

* :class:`MappedPageTrimmer` hands pages of memory-mapped weight files (the checkpoint while
  OpenVINO saves the float IR or the ONNX builder reads it, the base IR's ``.bin`` while NNCF
  compresses it) back to the kernel: an export reads each weight once or twice, and keeping every
  page it has read mapped holds a checkpoint's worth of RAM for nothing. It runs in a native thread
  (``_pagetrim.c``), since ``save_model`` holds the GIL, and also returns freed heap to the system.
  :func:`prefetch` reads the checkpoint ahead so that ``save_model`` does not wait for the disk.
* The RAM/disk checks that stop a heavy stage before it starts are :mod:`pipeline.core.resources`.

And one for time: :func:`use_huge_pages` backs large allocations with transparent huge pages, since
NNCF and OpenVINO allocate and free hundreds of MiB per weight and, in 4 KiB pages, the kernel's
page faults took more CPU than the compression itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

try:  # compiled at install on Linux (setup.py); optional
    from pipeline.core import _pagetrim
except ImportError:
    _pagetrim = None  # type: ignore[assignment]  # the optional module's usual spelling: None when not built

MADV_DONTNEED = 4  # unmap: the page stays in the page cache; used only on read-only mappings (nothing to lose)
MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim now; a request, never a discard (pages a program wrote stay)
HEAP_MIN_GAP_S = 1.0  # malloc_trim at most once a second (pipeline/core/_pagetrim.c has the same two numbers)
HEAP_DUTY = 20.0  # and at most 1/20 of the time: the next one waits 20x what the last one took


class MappedPageTrimmer:
    """Context manager: every ``interval`` seconds hand back the resident pages of the mappings of ``files``.

    Linux only (elsewhere a no-op). Read-only mappings (OpenVINO's IR mmap) are unmapped with
    ``MADV_DONTNEED``: the data stays in the page cache and a page touched again is mapped again.
    Writable copy-on-write mappings (safetensors' mmap) get ``MADV_PAGEOUT``, which can never drop
    a page a program has written. It also returns freed heap to the system (``malloc_trim``).

    The loop runs in a native thread (``pipeline/core/_pagetrim.c``, built at install on Linux) because a
    call that holds the GIL stops every Python thread: OpenVINO's ``save_model`` reads every weight
    page of the model while holding it. Without the compiled module a Python thread does the same
    between such calls (``native`` says which one runs).
    """

    def __init__(self, files: Iterable[Path], interval: float | None = None) -> None:
        self.inodes = {(os.stat(f).st_dev, os.stat(f).st_ino) for f in files if Path(f).is_file()}
        self.enabled = sys.platform.startswith("linux") and bool(self.inodes)
        self.native = self.enabled and _pagetrim is not None
        # A native pass costs ~1.5 ms of CPU for a 7 GiB checkpoint; at 0.1 s a fast read from the page
        # cache leaves at most a few hundred MiB resident between passes. A Python pass also takes the GIL.
        self.interval = interval or (0.1 if self.native else 0.5)
        self._heap_due = 0.0  # time.monotonic() before which malloc_trim is not called again (HEAP_* above)
        self.passes = 0  # trimming passes the native thread made (0 for the Python thread)
        self.heap_trims = 0  # malloc_trim calls (the native thread's, or trim()'s)
        self._handle: object | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aipc-page-trimmer", daemon=True)
        self._libc: ctypes.CDLL | None = None

    def _mappings(self) -> list[tuple[int, int, bool]]:
        """(start, length, writable) of this process's mappings of the tracked files."""
        found = []
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            if (os.makedev(major, minor), int(parts[4])) in self.inodes:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                found.append((start, end - start, "w" in parts[1]))
        return found

    def trim(self, heap: bool = False) -> None:
        """Hand back the resident pages of the tracked mappings once, then the freed heap when it is due.

        ``malloc_trim`` walks the whole heap and locks each arena while it does (50-180 ms in a process that
        has loaded torch, transformers and NNCF), so it runs at most every :data:`HEAP_MIN_GAP_S` and at most
        1/:data:`HEAP_DUTY` of the time, as in the native loop; ``heap=True`` runs it now. A no-op where the trimmer is
        not ``enabled`` (off Linux, or no tracked file), as entering and leaving it are.
        """
        if not self.enabled:
            return
        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)
            self._libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for start, length, writable in self._mappings():
            self._libc.madvise(
                ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_PAGEOUT if writable else MADV_DONTNEED
            )
        began = time.monotonic()
        if hasattr(self._libc, "malloc_trim") and (heap or began >= self._heap_due):  # glibc
            self._libc.malloc_trim(0)
            self.heap_trims += 1
            ended = time.monotonic()
            self._heap_due = ended + max(HEAP_MIN_GAP_S, (ended - began) * HEAP_DUTY)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.trim()

    def __enter__(self) -> MappedPageTrimmer:
        if self.native:
            self._handle = _pagetrim.start(sorted(self.inodes), self.interval)
        elif self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self.passes, heap_trims = _pagetrim.stop(self._handle)
            self.heap_trims += heap_trims
            self._handle = None
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        self.trim(heap=True)


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: malloc madvises its large blocks MADV_HUGEPAGE


def use_huge_pages() -> None:
    """Restart this process with glibc's malloc asking for transparent huge pages; call first thing.

    NNCF compresses a weight by running a small OpenVINO model on it that allocates and frees its
    buffers on every call, and glibc serves each such block with fresh 4 KiB pages: an int4
    compression of Phi-3-mini spent as much CPU in page faults and page zeroing as in computing.
    With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` those blocks get 2 MiB pages (where the kernel
    offers transparent huge pages on request) and the stage takes 35-40% less time; the output is
    the same bytes. The tunable is read only at process start, hence the restart (``os.execv`` with
    the same arguments). No-op where it does not apply (not Linux, not glibc >= 2.35, huge pages
    off), when already set, or with ``AIPC_NO_HUGE_PAGES=1``.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if not huge_pages_available() or "glibc.malloc.hugetlb" in tunables or os.environ.get("AIPC_NO_HUGE_PAGES"):
        return
    os.environ["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGE_PAGES_TUNABLE) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    except OSError:  # could not restart: go on without
        os.environ["GLIBC_TUNABLES"] = tunables


def huge_pages_available() -> bool:
    """Linux with glibc >= 2.35 (the ``hugetlb`` tunable) and transparent huge pages not ``never``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").split()  # "glibc 2.36"; musl has none
        if libc != "glibc" or tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
            return False
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except (OSError, ValueError, AttributeError):
        return False
    return "[never]" not in mode


def prefetch(files: Iterable[Path], headroom: float = 1.5) -> threading.Thread | None:
    """Start reading ``files`` into the page cache in the background; returns the thread, if started.

    An export maps its checkpoint lazily and first reads the weights inside OpenVINO's ``save_model``,
    whose time then includes the disk reads; a checkpoint read ahead while the model is loaded and
    traced is served from the page cache instead. Skipped when available RAM is below ``headroom``
    times the files' size (the pages would be evicted again before use).
    """
    import psutil

    files = [Path(f) for f in files if Path(f).is_file()]
    size = sum(f.stat().st_size for f in files)
    if not files or psutil.virtual_memory().available < headroom * size:
        return None

    def read_ahead() -> None:
        # Plain reads (the GIL is released while they wait): POSIX_FADV_WILLNEED reads only the first
        # few MiB of each file on Linux (capped at the device's readahead size).
        buffer = bytearray(16 << 20)
        for path in files:
            with contextlib.suppress(OSError), open(path, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass

    thread = threading.Thread(target=read_ahead, name="aipc-prefetch", daemon=True)
    thread.start()
    return thread


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint or IR folder (what an export memory-maps)."""
    folder = Path(folder)
    return sorted([*folder.glob("*.safetensors"), *folder.glob("openvino_model.bin")])


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux, macOS and Windows)."""
    if sys.platform == "win32":  # no resource module there
        import psutil

        return int(psutil.Process().memory_info().peak_wset)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024
