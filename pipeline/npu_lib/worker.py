"""Runs INSIDE the isolated intel-npu-acceleration-library environment: probe, compile, or load + validate.

Started by :mod:`pipeline.npu_lib.export` as ``<env python> -I worker.py <command> --result FILE ...``
(``-I``: neither this folder nor ``PYTHONPATH`` is on ``sys.path``, so nothing of the main environment leaks
in). It imports only the standard library at module level and the isolated environment's packages (torch,
transformers, the library) inside functions; it never imports ``pipeline``. Each call handles ONE dtype in
its own process: compiling int4 after int8 in one process segfaults (the library caches its compiled
kernels under a key without the weight dtype, so an int4 layer can reuse an int8 kernel of the same shape).

Commands:
    probe     import the library; report versions and whether it sees an NPU
    compile   NPUModelForCausalLM-style compile of one dtype; save the library's pickle to --out
    validate  check the pickle's sha256 (refuse and exit 3 on mismatch, before anything is unpickled),
              load it with ``torch.load(weights_only=True)`` allowing only :data:`SAFE_GLOBALS` (refuse and
              exit 3 if it needs anything else: nothing in it runs), generate greedily, time every speed
              prompt, and save its teacher-forced logits (``--logits``, an ``.npz`` of plain arrays) for the
              main environment to compare with PyTorch
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pickle
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

PACKAGES = ("intel-npu-acceleration-library", "torch", "numpy", "openvino", "transformers", "neural-compressor")
REFUSED = 3  # exit code: the model file failed its hash or allow-list check; nothing of it ran


# Every global the library's pickle refers to besides torch's own tensor rebuilders, and nothing more:
# read with pickletools (GLOBAL opcodes) from the int4, int8 and fp16 pickles that 1.4.0 saves of Phi-3
# with transformers 5.5.4. torch.load(weights_only=True) may create these classes and call nothing else.
SAFE_CLASSES = (
    "intel_npu_acceleration_library.nn.autograd.AutogradMatMul",
    "intel_npu_acceleration_library.nn.linear.Linear",  # fp16
    "intel_npu_acceleration_library.nn.linear.QuantizedLinear",  # int4, int8
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.sparse.Embedding",
    "transformers.activations.SiLUActivation",
    "transformers.core_model_loading.WeightRenaming",
    "transformers.generation.configuration_utils.GenerationConfig",
    "transformers.models.phi3.configuration_phi3.Phi3Config",
    "transformers.models.phi3.modeling_phi3.Phi3Attention",
    "transformers.models.phi3.modeling_phi3.Phi3DecoderLayer",
    "transformers.models.phi3.modeling_phi3.Phi3ForCausalLM",
    "transformers.models.phi3.modeling_phi3.Phi3MLP",
    "transformers.models.phi3.modeling_phi3.Phi3Model",
    "transformers.models.phi3.modeling_phi3.Phi3RMSNorm",
    "transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding",
    "collections.defaultdict",  # WeightRenaming.collected_tensors = defaultdict(list)
    "builtins.list",
)
# Attributes the pickle reads with getattr: QuantizedLinear/Linear keep ``self._mm = AutogradMatMul.apply``.
# A free getattr would reach any function's __globals__ and so eval; this one reaches only these.
SAFE_ATTRIBUTES = {("intel_npu_acceleration_library.nn.autograd.AutogradMatMul", "apply")}


class HashMismatch(Exception):
    """The model file is not the one the manifest recorded."""


class UnsafePickle(Exception):
    """The model file needs a global outside :data:`SAFE_CLASSES` to load: it is not (only) the library's model."""


