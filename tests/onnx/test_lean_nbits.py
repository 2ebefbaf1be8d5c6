"""The ONNX export's lean int4/int8 pass (pipeline/onnx/lean_nbits.py): the builder's bytes, one weight at a time.

Each case builds the same tiny checkpoint twice through ``pipeline.onnx.export.build``: once as the stage does
(lean pass), once with the builder's own ``to_nbits`` (the whole float graph in one ModelProto), and compares the
files byte for byte. Full-size evidence (the same bytes on Phi-3-mini's shapes) is in docs/onnx.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import ASSETS_DIR, ModelConfig
from pipeline.core.errors import StageError
from pipeline.hub import download
from pipeline.onnx import lean_nbits
from pipeline.onnx.config import OnnxVariantConfig
from pipeline.onnx.export import build, builder_options

CASES = {  # conf/onnx/default.yaml's variants, plus what the lean pass must also cover or leave to the builder
    "dml_int4": {"execution_provider": "dml", "precision": "int4", "block_size": 128, "is_symmetric": True,
                 "algo_config": "default", "enable_dml_graph": True},
    "cpu_int4": {"execution_provider": "cpu", "precision": "int4", "block_size": 32, "accuracy_level": 4,
                 "extra_options": {"windowed_kv_cache": False}},
    "cpu_int8": {"execution_provider": "cpu", "precision": "int8"},
    "cpu_int4_asym_untied": {"execution_provider": "cpu", "precision": "int4", "is_symmetric": False,
                             "extra_options": {"shared_embeddings": False}},
    "cpu_int4_lm_head_excluded": {"execution_provider": "cpu", "precision": "int4",
                                  "extra_options": {"nodes_to_exclude": ["/lm_head/MatMul"]}},
    "cpu_int4_rtn": {"execution_provider": "cpu", "precision": "int4", "algo_config": "rtn"},  # the builder's own
}
LEAN = {"dml_int4", "cpu_int4", "cpu_int8", "cpu_int4_asym_untied", "cpu_int4_lm_head_excluded"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's tiny Phi-3 (tied embeddings) and the tiny Phi-4 (tied, GQA, partial rotary)."""
    tiny = tmp_path_factory.mktemp("tiny") / "model"
    download.run(ModelConfig.preset("tiny"), tiny)
    return {"tiny": tiny, "tiny_phi4": ASSETS_DIR / "tiny_phi4"}


def quantized_weights(folder: Path) -> list[str]:
    """The float weights the quantizer replaced: its ``<weight>_Q4`` / ``_Q8`` initializers, named back."""
    import onnx

    names = [t.name for t in onnx.load(folder / "model.onnx", load_external_data=False).graph.initializer]
    return sorted(n[:-3] for n in names if n.endswith(("_Q4", "_Q8")))


def digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.glob("model.onnx*")}


def build_twice(checkpoint: Path, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Build ``case`` with the lean pass and with the builder's own; the files' digests and what the pass did."""
    cfg = OnnxVariantConfig.from_conf(**CASES[case])
    seen: dict[str, Any] = {"detached": []}
    detach = lean_nbits.detachable_weights

    def recording(model: Any) -> dict[str, Any]:
        seen["detached"].append(sorted(weights := detach(model)))
        return weights

    monkeypatch.setattr(lean_nbits, "detachable_weights", recording)
    out = {}
    for how in ("lean", "builder"):
        if how == "builder":
            monkeypatch.setattr(lean_nbits, "lean_applies", lambda model: False)
        folder = tmp_path / how
        folder.mkdir()
        build(checkpoint, folder, cfg, builder_options(cfg))
        out[how] = digests(folder)
        seen.setdefault("quantized", quantized_weights(folder))
    return {**out, **seen}


@pytest.mark.parametrize(("model", "case"), [("tiny", case) for case in CASES] + [
    ("tiny_phi4", "dml_int4"), ("tiny_phi4", "cpu_int4"), ("tiny_phi4", "cpu_int4_asym_untied")])
def test_the_lean_pass_writes_the_builders_bytes(
    model: str, case: str, checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = build_twice(checkpoints[model], tmp_path, case, monkeypatch)
    assert set(got["lean"]) == {"model.onnx", "model.onnx.data"}
    assert got["lean"] == got["builder"]
    if case in LEAN:  # every weight the quantizer replaced was left out of the proto and handed over alone
        assert got["detached"] == [got["quantized"]] and got["quantized"]
    else:
        assert got["detached"] == []


def test_an_unknown_builder_version_stops_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.19.0" if name == "onnxruntime-genai" else real(name))
    with pytest.raises(StageError) as refused, lean_nbits.lean_quantization():
        pass
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("onnxruntime-genai 0.19.0 is installed") and lean_nbits.KNOWN_BUILDER in message


def test_the_builders_method_is_restored_afterwards() -> None:
    import sys

    import onnxruntime_genai.models.builder  # noqa: F401

    base = sys.modules["builders.base"]
    original = base.Model.to_nbits
    with lean_nbits.lean_quantization():
        assert base.Model.to_nbits is not original
    assert base.Model.to_nbits is original


def test_the_graph_names_the_builders_commit_not_the_projects(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """The builder's `git rev-parse HEAD` runs above its own file: in `.venv/lib` that is this project's commit."""
    import onnx
    import onnxruntime_genai as og

    cfg = OnnxVariantConfig.from_conf(**CASES["cpu_int4"])
    build(checkpoints["tiny"], tmp_path, cfg, builder_options(cfg))
    stamped = onnx.load(tmp_path / "model.onnx", load_external_data=False).producer_version
    assert stamped == f"{og.__version__}+{og.__commit__[:7]}", stamped
    assert "GIT_DIR" not in os.environ
