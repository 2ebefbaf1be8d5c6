"""Lean exports: keep peak memory well under the checkpoint size instead of twice it.

Measured on a Phi-3-mini-shaped checkpoint (``benchmarks/memory_breakdown.py``): the bare fp16 export
peaks at 2x the checkpoint because transformers converts the bf16 weights to fp16 in new memory while
every shard is still mapped; the int4 path peaks when NNCF compresses an IR whose 16-bit weights are
all mapped at once. The measures keep the output identical to the plain path:

* The model is loaded in the checkpoint's own dtype, so transformers hands out memory-mapped
  weights (no copy); an fp16 IR is then made from the bf16 trace by :func:`bf16_ir_to_f16`, which
  converts the weights in place in the IR's weight file, instead of converting in PyTorch.
* The page trimming, read-ahead and huge pages that every export family uses are in :mod:`pipeline.core.memory`,
  the RAM/disk checks in :mod:`pipeline.core.resources`; :func:`needs` here is the OpenVINO export's RAM/disk table.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline.core.errors import fail
from pipeline.core.hashes import remember_sha256
from pipeline.core.memory import weight_files
from pipeline.core.ram_windows import WINDOWS_EXPORT

CHUNK_ELEMENTS = 1 << 24  # bf16 values per conversion step (32 MiB)


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
    constants are left out (:mod:`pipeline.openvino.rotary`): a bf16 one is widened to f32 instead, exactly,
    its copy appended to the ``.bin``.
    """
    from pipeline.openvino.rotary_graph import find_rotary, xml_graph

    xml_path = Path(xml_path)
    bin_path, tree = xml_path.with_suffix(".bin"), ET.parse(xml_path)
    layers = _child(tree.getroot(), "layers")
    consts = [(layer, _child(layer, "data")) for layer in layers if layer.get("type") == "Const"]
    rotary = find_rotary(*xml_graph(tree.getroot())[1:]).constants
    widen = [
        (layer, data) for layer, data in consts if layer.get("id") in rotary and data.get("element_type") == "bf16"
    ]
    kept = {(int(_attr(d, "offset")), int(_attr(d, "size"))) for layer, d in consts if layer.get("id") in rotary}
    ranges = {(int(_attr(d, "offset")), int(_attr(d, "size"))): d.get("element_type") for _, d in consts}
    bf16 = sorted(r for r, t in ranges.items() if t == "bf16" and r not in kept)
    if not bf16 and not widen:
        return 0
    others = [r for r, t in ranges.items() if t != "bf16"]
    if (
        any(o < b + n and b < o + m for b, n in bf16 for o, m in [*others, *kept])
        or any(  # the serializer shares equal bytes
            b2 < b1 + n1 for (b1, n1), (b2, _) in zip(bf16, bf16[1:])
        )
    ):
        fail(
            f"{bin_path} shares a bf16 constant's bytes with another constant, so it cannot be converted in place: "
            "convert the checkpoint to float16 first (model.local_path) and export that"
        )
    tail = _widen_bf16_to_f32(bin_path, [data for _, data in widen])
    remember_sha256(bin_path, _convert_in_place(bin_path, bf16, tail))
    rewritten = {_attr(layer, "id") for layer, data in consts if data.get("element_type") == "bf16"} - rotary
    for layer, data in consts:
        if layer.get("id") in rewritten:
            data.set("element_type", "f16")
    _retype_ports(tree.getroot(), rewritten)
    _retype_ports(tree.getroot(), {_attr(layer, "id") for layer, _ in widen}, "FP32")
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
            f.seek(int(_attr(data, "offset")))
            bits = np.frombuffer(f.read(int(_attr(data, "size"))), dtype=np.uint16)
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
            while cursor < begin and (n := f.readinto(view[: min(len(chunk), begin - cursor)])):
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
    layers = {layer.get("id"): layer for layer in _child(root, "layers")}
    for const_id in const_ids:
        for port in _child(layers[const_id], "output"):
            port.set("precision", precision)
    for edge in _child(root, "edges"):
        if edge.get("from-layer") in const_ids:
            target = _child(layers[edge.get("to-layer")], "input")
            for port in target:
                if port.get("id") == edge.get("to-port"):
                    port.set("precision", precision)


