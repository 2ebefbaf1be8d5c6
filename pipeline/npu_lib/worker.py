"""Runs INSIDE the isolated intel-npu-acceleration-library environment: probe, compile, or load + validate.

Started by :mod:`pipeline.npu_lib.export` as ``<env python> -P -s worker.py <command> --result FILE ...``
(``-P -s``, PYTHON* variables our own: neither this folder nor ``PYTHONPATH`` is on ``sys.path``, so nothing of the main environment leaks
in). Its helpers are the ``worker_*`` modules beside it, imported as ``pipeline.npu_lib.worker_*`` from this
folder alone (:func:`expose_this_folder`: no other module of ``pipeline`` can be imported there); they import
only the standard library at module level and the isolated environment's packages (torch, transformers, the
library) inside functions. Each call handles ONE dtype in its own process: compiling int4 after int8 in one
process segfaults (the library caches its compiled kernels under a key without the weight dtype, so an int4
layer can reuse an int8 kernel of the same shape).

Commands:
    probe     import the library; report versions and whether it sees an NPU
    compile   NPUModelForCausalLM-style compile of one dtype, layer by layer or whole
              (:mod:`pipeline.npu_lib.worker_compile`); save the library's pickle to --out
    validate  check the pickle's sha256 (refuse and exit 3 on mismatch, before anything is unpickled),
              load it with ``torch.load(weights_only=True)`` allowing only
              :data:`pipeline.npu_lib.worker_pickle.SAFE_CLASSES` (refuse and exit 3 if it needs anything else:
              nothing in it runs), generate greedily, time every speed prompt, and save its teacher-forced logits
              (``--logits``, an ``.npz`` of plain arrays) for the main environment to compare with PyTorch
              (:mod:`pipeline.npu_lib.worker_measure`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path

REFUSED = 3  # exit code: the model file failed its hash or allow-list check; nothing of it ran


def expose_this_folder() -> None:
    """Make ``pipeline.npu_lib.<module>`` resolve to the files of this folder, and nothing else of ``pipeline``
    but the standard-library-only :mod:`pipeline.validation.genai_runner` (the speed-run rule every family keeps).

    The worker runs as a script with ``-I`` in the library's environment, where ``pipeline`` is not installed.
    Empty package objects stand in for ``pipeline`` (no path: none of its other subpackages can be found),
    ``pipeline.npu_lib`` (this folder) and ``pipeline.validation``, so the helpers keep the names they have in the
    main environment; the import contract in ``pyproject.toml`` allows the worker that one module of it.
    """
    here = Path(__file__).resolve().parent
    folders: tuple[tuple[str, list[str]], ...] = (
        ("pipeline", []),
        ("pipeline.npu_lib", [str(here)]),
        ("pipeline.validation", [str(here.parent / "validation")]),
    )
    for name, path in folders:
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = path
            sys.modules[name] = package


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments of the three commands."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("probe", "compile", "validate"):
        p = sub.add_parser(name)
        p.add_argument("--result", required=True, help="JSON file to write the result to")
    build = sub.choices["compile"]
    build.add_argument("--model", required=True)
    build.add_argument("--dtype", required=True, choices=("int4", "int8", "fp16"))
    build.add_argument("--load-dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    build.add_argument("--layer-by-layer", action="store_true", help="one decoder layer in memory at a time")
    build.add_argument("--out", required=True)
    check = sub.choices["validate"]
    for name in ("--model-file", "--sha256", "--tokenizer", "--reference", "--logits"):
        check.add_argument(name, required=True)
    for name, default in (("--max-new-tokens", 32), ("--new-tokens", 32), ("--warmup", 1), ("--repeats", 3)):
        check.add_argument(name, type=int, default=default)
    check.add_argument("--budget-s", type=float, default=0.0, help="validate.perf_budget_s (0: no cap)")
    check.add_argument("--no-speed", action="store_true", help="no speed runs (stand-in, quick profile)")
    check.add_argument("--forced-answers", action="store_true", help="answers by teacher forcing (stand-in, quick)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; write its result JSON. Exit 3 (one line on stderr) when a file is refused."""
    args = parse(argv)
    from pipeline.npu_lib import worker_compile, worker_measure
    from pipeline.npu_lib.worker_pickle import HashMismatch, UnsafePickle

    command = {
        "probe": worker_compile.probe,
        "compile": worker_compile.compile_model,
        "validate": worker_measure.validate_model,
    }[args.command]
    try:
        result = command(args)
    except (HashMismatch, UnsafePickle) as err:
        print(f"error: {err}", file=sys.stderr)
        return REFUSED
    tmp = Path(f"{args.result}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.result)
    return 0


if __name__ == "__main__":
    expose_this_folder()
    sys.exit(main())
