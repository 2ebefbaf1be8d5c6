"""The NPU library's pickle cannot run code (issue 17.2).

Two independent locks: the expected hash comes from ``dvc.lock`` (outside the artifact folder), and the
worker unpickles with ``torch.load(weights_only=True)`` and an allow-list of the library's classes. The
payload tests give the attacker both the manifest AND dvc.lock updated to the payload's hashes, so only
the allow-list stands between the payload and its code: it must be refused and nothing may run. Tests
marked ``slow`` use the isolated library environment (built from PyPI once per machine, as in test_npu_lib).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_npu_lib import int4_artifact, npu_env, record_in_lock, tiny_model  # noqa: F401  (fixtures)

from pipeline.core.workspace import Workspace
from pipeline.core.config import ValidateConfig, build, compose
from pipeline.core.errors import StageError
from pipeline.core.hashes import dvc_dir_md5
from pipeline.core.manifest import write_manifest
from pipeline.npu_lib import env as npu_lib_env
from pipeline.npu_lib import export as export_npu_lib
from pipeline.npu_lib import validate as validate_npu_lib

from conftest import run_cmd


class Call:
    """Pickles as ``func(*args)``: how a payload chains calls through the unpickler."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args

    def __call__(self, *args: object) -> None:  # pickle only checks that the function slot is callable
        raise NotImplementedError


def touch_payload(marker: Path) -> Call:
    """A model file's content that creates ``marker`` when unpickled (a global outside the allow-list)."""
    return Call(Path.touch, marker)


def getattr_payload(marker: Path) -> Call:
    """Creates ``marker`` using only allow-listed classes plus getattr: Phi3Config.__init__.__globals__ -> exec."""
    from transformers.models.phi3.configuration_phi3 import Phi3Config

    module_globals = Call(getattr, Call(getattr, Phi3Config, "__init__"), "__globals__")
    builtins = Call(Call(getattr, module_globals, "get"), "__builtins__")
    run = Call(Call(getattr, builtins, "get"), "exec")
    return Call(run, f"import pathlib; pathlib.Path({str(marker)!r}).touch()")


def saved(obj: object, path: Path) -> bytes:
    """``obj`` saved the way the library saves its model (torch.save, zip format)."""
    torch.save(obj, path)
    return path.read_bytes()


def tampered_artifact(root: Path, payload: bytes) -> tuple[Path, Path]:
    """An npu_lib/int4 folder holding ``payload``, its manifest AND dvc.lock updated to match it."""
    folder = root / "npu_lib" / "int4"
    folder.mkdir(parents=True)
    (folder / export_npu_lib.MODEL_FILE).write_bytes(payload)
    write_manifest(folder, stage="export_npu_lib", status="compiled", model_file=export_npu_lib.MODEL_FILE,
                   model_sha256=hashlib.sha256(payload).hexdigest(), parameters={"dtype": "int4"})
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    return folder, record_in_lock(root / "dvc.lock", folder)


def runs_code(payload: bytes, tmp_path: Path) -> None:
    """Prove the payload really runs code under a plain ``torch.load`` (in a child process)."""
    path = tmp_path / "proof.pt"
    path.write_bytes(payload)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   check=False, capture_output=True)


def test_dvc_dir_md5_is_what_dvc_records(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(bytes(range(256)) * 100)
    (folder / "sub" / "b.json").write_text('{"x": 1}\n', encoding="utf-8")
    (folder / "manifest.json").write_text("{}\n", encoding="utf-8")
    run_cmd([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], tmp_path)
    run_cmd([sys.executable, "-m", "dvc", "add", "out"], tmp_path)
    recorded = yaml.safe_load((tmp_path / "out.dvc").read_text(encoding="utf-8"))["outs"][0]["md5"]
    assert dvc_dir_md5(folder) == recorded and recorded.endswith(".dir")


def test_an_artifact_dvc_lock_does_not_record_is_never_unpickled(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    folder, _ = tampered_artifact(tmp_path, saved(touch_payload(marker), tmp_path / "p.pt"))
    monkeypatch.setattr(npu_lib_env, "run_worker", lambda *a, **k: pytest.fail("a worker was started"))
    cfg = build(ValidateConfig, compose(["model=tiny"])["validate"])
    with pytest.raises(StageError) as exc:
        validate_npu_lib.run("int4", cfg, Workspace(out=folder.parent, reference=tmp_path / "ref.json", metrics=tmp_path / "m", lock_file=tmp_path / "no-dvc.lock"))
    assert str(exc.value).startswith("refusing to load") and "records no export_npu_lib@int4 output" in str(exc.value)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("make_payload", [touch_payload, getattr_payload], ids=["foreign-global", "getattr-chain"])
def test_payload_with_matching_manifest_and_lock_is_refused_and_nothing_runs(
        make_payload, npu_env, tmp_path: Path) -> None:  # noqa: F811
    proof = tmp_path / "proof-it-runs-code"
    runs_code(saved(make_payload(proof), tmp_path / "proof.pt"), tmp_path)
    assert proof.exists(), "the payload must really run code when unpickled the old way"
    marker = tmp_path / "payload-ran"
    folder, lock = tampered_artifact(tmp_path, saved(make_payload(marker), tmp_path / "payload.pt"))
    manifest = yaml.safe_load((folder / "manifest.json").read_text(encoding="utf-8"))
    model_file = validate_npu_lib.checked_model_file(folder, manifest, lock)  # both hashes match: only the allow-list is left
    cfg = build(ValidateConfig, compose(["model=tiny"])["validate"])
    args = validate_npu_lib.worker_args(model_file, manifest, folder, tmp_path / "ref.json", cfg, tmp_path / "l.npz")
    with pytest.raises(StageError) as exc:  # the validate stage's own call of the worker
        export_npu_lib.call_worker("int4", npu_env, "validate", args, tmp_path)
    message = str(exc.value)
    assert message.startswith("refusing to load pytorch_npu_model.pt: it is not only the library's model")
    assert "nothing in it ran" in message and "\n" not in message
    assert message.endswith("(repair with `aipc repair export_npu_lib@int4`)")
    assert not marker.exists() and not (tmp_path / "validate-result.json").exists()


@pytest.mark.slow
def test_genuine_pickle_loads_with_the_allow_list_only(int4_artifact, npu_env) -> None:  # noqa: F811
    root, _, _ = int4_artifact
    code = ("import importlib.util, sys; from pathlib import Path; "  # worker.py as `python -I worker.py` sees its helpers
            "spec = importlib.util.spec_from_file_location('npu_lib_worker', sys.argv[1]); "
            "w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w); w.expose_this_folder(); "
            "from pipeline.npu_lib.worker_compile import import_library; "
            "from pipeline.npu_lib.worker_pickle import load_model, unsafe_globals; "
            "import_library(); m = load_model(Path(sys.argv[2])); "
            "print(type(m).__name__, sum(p.numel() for p in m.parameters()), unsafe_globals(Path(sys.argv[2])))")
    done = subprocess.run([str(npu_env.python), "-I", "-c", code, str(npu_lib_env.WORKER),
                           str(root / "int4" / export_npu_lib.MODEL_FILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    name, params, unknown = done.stdout.split(maxsplit=2)
    assert name == "Phi3ForCausalLM" and int(params) > 0 and unknown.strip() == "[]"
