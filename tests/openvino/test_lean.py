"""Lean exports (pipeline/openvino/lean.py): same IR as the plain path, pages handed back, early RAM/disk check."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.core import memory, resources
from pipeline.core.config import ModelConfig
from pipeline.core.errors import StageError
from pipeline.core.hashes import sha256_file
from pipeline.core.workspace import NNCF_CACHE_ENV, Workspace
from pipeline.hub import download
from pipeline.openvino import export as export_openvino
from pipeline.openvino import export_base as export_openvino_base
from pipeline.openvino import lean
from pipeline.openvino.config import OpenVinoVariantConfig


def bf16_tiny(dest: Path) -> Path:
    """The embedded tiny Phi-3 stored in bf16, like the real Phi-3 checkpoints."""
    import torch
    from safetensors.torch import load_file, save_file

    download.run(ModelConfig.preset("tiny"), dest)
    weights = dest / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    config.pop("dtype", None)
    config["torch_dtype"] = "bfloat16"
    (dest / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dest


@pytest.mark.slow
def test_lean_fp16_export_of_bf16_checkpoint_equals_plain(tmp_path: Path) -> None:
    model = bf16_tiny(tmp_path / "model")
    assert lean.checkpoint_dtype(model) == "bfloat16"
    cfg = OpenVinoVariantConfig.from_conf(weight_format="fp16")
    plain = export_openvino.run("plain", cfg, Workspace(model=model, out=tmp_path / "out"), base_dir=None, lean=False)
    fast = export_openvino.run("lean", cfg, Workspace(model=model, out=tmp_path / "out"), base_dir=None, lean=True)
    assert fast["weight_layers"] == plain["weight_layers"] and fast["layers"] == plain["layers"]
    xml = (tmp_path / "out" / "lean" / "openvino_model.xml").read_text(encoding="utf-8")
    assert 'element_type="bf16"' not in xml and 'precision="BF16"' not in xml
    assert sha256_file(tmp_path / "out" / "lean" / "openvino_model.bin") == \
        sha256_file(tmp_path / "out" / "plain" / "openvino_model.bin"), "fp16 weights must be bit-identical"
    assert logits(tmp_path / "out" / "lean") == pytest.approx(logits(tmp_path / "out" / "plain"), abs=1e-3)


def logits(ir_dir: Path) -> list[float]:
    """Last-position logits of the IR for a fixed prompt (CPU)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(ir_dir / "openvino_model.xml"), "CPU")
    ids = np.array([[1, 450, 4996, 17354, 1701, 432]], dtype=np.int64)
    out = compiled({"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "position_ids": np.arange(ids.shape[1])[None], "beam_idx": np.zeros(1, dtype=np.int32)})
    return [float(x) for x in out["logits"][0, -1, :64]]


@pytest.mark.slow
def test_lean_compression_equals_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NNCF_CACHE_ENV, str(tmp_path / "nncf"))
    model = bf16_tiny(tmp_path / "model")  # bf16 weights in the base IR, as with the real Phi-3
    base_plain = export_openvino_base.run(model, tmp_path / "base-plain", lean=False)
    base_lean = export_openvino_base.run(model, tmp_path / "base-lean", lean=True)
    assert base_lean["files"]["openvino_model.bin"] == base_plain["files"]["openvino_model.bin"]
    cfg = OpenVinoVariantConfig.from_conf(weight_format="int4", group_size=64, ratio=0.8, sym=True)  # mixed precision
    plain = export_openvino.run("plain", cfg, Workspace(model=model, out=tmp_path / "out"), base_dir=tmp_path / "base-plain", lean=False)
    fast = export_openvino.run("lean", cfg, Workspace(model=model, out=tmp_path / "out"), base_dir=tmp_path / "base-lean", lean=True)
    assert len(list((tmp_path / "nncf" / "nncf_sensitivity").iterdir())) == 1, "only the lean path caches sensitivities"
    assert fast["weight_layers"] == plain["weight_layers"] and fast["nncf_rt_info"] == plain["nncf_rt_info"]
    assert fast["weight_layers"]["int4"] > 0 and fast["weight_layers"]["int8"] > 0
    assert sha256_file(tmp_path / "out" / "lean" / "openvino_model.bin") == \
        sha256_file(tmp_path / "out" / "plain" / "openvino_model.bin")


@pytest.mark.skipif(not memory.huge_pages_available(), reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_stage_restarts_with_malloc_on_huge_pages() -> None:
    import subprocess

    # 64 MiB through malloc, as OpenVINO allocates (numpy asks for huge pages by itself), touched
    probe = ("import ctypes, os, sys; from pipeline.core.memory import use_huge_pages; "
             "print('start', flush=True); use_huge_pages(); libc = ctypes.CDLL(None); "
             "libc.malloc.restype = ctypes.c_void_p; block = libc.malloc(64 << 20); "
             "libc.memset(ctypes.c_void_p(block), 1, 64 << 20); "
             "huge = [l.split()[1] for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')][0]; "
             "print(os.environ.get('GLIBC_TUNABLES'), huge, sys.argv[1:])")

    def run(**env: str) -> list[str]:
        environment = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "AIPC_NO_HUGE_PAGES")}
        done = subprocess.run([sys.executable, "-c", probe, "x", "--y"], capture_output=True, text=True,
                              env={**environment, **env}, check=True, timeout=120)
        return done.stdout.split("\n")

    start, first, last, _ = run(GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert start == first == "start", "restarted once, output before the restart kept"
    tunables, huge_kib, argv = last.split(" ", 2)
    assert tunables == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1" and argv == "['x', '--y']"
    assert int(huge_kib) >= 4 * 1024, "the 64 MiB block lands on huge pages (2 MiB each)"
    start, last, _ = run(AIPC_NO_HUGE_PAGES="1")
    tunables, huge_kib, _ = last.split(" ", 2)
    assert tunables == "None", "the escape hatch leaves the process alone"
    if "[madvise]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
        assert int(huge_kib) == 0, "without the tunable, malloc's blocks get 4 KiB pages"


def test_bf16_rewrite_gives_torch_fp16_values(tmp_path: Path) -> None:
    import openvino as ov
    import torch
    from openvino import opset13 as ops

    weight = torch.randn(64, 48) * 3
    weight[0, :4] = torch.tensor([1e-6, -7e-8, 70000.0, 0.1])  # fp16 subnormal, underflow, overflow, rounding
    bits = weight.to(torch.bfloat16).view(torch.int16).numpy().view(np.float16)
    x = ops.parameter([1, 48], ov.Type.f32, name="x")
    const = ops.constant(ov.Tensor(bits, bits.shape, ov.Type.bf16), shared_memory=False)
    scale = ops.constant(np.linspace(0.5, 2.0, 64, dtype=np.float32))  # f32 bytes beside the bf16 ones
    model = ov.Model([ops.multiply(ops.matmul(x, ops.convert(const, ov.Type.f32), False, True), scale)], [x])
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    assert lean.bf16_ir_to_f16(tmp_path / "m.xml") == 1
    converted = (tmp_path / "m.bin").read_bytes()
    assert sha256_file(tmp_path / "m.bin") == hashlib.sha256(converted).hexdigest(), "hash taken while converting"
    [got] = [op for op in ov.Core().read_model(tmp_path / "m.xml").get_ordered_ops()
             if op.get_type_name() == "Constant" and list(op.get_output_shape(0)) == [64, 48]]
    assert got.get_output_element_type(0) == ov.Type.f16
    want = weight.to(torch.bfloat16).to(torch.float16).numpy()
    assert np.array_equal(got.get_data().view(np.uint16), want.view(np.uint16))
    assert lean.bf16_ir_to_f16(tmp_path / "m.xml") == 0, "a second rewrite finds nothing to do"


def test_bf16_rewrite_widens_rotary_constants_to_f32(tmp_path: Path) -> None:
    """A bf16 constant feeding Cos/Sin is not rounded to fp16: it becomes f32 (exact), appended to the .bin."""
    import openvino as ov
    import torch
    from openvino import opset13 as ops

    weight = torch.randn(64, 48).to(torch.bfloat16)
    inv_freq = (10000.0 ** -(torch.arange(0, 16, 2) / 16)).to(torch.bfloat16) / 1.02  # down to 1e-4: fp16 would round
    as_bf16 = lambda t: ov.Tensor(t.view(torch.int16).numpy().view(np.float16), list(t.shape), ov.Type.bf16)  # noqa: E731
    x = ops.parameter([1, 48], ov.Type.f32, name="x")
    positions = ops.parameter([1, 8], ov.Type.f32, name="position_ids")
    matmul = ops.matmul(x, ops.convert(ops.constant(as_bf16(weight), shared_memory=False), ov.Type.f32), False, True)
    angles = ops.multiply(positions, ops.convert(ops.constant(as_bf16(inv_freq), shared_memory=False), ov.Type.f32))
    model = ov.Model([matmul, ops.cos(angles), ops.sin(angles)], [x, positions])
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    size = (tmp_path / "m.bin").stat().st_size
    assert lean.bf16_ir_to_f16(tmp_path / "m.xml") == 1, "only the weight is rewritten to fp16"
    assert (tmp_path / "m.bin").stat().st_size == size + 8 * 4
    assert sha256_file(tmp_path / "m.bin") == hashlib.sha256((tmp_path / "m.bin").read_bytes()).hexdigest()
    read = ov.Core().read_model(tmp_path / "m.xml")
    types = sorted((op.get_output_element_type(0).to_string(), list(op.get_output_shape(0)))
                   for op in read.get_ordered_ops() if op.get_type_name() == "Constant")
    assert types == [("f16", [64, 48]), ("f32", [8])]
    [widened] = [op for op in read.get_ordered_ops() if op.get_type_name() == "Constant" and op.get_output_shape(0) == [8]]
    assert np.array_equal(widened.get_data(), inv_freq.float().numpy()), "bf16 -> f32 is exact"
    compiled = ov.Core().compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    pos = np.arange(4000, 4008, dtype=np.float32)[None]
    cos = compiled({"x": np.zeros((1, 48), np.float32), "position_ids": pos})[1]
    np.testing.assert_allclose(cos, np.cos(pos * inv_freq.float().numpy()), atol=1e-3)
    assert lean.bf16_ir_to_f16(tmp_path / "m.xml") == 0, "a second rewrite finds nothing to do"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page trimming reads /proc (Linux)")
def test_trimmer_hands_back_mapped_pages(tmp_path: Path) -> None:
    mapped, values = mapped_weights(tmp_path / "weights.bin", 64)
    before = rss_file()
    checksum = float(values.sum(dtype=np.float64))  # touches every page
    touched = rss_file()
    trimmer = memory.MappedPageTrimmer([tmp_path / "weights.bin"])
    trimmer.trim()
    after = rss_file()
    assert touched - before > 48 * 2**20 and touched - after > 48 * 2**20
    trimmer.trim()  # pages every time; the heap at most once a second (HEAP_MIN_GAP_S) unless asked
    assert trimmer.heap_trims == 1
    trimmer.trim(heap=True)
    assert trimmer.heap_trims == 2
    assert float(values.sum(dtype=np.float64)) == checksum, "dropped pages read back intact"
    del values
    mapped.close()


def mapped_weights(path: Path, mib: int, access: int = mmap.ACCESS_READ) -> tuple[mmap.mmap, np.ndarray]:
    """A file of ``mib`` MiB of random float32 on disk, not in the page cache, memory-mapped.

    ``mmap.ACCESS_COPY`` maps it the way safetensors does: private and writable (copy-on-write).
    """
    with open(path, "wb") as f:
        f.write(np.random.default_rng(1).standard_normal(mib * 2**18, dtype=np.float32).tobytes())
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # cold, like a checkpoint just opened
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=access)
    return mapped, np.frombuffer(mapped, dtype=np.float32)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page trimming reads /proc (Linux)")
