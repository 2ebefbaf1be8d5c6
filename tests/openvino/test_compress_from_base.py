"""Compressing the cached uncompressed IR gives the same IR as exporting that point from scratch."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.config import ModelConfig
from pipeline.core.hashes import sha256_file
from pipeline.core.workspace import NNCF_CACHE_ENV, Workspace
from pipeline.hub import download
from pipeline.openvino import export as export_openvino
from pipeline.openvino import export_base as export_openvino_base
from pipeline.openvino.config import OpenVinoVariantConfig

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("cfg", [
    OpenVinoVariantConfig.from_conf(weight_format="int4", group_size=64, ratio=0.8, sym=False),
    OpenVinoVariantConfig.from_conf(weight_format="int8", group_size=-1, ratio=1.0),
], ids=["int4-g64-r0.8-asym", "int8"])
def test_compress_from_base_ir_equals_export_from_scratch(tmp_path: Path, cfg: OpenVinoVariantConfig) -> None:
    model = tmp_path / "model"
    download.run(ModelConfig.preset("tiny"), model)
    base = tmp_path / "base"
    export_openvino_base.run(model, base)
    base_bin = sha256_file(base / "openvino_model.bin")
    fast = export_openvino.run("fast", cfg, Workspace(model=model, out=tmp_path / "out"), base_dir=base)
    slow = export_openvino.run("slow", cfg, Workspace(model=model, out=tmp_path / "out"), base_dir=None)
    assert fast["compressed_from"] == "openvino_base" and slow["compressed_from"] == "pytorch"
    assert fast["timings"]["export_s"] == 0.0 < slow["timings"]["export_s"]
    assert fast["weight_layers"] == slow["weight_layers"] and fast["layers"] == slow["layers"]
    assert fast["nncf_rt_info"] == slow["nncf_rt_info"]
    for manifest in (fast, slow):  # NNCF leaves the rotary constants alone: f32 either way
        assert set(manifest["rotary_embedding"]["float_constants"].values()) == {"f32"}
        assert manifest["rotary_embedding"]["vs_transformers"]["max_abs_diff"] < 1e-4
    assert sha256_file(tmp_path / "out" / "fast" / "openvino_model.bin") == \
        sha256_file(tmp_path / "out" / "slow" / "openvino_model.bin")
    assert set(fast["files"]) == set(slow["files"])
    assert sha256_file(base / "openvino_model.bin") == base_bin, "the shared base IR must stay untouched"


def test_sweep_points_reuse_sensitivities_and_stay_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nncf.quantization.algorithms.weight_compression.mixed_precision import DataFreeCriterion

    monkeypatch.setenv(NNCF_CACHE_ENV, str(tmp_path / "nncf"))
    computed = []
    real = DataFreeCriterion._calc_sensitivity
    monkeypatch.setattr(DataFreeCriterion, "_calc_sensitivity", lambda *a, **k: computed.append(1) or real(*a, **k))
    model, base = tmp_path / "model", tmp_path / "base"
    download.run(ModelConfig.preset("tiny"), model)
    export_openvino_base.run(model, base)
    first = OpenVinoVariantConfig.from_conf(weight_format="int4", group_size=128, ratio=0.8, sym=True)
    export_openvino.run("first", first, Workspace(model=model, out=tmp_path / "out"), base_dir=base)
    [cache] = (tmp_path / "nncf" / "nncf_sensitivity").glob("*.json")
    scores = json.loads(cache.read_text(encoding="utf-8"))
    assert len(scores) == 8 and all(isinstance(v, float) and v > 0 for v in scores.values())  # 2 layers x 4 MatMuls
    second = OpenVinoVariantConfig.from_conf(weight_format="int4", group_size=64, ratio=0.6, sym=True)
    reused = export_openvino.run("reused", second, Workspace(model=model, out=tmp_path / "out"), base_dir=base)
    assert len(computed) == 1, "the second point must reuse the first point's sensitivities"
    scratch = export_openvino.run("scratch", second, Workspace(model=model, out=tmp_path / "out"), base_dir=None)
    assert reused["weight_layers"] == scratch["weight_layers"] and reused["weight_layers"]["int8"] > 0
    assert sha256_file(tmp_path / "out" / "reused" / "openvino_model.bin") == \
        sha256_file(tmp_path / "out" / "scratch" / "openvino_model.bin")
    assert len(computed) == 2 and json.loads(cache.read_text(encoding="utf-8")) == scores  # from scratch: computed, not cached
    again = export_openvino.run("again", first, Workspace(model=model, out=tmp_path / "out"), base_dir=base)  # warm cache, same process
    for name in ("openvino_model.xml", "openvino_model.bin"):  # OpenVINO's node counter does not leak into names
        assert sha256_file(tmp_path / "out" / "again" / name) == sha256_file(tmp_path / "out" / "first" / name), name
    assert again["files"]["openvino_model.xml"] == json.loads(
        (tmp_path / "out" / "first" / "manifest.json").read_text(encoding="utf-8"))["files"]["openvino_model.xml"]


def test_data_aware_points_collect_statistics_once_per_base_ir_and_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWQ and scale-estimation points of a sweep share NNCF's statistics (statistics_path), collected once."""
    from nncf.openvino.quantization import quantize_model

    monkeypatch.setenv(NNCF_CACHE_ENV, str(tmp_path / "nncf"))
    collected: list[Path] = []
    real = quantize_model.cache_weight_compression_statistics
    monkeypatch.setattr(quantize_model, "cache_weight_compression_statistics",
                        lambda *a, **k: collected.append(Path(a[-1])) or real(*a, **k))
    model, base, out = tmp_path / "model", tmp_path / "base", tmp_path / "out"
    download.run(ModelConfig.preset("tiny"), model)
    export_openvino_base.run(model, base)
    awq = OpenVinoVariantConfig.from_conf(weight_format="int4", group_size=64, ratio=1.0, awq=True, dataset="heldout", num_samples=4)
    scale = OpenVinoVariantConfig.from_conf(weight_format="int4", group_size=128, ratio=0.8, scale_estimation=True,
                                  dataset="heldout", num_samples=4)
    first = export_openvino.run("awq", awq, Workspace(model=model, out=out), base_dir=base)
    [stats] = (tmp_path / "nncf" / "nncf_statistics").iterdir()  # one whole folder: the private one was renamed
    assert (stats / "statistics_metadata.json").is_file()
    assert [p.name for p in collected] == [f".{stats.name}.tmp-{os.getpid()}"]  # NNCF wrote elsewhere first
    recorded = first["nncf_rt_info"]["weight_compression"]["advanced_parameters"]
    assert f"'statistics_path': 'nncf_statistics/{stats.name}'" in recorded  # the key, not where it was found
    export_openvino.run("scale", scale, Workspace(model=model, out=out), base_dir=base)
    assert len(collected) == 1, "the second point must reuse the first point's statistics"
    export_openvino.run("awq8", replace(awq, num_samples=8), Workspace(model=model, out=out), base_dir=base)
    assert len(collected) == 2 and len(list(stats.parent.iterdir())) == 2  # another dataset: its own statistics
    scratch = export_openvino.run("scratch", awq, Workspace(model=model, out=out), base_dir=None)  # cold, own IR
    assert len(collected) == 3 and scratch["compressed_from"] == "pytorch"
    assert sha256_file(out / "scratch" / "openvino_model.bin") == sha256_file(out / "awq" / "openvino_model.bin")
    again = export_openvino.run("again", awq, Workspace(model=model, out=out), base_dir=base)  # warm cache
    assert len(collected) == 3
    for name in ("openvino_model.xml", "openvino_model.bin"):  # warm cache: the same IR, rt_info included
        assert again["files"][name] == first["files"][name], name