def resolve(dotted: str) -> Any:
    """The class or function ``module.name`` (importing only the module named)."""
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` for the unpickler: only the (class, attribute) pairs of :data:`SAFE_ATTRIBUTES`."""
    owner = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
    if not isinstance(obj, type) or (owner, name) not in SAFE_ATTRIBUTES:
        raise pickle.UnpicklingError(f"getattr({owner}, {name!r}) is not allowed")
    return getattr(obj, name)


def compile_regex(pattern: Any, flags: Any) -> Any:
    """``re._compile`` for the unpickler (WeightRenaming keeps compiled patterns): a str pattern only."""
    if not isinstance(pattern, str) or not isinstance(flags, int):
        raise pickle.UnpicklingError("re._compile called with something other than a str pattern")
    return re.compile(pattern, flags)


def safe_globals() -> list[Any]:
    """The allow-list for ``torch.serialization.safe_globals``: the classes, then the two guarded stand-ins."""
    return [
        *(resolve(name) for name in SAFE_CLASSES),
        (restricted_getattr, "builtins.getattr"),
        (compile_regex, "re._compile"),
    ]


def allowed_names() -> set[str]:
    """Dotted names the loader accepts, as torch reports the globals of a checkpoint."""
    return {*SAFE_CLASSES, "builtins.getattr", "re._compile"}


def load_model(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with only :func:`safe_globals` allowed; never runs other code.

    Raises:
        UnsafePickle: The file refers to anything else (nothing of it was run).
    """
    import torch

    with torch.serialization.safe_globals(safe_globals()):
        try:
            return torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as err:
            found = re.search(
                r"GLOBAL (\S+)|unrecognized function (.+?)(?: which|$)|(getattr\(.*?\) is not allowed)",
                str(err),
                re.MULTILINE,
            )
            what = next((g for g in found.groups() if g), "") if found else str(err).splitlines()[0][:120]
            raise UnsafePickle(
                f"refusing to load {path.name}: it is not only the library's model (it needs "
                f"{what}, outside the allow-list); nothing in it ran"
            ) from None


def unsafe_globals(path: Path) -> list[str]:
    """Globals of a checkpoint that :func:`load_model` would refuse (read from the pickle, nothing is loaded)."""
    import torch

    return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed_names())


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_hash(path: Path, expected: str) -> None:
    """Raise :class:`HashMismatch` unless ``path`` hashes to ``expected`` (runs before any unpickling)."""
    actual = sha256_file(path)
    if actual != expected:
        raise HashMismatch(
            f"refusing to load {path.name}: its sha256 {actual[:16]}... is not the recorded "
            f"{expected[:16]}...; the pickle was modified, so it is not unpickled (rebuild it)"
        )


def versions() -> dict[str, str]:
    """Versions of the isolated environment's packages that shape the model."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def import_library() -> dict[str, Any]:
    """Import the library, recording the warnings it gives (its NPU fallback is only a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import intel_npu_acceleration_library  # noqa: F401
        from intel_npu_acceleration_library.backend import npu_available
    messages = sorted({str(w.message).strip() for w in caught if "NPU" in str(w.message)})
    for message in messages:
        print(f"[npu-lib worker] library warning: {message}", file=sys.stderr, flush=True)
    # Without an NPU the library compiles every kernel for CPU (inference.h: compile_model).
    available = bool(npu_available())
    return {"npu_available": available, "device_executed": "NPU" if available else "CPU", "warnings": messages}


class UntiedCausalLM:
    """``AutoModelForCausalLM`` whose lm_head no longer shares its tensor with the input embeddings.

    The library quantizes lm_head in place (neural-compressor RTN), which with tied embeddings also
    overwrites the embedding table with integer codes (top-1 agreement 0.05 on the tiny model).
    Phi-3-mini has untied embeddings, so this changes nothing there. Upstream (archived, no fix):
    https://github.com/intel/intel-npu-acceleration-library
    """

    @staticmethod
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        """Load like ``AutoModelForCausalLM.from_pretrained``, then give lm_head its own weight copy."""
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(*args, **kwargs)
        head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
        # isinstance: a Module's attributes are typed Tensor | Module (always the Parameter here)
        if head is not None and isinstance(head.weight, torch.Tensor) and head.weight is embeddings.weight:
            head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
            model.config.tie_word_embeddings = False
        return model


def short_cache_name(model_name: str, *args: Any, **kwargs: Any) -> str:
    """A cache folder name without drive or path: ``model-<sha256 of the path and arguments>-<version>``.

    Replaces the library's ``modelling.get_mangled_model_name``, which turns the whole model path into the
    name by replacing only ``\\`` and ``/``: an absolute ``C:\\...`` path leaves ``C:_Users_...``, which
    ``os.path.join`` treats as drive-relative, so the file lands outside ``cache\\models``; the name also
    repeats the full path, which overflows Windows' 260-character limit. Upstream (archived, no fix):
    https://github.com/intel/intel-npu-acceleration-library/blob/main/intel_npu_acceleration_library/modelling.py
    """
    import hashlib

    import intel_npu_acceleration_library as npu_lib

    key = repr([model_name, [str(a) for a in args], sorted(f"{k}_{v}" for k, v in kwargs.items())])
    return f"model-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]}-{npu_lib.__version__}"


def use_short_cache_names() -> None:
    """Make the library name its cache folders with :func:`short_cache_name` (drive-safe, short)."""
    from intel_npu_acceleration_library import modelling

    modelling.get_mangled_model_name = short_cache_name


def compile_model(args: argparse.Namespace) -> dict[str, Any]:
    """Compile ``args.model`` with ``CompilerConfig(dtype=args.dtype)`` and move the library's pickle to ``args.out``.

    This is ``NPUModelForCausalLM.from_pretrained(model, use_cache=True, config=CompilerConfig(dtype=...))``
    (the library's own export path, which ``torch.save``s into ``./cache/models``) with the untied loader.
    """
    import torch

    device = import_library()
    import intel_npu_acceleration_library as npu_lib
    from intel_npu_acceleration_library.compiler import CompilerConfig
    from intel_npu_acceleration_library.modelling import NPUModel

    dtype = {"int4": npu_lib.int4, "int8": npu_lib.int8, "fp16": torch.float16}[args.dtype]
    use_short_cache_names()
    start = time.perf_counter()
    model = NPUModel.from_pretrained(
        args.model,
        CompilerConfig(dtype=dtype),
        UntiedCausalLM,
        True,
        use_cache=True,
        dtype=getattr(torch, args.load_dtype),
    )
    compile_s = time.perf_counter() - start
    saved = sorted(Path("cache", "models").glob("*/pytorch_npu_model.pt"))
    if len(saved) != 1:
        raise RuntimeError(f"expected one pytorch_npu_model.pt under ./cache/models, found {len(saved)}")
    os.replace(saved[0], args.out)
    unknown = unsafe_globals(Path(args.out))
    if unknown:  # validate would refuse this file: a library or transformers change added a class
        raise RuntimeError(
            f"the library's pickle refers to {', '.join(unknown)}, outside pipeline/npu_lib/worker.py SAFE_CLASSES: "
            "check that they run no code when unpickled, then add them"
        )
    kinds: dict[str, int] = {}
    for module in model.modules():
        if "Linear" in type(module).__name__:
            name = f"{type(module).__module__.split('.')[0]}.{type(module).__name__}"
            kinds[name] = kinds.get(name, 0) + 1
    return {
        **device,
        "compile_s": round(compile_s, 3),
        "linear_layers": kinds,
        "versions": versions(),
        "sha256": sha256_file(Path(args.out)),
        "bytes": Path(args.out).stat().st_size,
    }


class TokenTimes:
    """A ``generate`` streamer that only records when each chunk of tokens arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        """Called with the prompt first, then with every new token."""
        self.times.append(time.perf_counter())

    def end(self) -> None:
        """Called once generation stops."""


def generate(
    model: Any, prompt_ids: list[int], max_new_tokens: int, streamer: Any = None, exact: bool = False
) -> list[int]:
    """Greedy continuation of ``prompt_ids`` (new token ids only; ``exact``: ignore EOS)."""
    import torch

    ids = torch.tensor([prompt_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if exact else None,
        do_sample=False,
        streamer=streamer,
    )
    return out[0, ids.shape[1] :].tolist()


def timings(model: Any, prompt_ids: list[int], args: argparse.Namespace) -> dict[str, list[float]]:
    """TTFT and TPOT (ms) of each measured run of exactly ``--new-tokens`` tokens (warm-up runs dropped)."""
    ttft, tpot = [], []
    for i in range(args.warmup + args.repeats):
        timer = TokenTimes()
        start = time.perf_counter()
        generate(model, prompt_ids, args.new_tokens, timer, exact=True)
        if i < args.warmup:
            continue
        new = timer.times[1:]  # times[0] is the prompt
        ttft.append((new[0] - start) * 1000)
        tpot.append((new[-1] - new[0]) / max(len(new) - 1, 1) * 1000)
    return {"prompt_tokens": len(prompt_ids), "new_tokens": args.new_tokens, "ttft_ms": ttft, "tpot_ms": tpot}


def save_teacher_forced_logits(model: Any, windows: list[dict], path: Path) -> None:
    """Save the model's logits over each held-out window as ``w0, w1, ...`` in an ``.npz`` (float32, no pickles)."""
    import numpy as np
    import torch

    with torch.inference_mode():
        logits = {
            f"w{i}": model(torch.tensor([w["input_ids"]])).logits[0].float().numpy() for i, w in enumerate(windows)
        }
    np.savez(path, **logits)


def peak_rss_mb() -> float:
    """Peak resident set size of this worker process."""
    if sys.platform == "win32":  # no resource module there
        import psutil

        return round(psutil.Process().memory_info().peak_wset / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def validate_model(args: argparse.Namespace) -> dict[str, Any]:
    """Check the hash, load the pickle, then measure speed and fidelity against the reference."""
    check_hash(Path(args.model_file), args.sha256)  # before torch or the library is even imported
    import torch
    from transformers import AutoTokenizer

    device = import_library()
    start = time.perf_counter()
    model = load_model(Path(args.model_file))
    load_s = time.perf_counter() - start
    model.eval()
    reference = json.loads(Path(args.reference).read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with torch.inference_mode():
        outputs = [generate(model, case["prompt_ids"], args.max_new_tokens) for case in reference["greedy"]]
        perf = {name: timings(model, ids, args) for name, ids in reference["perf_prompts"].items()}
    save_teacher_forced_logits(model, reference["teacher_forced"], Path(args.logits))
    first = reference["greedy"][0]
    return {
        **device,
        "perf": perf,
        "load_s": round(load_s, 4),
        "outputs": outputs,
        "text": tokenizer.decode(outputs[0], skip_special_tokens=True),
        "tokenizer_matches_reference": tokenizer(first["prompt"], add_special_tokens=False)["input_ids"]
        == first["prompt_ids"],
        "peak_rss_mb": peak_rss_mb(),
        "versions": versions(),
    }


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Import the library and report versions and the device it would use."""
    return {**import_library(), "versions": versions()}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments of the three commands."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("probe", "compile", "validate"):
        p = sub.add_parser(name)
        p.add_argument("--result", required=True, help="JSON file to write the result to")
    sub.choices["compile"].add_argument("--model", required=True)
    sub.choices["compile"].add_argument("--dtype", required=True, choices=("int4", "int8", "fp16"))
    sub.choices["compile"].add_argument("--load-dtype", default="float32")
    sub.choices["compile"].add_argument("--out", required=True)
    check = sub.choices["validate"]
    for name in ("--model-file", "--sha256", "--tokenizer", "--reference", "--logits"):
        check.add_argument(name, required=True)
    for name, default in (("--max-new-tokens", 32), ("--new-tokens", 32), ("--warmup", 1), ("--repeats", 3)):
        check.add_argument(name, type=int, default=default)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; write its result JSON. Exit 3 (one line on stderr) when a file is refused."""
    args = parse(argv)
    command = {"probe": probe, "compile": compile_model, "validate": validate_model}[args.command]
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
    sys.exit(main())
