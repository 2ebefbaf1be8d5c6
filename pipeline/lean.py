"""Lean exports: keep peak memory well under the checkpoint size instead of twice it.

Measured on a Phi-3-mini-shaped checkpoint (``benchmarks/memory_breakdown.py``): the bare fp16 export
peaks at 2x the checkpoint because transformers converts the bf16 weights to fp16 in new memory while
every shard is still mapped; the int4 path peaks when NNCF compresses an IR whose 16-bit weights are
all mapped at once. Three measures, each keeping the output identical to the plain path:

* The model is loaded in the checkpoint's own dtype, so transformers hands out memory-mapped
  weights (no copy); an fp16 IR is then made from the bf16 trace by :func:`bf16_ir_to_f16`, which
  converts the weights in place in the IR's weight file, instead of converting in PyTorch.
* :class:`MappedPageTrimmer` hands pages of memory-mapped weight files (the checkpoint while
  OpenVINO saves the float IR or the ONNX builder reads it, the base IR's ``.bin`` while NNCF
  compresses it) back to the kernel: an export reads each weight once or twice, and keeping every
  page it has read mapped holds a checkpoint's worth of RAM for nothing. It runs in a native thread
  (``_pagetrim.c``), since ``save_model`` holds the GIL, and also returns freed heap to the system.
  :func:`prefetch` reads the checkpoint ahead so that ``save_model`` does not wait for the disk.
* :func:`check_resources` stops a heavy export before it starts when RAM or disk is short.

And one for time: :func:`use_huge_pages` backs large allocations with transparent huge pages, since
NNCF and OpenVINO allocate and free hundreds of MiB per weight and, in 4 KiB pages, the kernel's
page faults took more CPU than the compression itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

from pipeline.artifacts import remember_sha256
from pipeline.errors import fail

try:  # compiled at install on Linux (setup.py); optional
    from pipeline import _pagetrim
except ImportError:
    _pagetrim = None

MADV_DONTNEED = 4  # unmap: the page stays in the page cache; used only on read-only mappings (nothing to lose)
MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim now; a request, never a discard (pages a program wrote stay)
CHUNK_ELEMENTS = 1 << 24  # bf16 values per conversion step (32 MiB)


class MappedPageTrimmer:
    """Context manager: every ``interval`` seconds hand back the resident pages of the mappings of ``files``.

    Linux only (elsewhere a no-op). Read-only mappings (OpenVINO's IR mmap) are unmapped with
    ``MADV_DONTNEED``: the data stays in the page cache and a page touched again is mapped again.
    Writable copy-on-write mappings (safetensors' mmap) get ``MADV_PAGEOUT``, which can never drop
    a page a program has written. It also returns freed heap to the system (``malloc_trim``).

    The loop runs in a native thread (``pipeline/_pagetrim.c``, built at install on Linux) because a
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
        self.passes = 0  # trimming passes the native thread made (0 for the Python thread)
        self._handle = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aipc-page-trimmer", daemon=True)
        self._libc = None

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

    def trim(self) -> None:
        """Hand back the resident pages of the tracked mappings once, then the freed heap."""
        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)
            self._libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for start, length, writable in self._mappings():
            self._libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length),
                               MADV_PAGEOUT if writable else MADV_DONTNEED)
        if hasattr(self._libc, "malloc_trim"):  # glibc
            self._libc.malloc_trim(0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.trim()

    def __enter__(self) -> "MappedPageTrimmer":
        if self.native:
            self._handle = _pagetrim.start(sorted(self.inodes), self.interval)
        elif self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self.passes = _pagetrim.stop(self._handle)
            self._handle = None
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        if self.enabled:
            self.trim()


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
        libc, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"; musl has none
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


def checkpoint_dtype(model_dir: Path) -> str | None:
    """The dtype the checkpoint's weights are stored in, from ``config.json`` (e.g. ``bfloat16``)."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return config.get("torch_dtype") or config.get("dtype")


def bf16_ir_to_f16(xml_path: Path) -> int:
    """Rewrite the bf16 constants of an IR as fp16 in place; returns how many constants were rewritten.

    A bf16 checkpoint exported with ``compress_to_fp16`` keeps its bf16 weights (OpenVINO only
    compresses f32 constants); the plain path avoids that by converting the whole PyTorch model to
    fp16 first, in new memory. Both types are 2 bytes wide, so each constant is converted where it
    lies in the ``.bin``, 32 MiB at a time, and only the ``.xml`` types change. The rotary-embedding
    constants are left out (:mod:`pipeline.rotary`): a bf16 one is widened to f32 instead, exactly,
    its copy appended to the ``.bin``.
    """
    from pipeline.rotary import find_rotary, xml_graph

    xml_path = Path(xml_path)
    bin_path, tree = xml_path.with_suffix(".bin"), ET.parse(xml_path)
    consts = [(layer, layer.find("data")) for layer in tree.getroot().find("layers") if layer.get("type") == "Const"]
    rotary = find_rotary(*xml_graph(tree.getroot())[1:]).constants
    widen = [(layer, data) for layer, data in consts if layer.get("id") in rotary and data.get("element_type") == "bf16"]
    kept = {(int(d.get("offset")), int(d.get("size"))) for layer, d in consts if layer.get("id") in rotary}
    ranges = {(int(d.get("offset")), int(d.get("size"))): d.get("element_type") for _, d in consts}
    bf16 = sorted(r for r, t in ranges.items() if t == "bf16" and r not in kept)
    if not bf16 and not widen:
        return 0
    others = [r for r, t in ranges.items() if t != "bf16"]
    if any(o < b + n and b < o + m for b, n in bf16 for o, m in [*others, *kept]) or any(  # the serializer shares equal bytes
            b2 < b1 + n1 for (b1, n1), (b2, _) in zip(bf16, bf16[1:])):
        fail(f"{bin_path} shares a bf16 constant's bytes with another constant, so it cannot be converted in place: "
             "convert the checkpoint to float16 first (model.local_path) and export that")
    tail = _widen_bf16_to_f32(bin_path, [data for _, data in widen])
    remember_sha256(bin_path, _convert_in_place(bin_path, bf16, tail))
    rewritten = {layer.get("id") for layer, data in consts if data.get("element_type") == "bf16"} - rotary
    for layer, data in consts:
        if layer.get("id") in rewritten:
            data.set("element_type", "f16")
    _retype_ports(tree.getroot(), rewritten)
    _retype_ports(tree.getroot(), {layer.get("id") for layer, _ in widen}, "FP32")
    tree.write(xml_path.with_suffix(".xml.f16"), encoding="utf-8", xml_declaration=True)
    os.replace(xml_path.with_suffix(".xml.f16"), xml_path)
    return len(rewritten)


def _widen_bf16_to_f32(bin_path: Path, datas: list[ET.Element]) -> bytes:
    """The f32 bytes of the bf16 constants ``datas`` (XML ``data`` elements), to append to ``bin_path``.

    Each ``data`` element is pointed at its new place past the current end of the file and retyped f32.
    """
    import numpy as np

    tail, end = bytearray(), bin_path.stat().st_size
    with open(bin_path, "rb") as f:
        for data in datas:
            f.seek(int(data.get("offset")))
            bits = np.frombuffer(f.read(int(data.get("size"))), dtype=np.uint16)
            widened = (bits.astype(np.uint32) << 16).tobytes()  # bf16 is the top half of an f32: exact
            data.set("offset", str(end + len(tail)))
            data.set("size", str(len(widened)))
            data.set("element_type", "f32")
            tail += widened
    return bytes(tail)


def _convert_in_place(bin_path: Path, bf16: list[tuple[int, int]], tail: bytes = b"") -> str:
    """Convert the sorted, disjoint bf16 ``(offset, size)`` ranges of ``bin_path`` to fp16 in place.

    The file is read once from start to end, 32 MiB at a time (only the page cache holds it), and
    hashed on the way: returns the sha256 of the converted file (with ``tail`` appended to it),
    which the manifest then reuses.
    """
    import hashlib

    import torch

    digest, chunk = hashlib.sha256(), bytearray(2 * CHUNK_ELEMENTS)
    view, cursor = memoryview(chunk), 0
    with open(bin_path, "r+b") as f:
        for begin, size in [*bf16, (os.fstat(f.fileno()).st_size, 0)]:
            f.seek(cursor)
            while cursor < begin and (n := f.readinto(view[:min(len(chunk), begin - cursor)])):
                digest.update(view[:n])  # bytes of other constants, as they are
                cursor += n
            for start in range(begin, begin + size, len(chunk)):
                n = min(len(chunk), begin + size - start)
                f.seek(start)
                f.readinto(view[:n])
                values = torch.frombuffer(chunk, dtype=torch.bfloat16, count=n // 2)
                values.view(torch.float16).copy_(values.to(torch.float16))  # PyTorch's rounding, as the plain path
                f.seek(start)
                f.write(view[:n])
                digest.update(view[:n])
            cursor = begin + size
        f.seek(0, os.SEEK_END)
        f.write(tail)
        digest.update(tail)
    return digest.hexdigest()


def _retype_ports(root: ET.Element, const_ids: set[str], precision: str = "FP16") -> None:
    """Mark the outputs of the rewritten constants, and the inputs they feed, as ``precision``."""
    layers = {layer.get("id"): layer for layer in root.find("layers")}
    for const_id in const_ids:
        for port in layers[const_id].find("output"):
            port.set("precision", precision)
    for edge in root.find("edges"):
        if edge.get("from-layer") in const_ids:
            target = layers[edge.get("to-layer")].find("input")
            for port in target:
                if port.get("id") == edge.get("to-port"):
                    port.set("precision", precision)


def check_resources(what: str, ram_bytes: int, disk_bytes: int, disk_at: Path) -> None:
    """Stop with one line when available RAM or free disk is below what ``what`` needs.

    The disk need is also recorded (:func:`pipeline.artifacts.expect_disk`), so a disk that fills later
    anyway (another writer, ``AIPC_SKIP_RESOURCE_CHECK=1``) is reported with the size needed.
    """
    import psutil

    from pipeline.artifacts import expect_disk
    from pipeline.errors import size_text

    expect_disk(Path(disk_at), disk_bytes)
    if os.environ.get("AIPC_SKIP_RESOURCE_CHECK") == "1":
        return
    available = psutil.virtual_memory().available
    if available < ram_bytes:
        fail(f"{what} needs about {size_text(ram_bytes)} of RAM but {size_text(available)} is available: "
             f"free {size_text(ram_bytes - available)} (close other programs) or set AIPC_SKIP_RESOURCE_CHECK=1")
    disk_at = Path(disk_at)
    while not disk_at.exists():
        disk_at = disk_at.parent
    free = shutil.disk_usage(disk_at).free
    if free < disk_bytes:
        fail(f"{what} needs about {size_text(disk_bytes)} of disk under {disk_at} but {size_text(free)} is free: "
             f"free {size_text(disk_bytes - free)} or set AIPC_SKIP_RESOURCE_CHECK=1")


# Peak RAM and disk of each export, as (share of the checkpoint, fixed GiB), from
# benchmarks/memory_breakdown.py on the Phi-3-mini-shaped checkpoint (7.1 GiB of bf16), plus margin.
RAM_NEEDS = {("export", True): (0.25, 1.0), ("export", False): (2.1, 0.5),
             ("compress", True): (0.5, 1.0), ("compress", False): (1.5, 0.5)}
DISK_NEEDS = {"base": 1.05, "fp16": 1.05, "fp32": 2.1, "int8": 1.6, "int4": 1.45}  # staged output (+ float IR)
COMPRESSED_DISK = {"int8": 0.55, "int4": 0.45}


# Without page trimming (it needs Linux's madvise: no native trimmer, no MADV_PAGEOUT on Windows or macOS) the
# mapped checkpoint stays resident: the float export peaks at about 1.1x the checkpoint (read line by line for
# Windows, not measured there), compression at the base IR plus NNCF's working set.
UNTRIMMED_RAM_NEEDS = {"export": (1.15, 1.0), "compress": (1.2, 1.0)}


def pages_can_be_trimmed() -> bool:
    """Whether the lean path can hand mapped checkpoint pages back (Linux ``madvise``)."""
    return sys.platform.startswith("linux")


def needs(kind: str, weight_format: str, model_dir: Path, lean: bool = True) -> tuple[int, int]:
    """(RAM, disk) in bytes that an export of ``model_dir`` needs: ``kind`` is ``export`` or ``compress``."""
    size = sum(f.stat().st_size for f in weight_files(model_dir)) or 1
    share, fixed = RAM_NEEDS[(kind, lean)]
    if lean and not pages_can_be_trimmed():
        share, fixed = UNTRIMMED_RAM_NEEDS[kind]
    disk = COMPRESSED_DISK.get(weight_format, 1.05) if kind == "compress" else DISK_NEEDS.get(weight_format, 1.05)
    return int(share * size + fixed * 2**30), int(disk * size)


# The ONNX builder and the NPU library load the checkpoint in PyTorch and quantize it layer by layer. Not measured
# on the full model like the rows above (only the tiny one runs here): estimates, one float copy of the
# checkpoint plus half for the quantized layers and 1 GiB of runtime; disk is the output's share of the checkpoint.
ONNX_NEEDS = {"int4": (1.5, 1.0, 0.45), "int8": (1.5, 1.0, 0.6), "fp16": (1.5, 1.0, 1.05),
              "bf16": (1.5, 1.0, 1.05), "fp32": (2.5, 1.0, 2.1)}  # precision: (RAM share, RAM GiB, disk share)
NPU_LIB_NEEDS = {"int4": (1.5, 1.0, 0.45), "int8": (1.5, 1.0, 0.6), "fp16": (1.5, 1.0, 1.05)}


def needs_of(table: dict[str, tuple[float, float, float]], key: str, model_dir: Path) -> tuple[int, int]:
    """(RAM, disk) in bytes from a table of (RAM share of the checkpoint, fixed RAM GiB, disk share)."""
    size = sum(f.stat().st_size for f in weight_files(model_dir)) or 1
    share, fixed, disk = table.get(key, max(table.values()))
    return int(share * size + fixed * 2**30), int(disk * size)
