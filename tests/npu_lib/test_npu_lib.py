"""intel-npu-acceleration-library target: config, build recipe, hash refusal, skipped targets, and the real thing.

The tests marked ``slow`` build the isolated environment from PyPI when this machine has none yet
(``.aipc/envs/`` beside ``.venv``; ~5 minutes from scratch, then reused) and run the library on the
tiny model. They run in CI (``.ci/run``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core.workspace import Workspace
from pipeline.core.config import ConfigError, ModelConfig, PipelineConfig, ValidateConfig, build, compose
from pipeline.npu_lib.config import NpuLibVariantConfig
from pipeline.core.errors import StageError
from pipeline.core.hashes import dvc_dir_md5
from pipeline.core.manifest import write_manifest
from pipeline.hub import download
from pipeline.npu_lib import build as npu_lib_build
from pipeline.npu_lib import env as npu_lib_env
from pipeline.npu_lib import export as export_npu_lib
from pipeline.npu_lib import validate as validate_npu_lib
from pipeline.validation import devices, matrix, reference

from conftest import ROOT, make_project, run_cmd


class FakeCore:
    """Stands in for openvino.Core on a machine without an NPU."""

    available_devices = ["CPU"]

    def get_property(self, device: str, name: str) -> str:
        return "Intel CPU"


def no_npu() -> dict[str, devices.DeviceStatus]:
    return devices.detect(FakeCore())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("npu_lib") / "model"
    download.run(ModelConfig.preset("tiny"), out)
    return out


def test_variants_are_the_recipes_dtypes() -> None:
    variants = build(PipelineConfig, compose([])).npu_lib
    assert {k: v.dtype for k, v in variants.items()} == {"int4": "int4", "int8": "int8", "fp16": "fp16"}
    assert all(v.load_dtype == "float32" for v in variants.values())


def test_bad_dtype_fails_at_load_time_with_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        compose(["npu_lib.int4.dtype=int3"])
    assert "dtype must be one of int4, int8, fp16" in str(exc.value) and "\n" not in str(exc.value)


def test_stages_do_not_depend_on_openvino_params() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name in ("export_npu_lib", "validate_npu_lib"):
        params = stages[name]["do"]["params"]
        assert params and not any(str(p).startswith(("openvino", "npu.")) for p in params), params
    worker = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline" / "npu_lib").glob("worker*.py")}
    assert "pipeline/npu_lib/worker.py" in worker and len(worker) > 1
    assert worker <= set(stages["export_npu_lib"]["do"]["deps"]), "every module the worker runs is a dependency"
    assert worker <= set(stages["validate_npu_lib"]["do"]["deps"])


def test_env_is_keyed_by_its_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPC_ENVS_DIR", str(tmp_path))
    before = npu_lib_env.env_path()
    assert before.parent == tmp_path and before.name.startswith(npu_lib_env.ENV_PREFIX) and len(before.name) == 13
    pins = tmp_path / "constraints.txt"
    pins.write_text(npu_lib_env.CONSTRAINTS.read_text(encoding="utf-8").replace("numpy==1.26.4", "numpy==1.26.3"), encoding="utf-8")
    monkeypatch.setattr(npu_lib_env, "CONSTRAINTS", pins)
    assert npu_lib_env.env_path() != before
    assert npu_lib_env.load() is None  # nothing built there


def test_cmake_patch_refuses_a_cmakelists_it_does_not_know() -> None:
    with pytest.raises(StageError, match="does not look like the 1.4.0 sdist's"):
        npu_lib_build.patch_cmakelists("cmake_minimum_required(VERSION 3.16)\n")


def test_unsupported_platform_and_missing_compiler_are_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(npu_lib_env.platform, "system", lambda: "Darwin")
    assert "supports Windows and Linux only, not Darwin" in npu_lib_env.unavailable_reason()
    monkeypatch.setattr(npu_lib_env.platform, "system", lambda: "Linux")
    monkeypatch.setattr(npu_lib_env.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("CXX", "/nonexistent/aipc-no-compiler")
    reason = npu_lib_env.linux_build_reason()
    assert reason.startswith("no C++ compiler ('/nonexistent/aipc-no-compiler' not found)") and "\n" not in reason


def evil_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when it is loaded: what a tampered model file can do."""

    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps(Touch())