def _child(element: ET.Element, tag: str) -> ET.Element:
    """The ``tag`` child of an IR element (OpenVINO writes it for every layer, port list and net)."""
    found = element.find(tag)
    if found is None:
        raise ValueError(f"IR element <{element.tag} {element.attrib}> has no <{tag}>")
    return found


def _attr(element: ET.Element, name: str) -> str:
    """Attribute ``name`` of an IR element (ids, offsets and sizes are always written)."""
    value = element.get(name)
    if value is None:
        raise ValueError(f"IR element <{element.tag} {element.attrib}> has no {name}")
    return value


# Peak RAM and disk of each export, as (share of the checkpoint, fixed GiB), from
# benchmarks/memory_breakdown.py on the Phi-3-mini-shaped checkpoint (7.1 GiB of bf16), plus margin.
RAM_NEEDS = {
    ("export", True): (0.25, 1.0),
    ("export", False): (2.1, 0.5),
    ("compress", True): (0.5, 1.0),
    ("compress", False): (1.5, 0.5),
}
DISK_NEEDS = {"base": 1.05, "fp16": 1.05, "fp32": 2.1, "int8": 1.6, "int4": 1.45}  # staged output (+ float IR)
COMPRESSED_DISK = {"int8": 0.55, "int4": 0.45}


# Without page trimming (it needs Linux's madvise: no native trimmer, no MADV_PAGEOUT on Windows or macOS) the
# mapped checkpoint stays resident: the float export peaks at about 1.1x the checkpoint (read line by line for
# Windows, not measured there), compression at the base IR plus NNCF's working set.
UNTRIMMED_RAM_NEEDS = {"export": (1.15, 1.0), "compress": (1.2, 1.0)}


def pages_can_be_trimmed() -> bool:
    """Whether the lean path can hand mapped checkpoint pages back (Linux ``madvise``)."""
    return sys.platform.startswith("linux")


def native_trimmer() -> bool:
    """Whether the compiled trimmer (``pipeline/core/_pagetrim.c``) is there: OpenVINO's ``save_model`` holds the
    GIL, so only a native thread trims while a float IR is written (a Python one leaves it at about 1.1x)."""
    from pipeline.core import memory

    return memory._pagetrim is not None


def ram_share(kind: str, lean: bool, platform: str, trimmable: bool, native: bool = True) -> tuple[float, float]:
    """(share of the checkpoint, fixed GiB) of RAM an export of ``kind`` needs on ``platform`` (``sys.platform``),
    where mapped pages can be handed back (``trimmable``) and the native trimmer is built (``native``) or not."""
    if lean and platform == "win32":  # measured private memory: Windows drops mapped pages (core/ram_windows.py)
        return WINDOWS_EXPORT[kind]
    if lean and (not trimmable or (kind == "export" and not native)):
        return UNTRIMMED_RAM_NEEDS[kind]
    return RAM_NEEDS[(kind, lean)]


def needs(kind: str, weight_format: str, model_dir: Path, lean: bool = True) -> tuple[int, int]:
    """(RAM, disk) in bytes that an export of ``model_dir`` needs: ``kind`` is ``export`` or ``compress``.

    The lean rows hold on Linux with the native trimmer; without madvise (Windows, macOS), or for a float export
    without the native trimmer, the mapped checkpoint stays resident (:data:`UNTRIMMED_RAM_NEEDS`).
    """
    size = sum(f.stat().st_size for f in weight_files(model_dir)) or 1
    share, fixed = ram_share(kind, lean, sys.platform, pages_can_be_trimmed(), native_trimmer())
    disk = COMPRESSED_DISK.get(weight_format, 1.05) if kind == "compress" else DISK_NEEDS.get(weight_format, 1.05)
    return int(share * size + fixed * 2**30), int(disk * size)
