"""Issue 21.4: a Windows ML package records the embedding tie and the weight-layer counts of the IR it wraps (tiny
Phi-4: tied embeddings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.config import ModelConfig
from pipeline.core.workspace import Workspace
from pipeline.hub import download
from pipeline.openvino import export as export_openvino
from pipeline.openvino.config import OpenVinoVariantConfig
from pipeline.openvino.ir_inspect import embedding_tie
from pipeline.winml import export, package
from pipeline.winml.config import WinmlVariantConfig


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    """The tiny Phi-4's real int4 IR (export_openvino) and the CPU package wrapping it: (IR manifest, package manifest, package)."""
    artifacts = tmp_path_factory.mktemp("winml_tie") / "artifacts"
    download.run(ModelConfig.preset("tiny-phi4"), artifacts / "model")
    ir = export_openvino.run("int4", OpenVinoVariantConfig.from_conf(), Workspace(model=artifacts / "model", out=artifacts / "openvino"), base_dir=None)
    manifest = export.run("cpu", WinmlVariantConfig.from_conf(source="openvino", device_type="CPU"), Workspace(artifacts=artifacts))
    return ir, manifest, artifacts / "winml" / "cpu"


@pytest.mark.slow  # builds the tiny model's real int4 IR, as the slow tests of test_winml.py do
def test_the_package_records_the_tie_of_the_ir_it_wraps(packaged: tuple[dict, dict, Path]) -> None:
    ir, manifest, folder = packaged
    tie = manifest["tied_embeddings"]
    assert tie == ir["tied_embeddings"] and tie["checkpoint_tied"], "tiny Phi-4 ties its embeddings"
    assert json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["tied_embeddings"] == tie
    # the IR's weight layers by precision come along too: the int4 IR's linear layers at 4 bits, the one shared
    # matrix at NNCF's backup int8 once per reader (the embedding's Gather and the LM head's MatMul)
    assert manifest["weight_layers"] == ir["weight_layers"] and manifest["weight_layers"]["int8"] == 2
    import openvino as ov

    found = embedding_tie(ov.Core().read_model(str(folder / package.IR_FILES[0])))  # the packaged IR itself
    assert found is not None
    assert found["shared_constant"] == tie["shared_constant"] is True, "the tie survives into the package"
    assert (found["embedding"]["precision"], found["lm_head"]["precision"]) == (
        tie["embedding"]["precision"], tie["lm_head"]["precision"])