def test_native_trimmer_acts_while_a_call_holds_the_gil(tmp_path: Path) -> None:
    import ctypes

    assert memory._pagetrim is not None, "the native trimmer was not built (setup.py; needs a C compiler)"
    mapped, values = mapped_weights(tmp_path / "weights.bin", 64)
    checksum = float(values.sum(dtype=np.float64))  # touches every page
    touched = rss_file()
    with memory.MappedPageTrimmer([tmp_path / "weights.bin"], interval=0.02) as trimmer:
        assert trimmer.native and not trimmer._thread.is_alive(), "no Python thread runs"
        ctypes.PyDLL(None).usleep(400_000)  # a C call that keeps the GIL, like OpenVINO's save_model
        during = rss_file()
    assert trimmer.passes >= 3
    # the heap is trimmed at the first pass, then not for a second (malloc_trim locks every arena), plus at exit
    assert trimmer.heap_trims == 2, (trimmer.passes, trimmer.heap_trims)
    assert touched - during > 48 * 2**20, "pages handed back while the GIL was held"
    assert float(values.sum(dtype=np.float64)) == checksum, "dropped pages read back intact"
    del values
    mapped.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page trimming reads /proc (Linux)")
@pytest.mark.parametrize("native", [True, False])
def test_save_model_peak_with_native_and_python_trimmer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         native: bool) -> None:
    """What the native thread is for: ``save_model`` keeps the GIL while it reads every weight page."""
    import openvino as ov
    from openvino import opset13 as ops

    if not native:
        monkeypatch.setattr(memory, "_pagetrim", None)
    mib = 256
    mapped, values = mapped_weights(tmp_path / "weights.bin", mib, mmap.ACCESS_COPY)
    weight = ops.constant(ov.Tensor(values.reshape(-1, 1024), shared_memory=True), shared_memory=True)
    x = ops.parameter([1, 1024], ov.Type.f32, name="x")
    model = ov.Model([ops.matmul(x, weight, False, True)], [x])
    with memory.MappedPageTrimmer([tmp_path / "weights.bin"], interval=0.01) as trimmer:
        # Return the freed heap first: in a process that has run other tests, a trim that released heap between
        # resetting the peak and reading the RSS would count as growth here.
        trimmer.trim(heap=True)
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        start = status_kib("VmRSS")
        ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
        growth = (status_kib("VmHWM") - start) / 1024
    assert trimmer.native is native
    assert (tmp_path / "m.bin").stat().st_size == mib * 2**20
    if native:
        assert growth < mib / 2, f"peak grew by {growth:.0f} MiB while saving {mib} MiB of mapped weights"
    else:
        assert growth > mib * 0.9, "without the native thread every page read by save_model stays resident"
    del weight, model, values
    mapped.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and posix_fadvise (Linux)")
