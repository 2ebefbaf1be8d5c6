"""``aipc onnx-compat``: prove an exported ONNX folder loads in the runtimes Windows DirectML users get.

``pip install onnxruntime-genai-directml`` gives 0.13.1 with onnxruntime-directml 1.24.4: 0.14.1, the last
DirectML release (it stopped in favour of Windows ML), needs onnxruntime-directml >= 1.26, which is not
published. This check runs the exact folder with the CPU builds of both releases (from PyPI, where the CPU
onnxruntime 1.26 is), each in a separate virtual environment the project creates once under
``.aipc/envs/ortgenai-<version>`` beside the ``.venv`` (``AIPC_ENVS_DIR`` moves them; about 100 MB each,
then reused offline). It loads the model and the tokenizer, checks the prompts tokenize exactly as the
original tokenizer did, and generates from every prompt. ``--runtime`` picks one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from pipeline.core.artifacts import ARTIFACTS, remove_tree, replace_dir, write_json_atomic
from pipeline.core.config import PROJECT_ROOT
from pipeline.core.errors import fail, run_main
from pipeline.core.log import say, step
from pipeline.core.package_sets import PackageSet, pip_failure_line, read_constraints
from pipeline.validation import genai_runner as runner
from pipeline.validation.matrix import greedy_match

# onnxruntime-genai(-directml) release -> the CPU packages that stand in for it (its onnxruntime requirement's floor)
RUNTIMES = {
    "0.13.1": ("onnxruntime-genai==0.13.1", "onnxruntime==1.24.4"),
    "0.14.1": ("onnxruntime-genai==0.14.1", "onnxruntime==1.26.0"),
}
DEFAULT_RUNTIME = "0.13.1"
COMPAT_PACKAGES = RUNTIMES[DEFAULT_RUNTIME]
ENV_NAME = f"ortgenai-{DEFAULT_RUNTIME}"
# The DirectML builds themselves (Windows only), for the DML cells of validate_onnx and `aipc chat --device DML`:
# the newest pair that installs. genai-directml 0.14.1 needs onnxruntime-directml >= 1.26.0, which the registry does
# not have (its newest is 1.24.4, 2026-12), so `pip install onnxruntime-genai-directml` gives users 0.13.1 too.
# tests/windows/test_windows_resolver.py resolves this pair for Windows.
DML_RUNTIMES = {
    "0.13.1": ("onnxruntime-genai-directml==0.13.1", "onnxruntime-directml==1.24.4"),
}
DML_RUNTIME = "0.13.1"
STAMP = "aipc-compat-env.json"
ONNX_ROOT = ARTIFACTS / "onnx"
REFERENCE = ARTIFACTS / "reference" / "reference.json"


def env_dir(runtime: str = DEFAULT_RUNTIME, directml: bool = False) -> Path:
    """Where a runtime's environment lives: beside the other isolated environments (``.aipc/envs``)."""
    from pipeline.core.envs import envs_root  # one rule for every isolated environment

    return envs_root() / f"ortgenai-{'directml-' if directml else ''}{runtime}"


def env_python(env: Path) -> Path:
    """The interpreter of a virtual environment on this platform."""
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def env_constraints() -> tuple[str, ...]:
    """The pins of the runtimes' other dependencies (numpy, protobuf, ...): the project's, less its onnx* ones."""
    src = PROJECT_ROOT / "constraints.txt"
    return read_constraints(src, skip_prefixes=("onnx",)) if src.is_file() else ()


def package_sets() -> list[PackageSet]:
    """What the DirectML environment and each compat environment install (tests/windows/test_windows_resolver.py)."""
    pins = env_constraints()
    dml = PackageSet(f"DirectML env {env_dir(DML_RUNTIME, True).name}", DML_RUNTIMES[DML_RUNTIME], pins)
    return [dml, *(PackageSet(f"ONNX compat env {env_dir(v).name}", RUNTIMES[v], pins) for v in RUNTIMES)]


def _pip_constraints(folder: Path) -> list[str]:
    """``-c`` arguments pinning the compat env's other dependencies (numpy, protobuf, ...) as the project does."""
    lines = env_constraints()
    if not lines:
        return []
    (folder / "constraints.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ["-c", str(folder / "constraints.txt")]


def ensure_env(env: Path | None = None, runtime: str = DEFAULT_RUNTIME, directml: bool = False) -> Path:
    """Create a runtime's environment once (atomically) and return its interpreter; reuse it afterwards."""
    env = Path(env or env_dir(runtime, directml))
    packages = (DML_RUNTIMES if directml else RUNTIMES)[runtime]
    wanted = {"packages": list(packages), "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    if (
        env_python(env).is_file()
        and (env / STAMP).is_file()
        and json.loads((env / STAMP).read_text(encoding="utf-8")) == wanted
    ):
        say(f"using the compat environment {env}")
        return env_python(env)
    env.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{env.name}.tmp-", dir=env.parent))
    try:
        with step(f"creating {env} once: {' + '.join(packages)} from PyPI (about 100 MB)"):
            venv.EnvBuilder(with_pip=True, symlinks=os.name != "nt").create(tmp)
            cmd = [
                str(env_python(tmp)),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--only-binary=:all:",
                *_pip_constraints(tmp),
                *packages,
            ]
            output = _run_pip(cmd)
            if output is not None:
                fail(f"pip could not install {' '.join(packages)} into {env.name}: {pip_failure_line(output)}")
            write_json_atomic(tmp / STAMP, wanted)
        replace_dir(tmp, env)
    finally:
        remove_tree(tmp)
    return env_python(env)


def _run_pip(cmd: list[str]) -> str | None:
    """Run a pip command, its lines streamed to stderr with ours; None when it succeeds, else all it printed."""
    lines: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace"
    ) as proc:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            sys.stderr.write(line)
            lines.append(line)
    return "".join(lines) if proc.returncode else None