def test_worker_refuses_a_tampered_pickle_without_unpickling_it(tmp_path: Path) -> None:
    proof = tmp_path / "proof-this-pickle-runs-code"
    pickle.loads(evil_pickle(proof))
    assert proof.exists(), "the test pickle must really run code when loaded"
    marker = tmp_path / "unpickled"
    model = tmp_path / "pytorch_npu_model.pt"
    model.write_bytes(evil_pickle(marker))
    done = subprocess.run([sys.executable, "-I", str(npu_lib_env.WORKER), "validate", "--result", str(tmp_path / "r.json"),
                           "--model-file", str(model), "--sha256", "0" * 64, "--tokenizer", str(tmp_path),
                           "--reference", str(tmp_path / "none.json"), "--logits", str(tmp_path / "l.npz")],
                          capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to load pytorch_npu_model.pt")
    assert not marker.exists() and not (tmp_path / "r.json").exists()


def fake_artifact(folder: Path, payload: bytes) -> None:
    """An export_npu_lib output folder whose manifest records the hash of ``payload``."""
    folder.mkdir(parents=True)
    (folder / export_npu_lib.MODEL_FILE).write_bytes(payload)
    write_manifest(folder, stage="export_npu_lib", status="compiled", model_file=export_npu_lib.MODEL_FILE,
                   model_sha256=hashlib.sha256(payload).hexdigest(), parameters={"dtype": "int4"})


def record_in_lock(lock: Path, folder: Path) -> Path:
    """Record ``folder`` in ``lock`` as DVC does after ``export_npu_lib@<name>`` ran (path relative to the lock, .dir md5)."""
    rel = folder.resolve().relative_to(lock.resolve().parent).as_posix()
    stages = yaml.safe_load(lock.read_text(encoding="utf-8"))["stages"] if lock.is_file() else {}
    stages[f"export_npu_lib@{folder.name}"] = {"cmd": "python -m pipeline.npu_lib.export " + folder.name,
                                               "outs": [{"path": rel, "hash": "md5", "md5": dvc_dir_md5(folder)}]}
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}), encoding="utf-8")
    return lock