def test_prefetch_reads_weights_into_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    mapped, values = mapped_weights(tmp_path / "weights.bin", 32, mmap.ACCESS_COPY)  # not in the page cache
    assert cached_fraction(mapped) < 0.5
    before = rss_file()
    thread = memory.prefetch([tmp_path / "weights.bin"])
    assert thread is not None
    thread.join(timeout=60)
    assert cached_fraction(mapped) > 0.9, "the whole file is read ahead"
    assert rss_file() - before < values.nbytes // 2, "read into the page cache, not mapped into this process"
    size = values.nbytes
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=size))
    assert memory.prefetch([tmp_path / "weights.bin"]) is None, "no read-ahead when RAM is short"
    del values
    mapped.close()


def cached_fraction(mapped: mmap.mmap) -> float:
    """Share of a mapping's pages that are in the page cache (``mincore``), without touching them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    pages = (len(mapped) + page - 1) // page
    vec = (ctypes.c_ubyte * pages)()
    address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
    assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(len(mapped)), vec) == 0
    return sum(v & 1 for v in vec) / pages


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def rss_file() -> int:
    """File-backed resident memory of this process, bytes."""
    return status_kib("RssFile") * 1024


def test_export_stops_early_when_ram_is_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    model = tmp_path / "model"
    download.run(ModelConfig.preset("tiny"), model)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=200 * 2**20))
    out_root = tmp_path / "out"
    with pytest.raises(StageError) as exc:
        export_openvino.run("fp16", OpenVinoVariantConfig.from_conf(weight_format="fp16"), Workspace(model=model, out=out_root), base_dir=None)
    message = str(exc.value)
    assert "needs about 1.0 GiB of RAM but 200 MiB is available: free 829 MiB" in message and "\n" not in message
    assert not out_root.exists() or not any(out_root.iterdir()), "nothing may be written"


def test_export_stops_early_when_disk_is_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    model = tmp_path / "model"
    download.run(ModelConfig.preset("tiny"), model)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(StageError) as exc:
        export_openvino_base.run(model, tmp_path / "base")
    assert "of disk under" in str(exc.value) and "is free: free" in str(exc.value)
    assert not (tmp_path / "base").exists()
    monkeypatch.setenv("AIPC_SKIP_RESOURCE_CHECK", "1")
    resources.check_resources("x", 2**60, 2**60, tmp_path)  # the documented escape hatch


def test_resource_check_expects_the_whole_checkpoint_where_pages_cannot_be_trimmed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    download.run(ModelConfig.preset("tiny"), model)
    size = sum(f.stat().st_size for f in memory.weight_files(model))
    trimmed, _ = lean.needs("export", "fp16", model)
    monkeypatch.setattr(lean, "pages_can_be_trimmed", lambda: False)  # Windows: no madvise, no native trimmer
    untrimmed, _ = lean.needs("export", "fp16", model)
    assert untrimmed - trimmed == pytest.approx((1.15 - 0.25) * size, abs=2)
