"""The layer-by-layer build (issue 20) gives the library's own model, and the manifest records the tie (issue 21.4).

``npu_lib.<v>.layer_by_layer`` (the default) builds the recipe's model one decoder layer at a time instead of
loading the whole checkpoint in float32. These tests compile the tiny Phi-4-shaped model (tied embeddings) both
ways (int4 and fp16: the quantizing and the casting path) in the library's isolated environment (``slow``: built from PyPI once per machine, as in test_npu_lib) and
compare every tensor of the two pickles, loaded through the worker's own allow-listed loader.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from test_npu_lib import npu_env  # noqa: F401  (fixture)

from pipeline.core.workspace import Workspace
from pipeline.core.config import ModelConfig
from pipeline.hub import download
from pipeline.npu_lib import env as npu_lib_env
from pipeline.npu_lib import export as export_npu_lib
from pipeline.npu_lib.config import NpuLibVariantConfig

# Run in the library's environment: every tensor of two of its pickles (parameters, buffers and the plain tensor
# attributes its layers keep, e.g. QuantizedLinear.weight and .scale), by module path, attribute and layer class.
COMPARE = r"""
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("npu_lib_worker", sys.argv[1])  # as `python -I worker.py` runs it
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
worker.expose_this_folder()
import torch
from pipeline.npu_lib.worker_compile import import_library
from pipeline.npu_lib.worker_pickle import load_model
import_library()

def tensors(model):
    out = {}
    for name, module in model.named_modules():
        for key, value in [*module._parameters.items(), *module._buffers.items(), *vars(module).items()]:
            if isinstance(value, torch.Tensor):
                out[f"{name}:{key}:{type(module).__name__}"] = value
    return out

a, b = (tensors(load_model(Path(p))) for p in sys.argv[2:4])
differ = sorted(k for k in a.keys() & b.keys()
                if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]))
print(json.dumps({"only_one": sorted(a.keys() ^ b.keys()), "differ": differ, "compared": len(a)}))
"""


DTYPES = {"int4": "intel_npu_acceleration_library.QuantizedLinear", "fp16": "intel_npu_acceleration_library.Linear"}


@pytest.fixture(scope="module")
def builds(npu_env, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, str], dict]]:  # noqa: F811
    """The tiny Phi-4 compiled to int4 and fp16, layer by layer and by the library's whole-model path: manifests."""
    root = tmp_path_factory.mktemp("npu_lib_layers")
    download.run(ModelConfig.preset("tiny-phi4"), root / "model")
    manifests = {
        (dtype, build): export_npu_lib.run(
            dtype, NpuLibVariantConfig.from_conf(dtype=dtype, layer_by_layer=build == "layers"), Workspace(model=root / "model", out=root / build)
        )
        for dtype in DTYPES
        for build in ("layers", "whole")
    }
    config = NpuLibVariantConfig.from_conf(dtype="int4", layer_by_layer=True)  # once more, in another folder: same bytes?
    manifests["int4", "again"] = export_npu_lib.run("int4", config, Workspace(model=root / "model", out=root / "again"))
    return root, manifests


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_by_layer_gives_the_same_tensors_as_the_librarys_whole_model_build(builds, npu_env, dtype: str) -> None:  # noqa: F811
    root, manifests = builds
    pickles = [str(root / build / dtype / export_npu_lib.MODEL_FILE) for build in ("layers", "whole")]
    done = subprocess.run([str(npu_env.python), "-I", "-c", COMPARE, str(npu_lib_env.WORKER), *pickles],
                          capture_output=True, text=True, env=npu_lib_env.worker_env(), cwd=root, encoding="utf-8")
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["compared"] > 15 and found["only_one"] == [] and found["differ"] == [], found
    layers, whole = manifests[dtype, "layers"], manifests[dtype, "whole"]
    assert layers["parameters"]["layer_by_layer"] and not whole["parameters"]["layer_by_layer"]
    assert layers["linear_layers"] == whole["linear_layers"] == {DTYPES[dtype]: 9}  # 2 layers x 4 + lm_head


@pytest.mark.slow
def test_the_manifest_says_the_tie_is_broken_and_what_each_side_is_stored_as(builds) -> None:
    _, manifests = builds
    for (dtype, build), manifest in manifests.items():
        assert manifest["tied_embeddings"] == {
            "checkpoint_tied": True,  # tiny Phi-4, like Phi-4-mini, ties its embeddings
            "shared_constant": False,  # the LM head gets its own copy: the library quantizes lm_head in place
            "embedding": {"layer": "model.embed_tokens", "precision": "float32"},
            "lm_head": {"layer": "lm_head", "precision": "int4" if dtype == "int4" else "float16"},
        }, (dtype, build)


@pytest.mark.slow
def test_a_layer_by_layer_build_gives_the_same_bytes_twice(builds) -> None:
    """No random layer ids or absolute paths in the pickle (the library's own whole-model path keeps both)."""
    root, _ = builds
    first, again = (root / build / "int4" / export_npu_lib.MODEL_FILE for build in ("layers", "again"))
    assert hashlib.sha256(first.read_bytes()).hexdigest() == hashlib.sha256(again.read_bytes()).hexdigest()
    assert str(root).encode() not in again.read_bytes()