def test_stage_refuses_a_tampered_model_before_any_worker_starts(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "unpickled"
    fake_artifact(tmp_path / "npu_lib" / "int4", evil_pickle(tmp_path / "other"))
    lock = record_in_lock(tmp_path / "dvc.lock", tmp_path / "npu_lib" / "int4")
    (tmp_path / "npu_lib" / "int4" / export_npu_lib.MODEL_FILE).write_bytes(evil_pickle(marker))  # tampered
    monkeypatch.setattr(npu_lib_env, "run_worker", lambda *a, **k: pytest.fail("a worker was started"))
    monkeypatch.setattr(npu_lib_env, "ensure", lambda *a, **k: pytest.fail("the environment was asked for"))
    cfg = build(ValidateConfig, compose(["model=tiny"])["validate"])
    with pytest.raises(StageError) as exc:
        validate_npu_lib.run("int4", cfg, Workspace(out=tmp_path / "npu_lib", reference=tmp_path / "ref.json", metrics=tmp_path / "metrics", lock_file=lock))
    message = str(exc.value)
    assert message.startswith("refusing to load") and "not unpickled" in message and "\n" not in message
    assert "export_npu_lib@int4" in message and "repair with `aipc repair export_npu_lib@int4`" in message
    assert not marker.exists() and not (tmp_path / "metrics").exists()


def test_without_a_buildable_env_both_stages_record_a_skipped_target(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPC_ENVS_DIR", str(tmp_path / "envs"))  # no environment built there
    monkeypatch.setattr(npu_lib_env, "unavailable_reason", lambda: "no C++ compiler ('c++' not found) (simulated)")
    manifest = export_npu_lib.run("int4", NpuLibVariantConfig.from_conf(), Workspace(model=tiny_model, out=tmp_path / "npu_lib"))
    assert manifest["status"] == "skipped" and "no C++ compiler" in manifest["reason"]
    assert json.loads((tmp_path / "npu_lib" / "int4" / "manifest.json").read_text(encoding="utf-8"))["status"] == "skipped"
    cfg = build(ValidateConfig, compose(["model=tiny"])["validate"])
    metrics = validate_npu_lib.run("int4", cfg, Workspace(out=tmp_path / "npu_lib", reference=tmp_path / "ref.json", metrics=tmp_path / "metrics"))
    written = json.loads((tmp_path / "metrics" / "npu_lib-int4.json").read_text(encoding="utf-8"))
    assert written == metrics and metrics["status"] == "skipped" and metrics["passed"] is None
    assert metrics["cells"]["NPU"]["status"] == "skipped" and "no C++ compiler" in metrics["cells"]["NPU"]["reason"]
    assert "no C++ compiler" in metrics["reason"] and metrics["top1_agreement"] is None, "every key, even when skipped"
    assert not (tmp_path / "envs").exists()


# --- the real library, in its isolated environment (built here once per machine; runs in CI) -----------------


@pytest.fixture(scope="module")
def npu_env() -> npu_lib_env.NpuLibEnv:
    """The isolated environment, built from PyPI if this machine has none yet (timed)."""
    start = time.perf_counter()
    env = npu_lib_env.ensure()
    print(f"\nnpu-lib environment: {env.path} (ready after {time.perf_counter() - start:.0f} s; "
          f"recorded build time {env.info.get('build_s')} s)")
    return env


@pytest.fixture(scope="module")
def int4_artifact(npu_env, tiny_model: Path) -> tuple[Path, dict, Path]:
    """The tiny model compiled to int4 by the library, plus its PyTorch reference."""
    cfg = build(ValidateConfig, compose(["model=tiny"])["validate"])
    ref_dir = tiny_model.parent / "reference"
    reference.run(cfg, tiny_model, ref_dir)
    manifest = export_npu_lib.run("int4", NpuLibVariantConfig.from_conf(), Workspace(model=tiny_model, out=tiny_model.parent / "npu_lib"))
    record_in_lock(tiny_model.parent / "dvc.lock", tiny_model.parent / "npu_lib" / "int4")
    return tiny_model.parent / "npu_lib", manifest, ref_dir / "reference.json"


@pytest.mark.slow
def test_isolated_env_builds_with_the_pinned_library(npu_env) -> None:
    versions = npu_env.info["versions"]
    assert versions["intel-npu-acceleration-library"] == "1.4.0" and versions["openvino"] == "2024.4.0"
    assert versions["numpy"].startswith("1.") and versions["torch"].startswith("2.13.0")
    main_versions = subprocess.run([sys.executable, "-c", "import numpy, openvino; print(numpy.__version__)"],
                                   capture_output=True, text=True, check=True).stdout
    assert not main_versions.startswith("1."), "the main environment must keep its own numpy"


@pytest.mark.slow
def test_tiny_model_compiles_to_int4_with_a_manifest(int4_artifact) -> None:
    root, manifest, _ = int4_artifact
    assert manifest["status"] == "compiled" and manifest["parameters"]["dtype"] == "int4"
    assert manifest["recipe"].endswith("CompilerConfig(dtype=int4))")
    assert manifest["files"][export_npu_lib.MODEL_FILE]["sha256"] == manifest["model_sha256"]
    assert manifest["npu_lib_env"]["versions"]["openvino"] == "2024.4.0"
    assert manifest["linear_layers"] == {"intel_npu_acceleration_library.QuantizedLinear": 9}  # 2 x 4 + lm_head
    assert "tokenizer.json" in manifest["files"]


@pytest.mark.slow
def test_int4_model_loads_after_the_hash_check_generates_and_matches(int4_artifact, tmp_path: Path) -> None:
    root, _, ref = int4_artifact
    cfg = build(ValidateConfig, compose(["model=tiny"])["validate"])
    metrics = validate_npu_lib.run("int4", cfg, Workspace(out=root, reference=ref, metrics=tmp_path, lock_file=root.parent / "dvc.lock"), status=no_npu())
    assert metrics["status"] == "passed" and metrics["passed"], metrics["problems"]
    assert metrics["cells"]["NPU"]["status"] == "skipped" and metrics["headline_cell"] == "CPU stand-in"
    assert metrics["label"] == "NPU library model, validated on CPU (stand-in: no NPU here)"
    assert metrics["device_executed"] == "CPU" and metrics["reason"].startswith("no NPU")
    assert "with only a warning" in metrics["note"]
    numerics = metrics["cells"][matrix.STAND_IN]["artifact_numerics"]  # what the library's kernels computed with
    assert numerics["compute"] in ("bf16", "f32") and numerics["label"].startswith("fp16 activations, ")
    assert numerics["judged_as"] == ("bf16" if numerics["compute"] == "bf16" else "f16")
    assert metrics["top1_agreement"] >= 0.85 and metrics["tokenizer_matches_reference"]
    assert 0 < metrics["mean_kl"] <= cfg.max_mean_kl["int4"] and metrics["perplexity"] > 0
    assert metrics["sample"].strip() and metrics["profile"] == "quick"
    # quick (the default): the stand-in's speed runs are skipped and said to be; full runs them, same verdict
    assert metrics["tokens_per_s"] is None and metrics["speed_not_measured"].startswith("speed not measured: CPU")
    full = validate_npu_lib.run("int4", build(ValidateConfig, compose(["model=tiny", "validate.profile=full"])["validate"]),
                                Workspace(out=root, reference=ref, metrics=tmp_path / "full", lock_file=root.parent / "dvc.lock"), status=no_npu())
    assert full["tokens_per_s"] > 0 and full["speed_not_measured"] is None and full["profile"] == "full"
    assert set(full["cells"][matrix.STAND_IN]["perf"]) == {"short", "long"}
    verdict = ("status", "top1_agreement", "mean_kl", "perplexity", "greedy_exact_match", "problems")
    assert [full[k] for k in verdict] == [metrics[k] for k in verdict], "the profile changes no verdict"
    # quick checks the answers in one teacher-forced pass (the same exact-match verdict), full decodes them whole
    assert validate_npu_lib.FORCED_NOTE in metrics["note"] and validate_npu_lib.FORCED_NOTE not in full["note"]


@pytest.mark.slow
def test_tampered_library_model_is_refused(int4_artifact, tmp_path: Path) -> None:
    root, _, ref = int4_artifact
    copy = tmp_path / "npu_lib"
    shutil.copytree(root / "int4", copy / "int4")
    model = copy / "int4" / export_npu_lib.MODEL_FILE
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    cfg = build(ValidateConfig, compose(["model=tiny"])["validate"])
    lock = Path(shutil.copy(root.parent / "dvc.lock", tmp_path / "dvc.lock"))  # same layout: npu_lib/int4
    with pytest.raises(StageError, match=r"^refusing to load .*not unpickled"):
        validate_npu_lib.run("int4", cfg, Workspace(out=copy, reference=ref, metrics=tmp_path / "metrics", lock_file=lock), status=no_npu())


@pytest.mark.slow
def test_dvc_repro_completes_when_the_env_cannot_be_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "project")
    monkeypatch.setenv("AIPC_ENVS_DIR", str(tmp_path / "no-envs"))
    monkeypatch.setenv("CXX", "/nonexistent/aipc-no-compiler")  # as on a machine without a C++ compiler
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    done = run_cmd([sys.executable, "-m", "dvc", "repro", "validate_npu_lib@int4", "validate@fp16"], project)
    skipped = json.loads((project / "artifacts" / "metrics" / "npu_lib-int4.json").read_text(encoding="utf-8"))
    assert skipped["status"] == "skipped" and skipped["passed"] is None and "no C++ compiler" in skipped["reason"]
    assert json.loads((project / "artifacts" / "metrics" / "openvino-fp16.json").read_text(encoding="utf-8"))["passed"]
    assert "skipped: no C++ compiler" in done.stderr


WINDOWS_CACHE_CHECK = r"""
import ntpath, sys
sys.path.insert(0, sys.argv[1])
from intel_npu_acceleration_library import modelling
from pipeline.npu_lib.worker_compile import short_cache_name
model = r"C:\Users\someone-with-a-name\source\repos\aipc-pipeline\artifacts\model"
args = (("int4",), {"use_cache": True})
old = ntpath.join("cache\\models", modelling.get_mangled_model_name(model, *args[0], **args[1]))
new = ntpath.join("cache\\models", short_cache_name(model, *args[0], **args[1]))
print(old); print(new); print(short_cache_name(model + "2", *args[0], **args[1]))
"""


@pytest.mark.slow
def test_library_cache_folder_stays_under_cache_models_for_a_windows_drive_path(npu_env) -> None:
    out = subprocess.run([str(npu_env.python), "-c", WINDOWS_CACHE_CHECK, str(Path(__file__).resolve().parents[2])],
                         capture_output=True, text=True, check=True).stdout.split()
    old, new, other = out
    assert old.startswith("C:_Users"), "the library's own name escapes cache\\models on a drive path (the blocker)"
    assert new.startswith("cache\\models\\model-") and len(new) < 60 and ":" not in new
    assert other != new.rsplit("\\", 1)[1], "different models get different folders"


def test_env_path_fits_windows_260_characters_or_says_what_to_do() -> None:
    short = Path("C:/Users/someone-with-a-name/AppData/Local/aipc") / "nl-0123456789"
    assert npu_lib_env.path_budget_problem(short, long_paths=False) is None, "the default Windows root fits"
    deep = Path("C:/Users/someone-with-a-name/source/repos/aipc-pipeline/.aipc/envs") / "nl-0123456789"
    problem = npu_lib_env.path_budget_problem(deep, long_paths=False)
    assert problem and "\n" not in problem and "AIPC_ENVS_DIR" in problem and "LongPathsEnabled" in problem
    assert npu_lib_env.path_budget_problem(deep, long_paths=True) is None


def test_a_failed_env_build_is_not_retried_by_every_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []

    def failing_build(path: Path) -> None:
        builds.append(path)
        raise npu_lib_env.EnvUnavailable("pip install failed (exit 1): no matching distribution")

    monkeypatch.setattr(npu_lib_env, "unavailable_reason", lambda: None)
    monkeypatch.setattr(npu_lib_env, "build", failing_build)
    for _ in range(3):  # the six stages of the default pipeline would each try
        with pytest.raises(npu_lib_env.EnvUnavailable, match="no matching distribution"):
            npu_lib_env.ensure(tmp_path)
    assert len(builds) == 1, "only the first stage builds"
    with pytest.raises(npu_lib_env.EnvUnavailable, match="an earlier build failed; `aipc npu-lib-env` tries again"):
        npu_lib_env.ensure(tmp_path)
    with pytest.raises(npu_lib_env.EnvUnavailable):
        npu_lib_env.ensure(tmp_path, retry=True)
    assert len(builds) == 2, "aipc npu-lib-env retries"


def test_the_library_is_judged_at_the_numerics_it_ran_not_as_an_f32_runtime() -> None:
    """Issue 35, Why 7: npu_lib-fp16 at top-1 0.979 failed as "artifact fidelity (f32 runtime)" against fp16's 0.99,
    though the library runs fp16 activations at the CPU's default compute (bf16 here) and cannot run at f32."""
    from pipeline.validation.evidence import verdicts_for

    cfg = build(ValidateConfig, compose(["model=tiny"])["validate"])
    verdicts = verdicts_for(cfg, "fp16")

    def got(top1: float, numerics: dict | None) -> matrix.Measurement:
        fidelity = {"top1_agreement": top1, "mean_kl": 0.001, "perplexity_delta_pct": 0.1}
        return matrix.Measurement("CPU", 0.1, 1.0, {}, fidelity, [], True, "", artifact_numerics=numerics)

    library = validate_npu_lib.library_numerics("bf16")
    assert verdicts.problems(got(0.979, library)) == []
    limit = round(cfg.min_top1_agreement["fp16"] + cfg.device_numerics.min_top1_agreement["bf16"] - 1, 4)
    (problem,) = verdicts.problems(got(limit - 0.01, library))
    assert problem.startswith("artifact fidelity (fp16 activations, bf16 compute (the library's; it cannot run at f32), ")
    assert f"below the fp16 at bf16 compute threshold {limit}" in problem
    # an f32 runtime keeps its own limit; an unreadable compute is judged as the activations' f16
    assert verdicts.problems(got(0.979, None))[0].startswith("artifact fidelity (f32 runtime): top-1 agreement 0.979")
    assert validate_npu_lib.library_numerics(None)["judged_as"] == "f16"


@pytest.mark.parametrize(
    "raised, expected",
    [
        ("OSError(28, 'No space left on device')", "the disk filled in the isolated environment's worker"),
        ("RuntimeError('the kernel cache is corrupt')", "failed in the isolated environment: RuntimeError: the kernel"),
    ],
)
def test_a_worker_failure_is_one_line_and_its_traceback_is_kept_not_printed(
    raised: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Issue 35, Why 6: validate_npu_lib with a full TMPDIR relayed the worker's traceback (the worker is real
    Python run as the stage runs it; only its script is one that fails the way a full disk makes it fail)."""
    worker = tmp_path / "worker.py"
    worker.write_text(f"print('loading', flush=True)\nraise {raised}\n", encoding="utf-8")
    monkeypatch.setattr(npu_lib_env, "WORKER", worker)
    monkeypatch.chdir(tmp_path)
    env = npu_lib_env.NpuLibEnv(tmp_path, Path(sys.executable), {})
    with pytest.raises(StageError) as exc:
        export_npu_lib.call_worker("int4", env, "validate", [], tmp_path)
    message = str(exc.value)
    assert "\n" not in message and expected in message and message.startswith("[npu_lib-int4] validate")
    err = capsys.readouterr().err
    assert "    loading" in err and "Traceback" not in err, "progress streamed, the traceback held back"
    if "disk" in expected:
        assert "set TMPDIR to a larger drive" in message
    else:
        kept = tmp_path / ".aipc" / "logs" / "npu_lib-int4-validate-traceback.txt"
        assert f"(traceback: {kept.relative_to(tmp_path).as_posix()})" in message
        assert kept.read_text(encoding="utf-8").startswith("Traceback (most recent call last)")