def run_script(script: Path, request: dict, python: Path | str, mark: str) -> dict:
    """Run ``script`` under ``python`` (isolated mode) with ``request`` on stdin; the JSON after ``mark``."""
    done = subprocess.run(
        [str(python), "-I", str(script)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith(mark)), None)
    if line is None:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"{script.name} crashed (exit {done.returncode}) under {python}: {last}")
    return json.loads(line[len(mark) :])


def probe(folder: Path, reference: dict, python: Path | str = sys.executable) -> dict:
    """Load ``folder`` on the CPU under ``python``, tokenize and greedily generate every reference prompt."""
    request = {
        "folder": str(Path(folder).resolve()),
        "provider": "any",  # not "cpu": clear the folder's providers, the CPU build of the runtime refuses DML
        "device": "CPU",
        "prompts": [c["prompt"] for c in reference["greedy"]],
        "max_new_tokens": [max(len(c["output_ids"]), 1) for c in reference["greedy"]],
    }
    result = run_script(Path(runner.__file__), request, python, runner.RESULT_MARK)
    result["cases"] = [
        {"prompt_ids": ids, "output_ids": out, "text": text}
        for ids, out, text in zip(result.get("prompt_ids", []), result.get("outputs", []), result.get("texts", []))
    ]
    return result


def check(folder: Path, reference: dict, python: Path | str) -> dict:
    """Fail with one line unless ``folder`` loads, tokenizes like the reference and generates under ``python``."""
    result = probe(folder, reference, python)
    who = (
        f"onnxruntime-genai {result['versions']['onnxruntime-genai']} + onnxruntime "
        f"{result['versions']['onnxruntime']} (what Windows DirectML users get)"
    )
    if "error" in result:
        hint = ""
        config = Path(folder) / "tokenizer_config.json"
        if "tokenizer class" in result["error"] and config.is_file():
            cls = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
            hint = (
                f"; its tokenizer_config.json says tokenizer_class {cls} (written by transformers 5): rebuild "
                "with `dvc repro export_onnx@VARIANT` (its folder name), which writes one this runtime reads"
            )
        fail(f"{who} cannot {result['step']} of {folder}: {result['error']}{hint}")
    for i, (case, got) in enumerate(zip(reference["greedy"], result["cases"])):
        if got["prompt_ids"] != case["prompt_ids"]:
            at = next(
                (j for j, (a, b) in enumerate(zip(got["prompt_ids"], case["prompt_ids"])) if a != b),
                min(len(got["prompt_ids"]), len(case["prompt_ids"])),
            )
            fail(
                f"{who} tokenizes prompt {i} of {folder} differently from the original tokenizer from token {at} "
                f"({got['prompt_ids'][at : at + 3]} instead of {case['prompt_ids'][at : at + 3]})"
            )
        if not got["output_ids"]:
            fail(f"{who} loads {folder} but generates nothing for prompt {i}")
    exact, divergence = greedy_match([c["output_ids"] for c in result["cases"]], reference)
    return {
        "runtime": result["versions"],
        "device": result["executed"],
        "prompts": len(result["cases"]),
        "tokenizer_matches_reference": True,
        "greedy_exact_match": exact,
        "first_divergence": divergence,
        "sample": result["cases"][0]["text"][:200],
    }


def run_all(target: str, reference_path: Path = REFERENCE, runtimes: tuple[str, ...] = tuple(RUNTIMES)) -> dict:
    """Check ``target`` in every runtime of :data:`RUNTIMES` (or the ones named); their reports by version."""
    return {runtime: run(target, reference_path, runtime=runtime) for runtime in runtimes}


def run(target: str, reference_path: Path = REFERENCE, env: Path | None = None, runtime: str = DEFAULT_RUNTIME) -> dict:
    """Check ONNX variant ``target`` (a name under artifacts/onnx, or a folder) in one runtime's environment."""
    folder = Path(target) if Path(target).is_dir() else ONNX_ROOT / target
    if not (folder / "genai_config.json").is_file():
        todo = f"run `dvc repro export_onnx@{target}`" if folder == ONNX_ROOT / target else "pass a builder output"
        fail(f"{folder} is not an exported ONNX folder (no genai_config.json): {todo}")
    if not Path(reference_path).is_file():
        fail(f"{reference_path} missing: run `dvc repro reference` first")
    reference = json.loads(Path(reference_path).read_text(encoding="utf-8"))
    python = ensure_env(env, runtime)
    with step(f"running {folder} with {' + '.join(RUNTIMES[runtime])} on CPU"):
        report = check(folder, reference, python)
    say(
        f"ok: {folder} loads in onnxruntime-genai {report['runtime']['onnxruntime-genai']} (device "
        f"{report['device']}), tokenizes all {report['prompts']} prompts exactly, greedy exact match "
        f"{report['greedy_exact_match']:.2f}; sample {report['sample'][:60]!r}"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m pipeline.onnx.compat <variant-or-folder>``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="ONNX variant under artifacts/onnx (e.g. dml_int4) or a folder")
    parser.add_argument(
        "--runtime",
        choices=sorted(RUNTIMES),
        action="append",
        help="onnxruntime-genai release to check (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    run_all(args.target, runtimes=tuple(args.runtime or RUNTIMES))


if __name__ == "__main__":
    run_main(main)
