"""``worker.py compile`` and ``probe``: the library's recipe for one dtype, whole or layer by layer.

Runs in the library's environment (standard library + torch + transformers + the library), imported by
:mod:`pipeline.npu_lib.worker`. ``--layer-by-layer`` builds the same model as the recipe from one decoder layer
at a time (:mod:`pipeline.npu_lib.worker_layers`); without it, the library's own ``NPUModel.from_pretrained``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pipeline.npu_lib.worker_pickle import sha256_file, unsafe_globals

PACKAGES = ("intel-npu-acceleration-library", "torch", "numpy", "openvino", "transformers", "neural-compressor")


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
    executed = "NPU" if available else "CPU"
    return {"npu_available": available, "device_executed": executed, "warnings": messages, "compute": compute(executed)}


def compute(executed: str) -> str:
    """The compute precision the library's kernels get on ``executed``: the NPU's f16, else the CPU plugin's default.

    The library compiles its kernels with no precision hint, so on the CPU they compute at the plugin's default:
    ``bf16`` on CPUs with AVX512-BF16 or AMX, ``f32`` elsewhere. Read from the OpenVINO this environment holds
    (the library's own), as the library would get it; ``unknown`` if it cannot be read.
    """
    if executed == "NPU":
        return "f16"
    try:
        import openvino as ov

        hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
        return str(hint.get_type_name()) if hasattr(hint, "get_type_name") else str(hint)
    except Exception:  # an older OpenVINO without the property: say so rather than guess
        return "unknown"


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
    """Compile ``args.model`` with ``CompilerConfig(dtype=args.dtype)`` and save the library's pickle to ``args.out``.

    This is ``NPUModelForCausalLM.from_pretrained(model, use_cache=True, config=CompilerConfig(dtype=...))``
    with the untied loader: with ``--layer-by-layer`` built one decoder layer at a time
    (:func:`pipeline.npu_lib.worker_layers.build_layer_by_layer`, the same tensors), else by the library's
    own export path, which ``torch.save``s into ``./cache/models``.
    """
    import torch

    device = import_library()
    import intel_npu_acceleration_library as npu_lib
    from intel_npu_acceleration_library.compiler import CompilerConfig

    config = CompilerConfig(dtype={"int4": npu_lib.int4, "int8": npu_lib.int8, "fp16": torch.float16}[args.dtype])
    load_dtype = getattr(torch, args.load_dtype)
    start = time.perf_counter()
    if args.layer_by_layer:
        from pipeline.npu_lib.worker_layers import build_layer_by_layer, make_reproducible

        model = build_layer_by_layer(Path(args.model), config, load_dtype)
        make_reproducible(model, Path(args.model))
        torch.save(model, args.out)  # what the library's export does (modelling.NPUModel.from_pretrained)
    else:
        model = whole_model(args.model, config, load_dtype, Path(args.out))
    compile_s = time.perf_counter() - start
    unknown = unsafe_globals(Path(args.out))
    if unknown:  # validate would refuse this file: a library or transformers change added a class
        raise RuntimeError(
            f"the library's pickle refers to {', '.join(unknown)}, outside pipeline/npu_lib/worker_pickle.py "
            "SAFE_CLASSES: check that they run no code when unpickled, then add them"
        )
    return {
        **device,
        "compile_s": round(compile_s, 3),
        "linear_layers": linear_kinds(model),
        "tied_embeddings": embedding_tie(model),
        "versions": versions(),
        "sha256": sha256_file(Path(args.out)),
        "bytes": Path(args.out).stat().st_size,
    }


def whole_model(model_dir: str, config: Any, load_dtype: Any, out: Path) -> Any:
    """The recipe as the library runs it: the whole checkpoint loaded at ``load_dtype``, compiled, saved; moved to ``out``."""
    from intel_npu_acceleration_library.modelling import NPUModel

    use_short_cache_names()
    model = NPUModel.from_pretrained(model_dir, config, UntiedCausalLM, True, use_cache=True, dtype=load_dtype)
    saved = sorted(Path("cache", "models").glob("*/pytorch_npu_model.pt"))
    if len(saved) != 1:
        raise RuntimeError(f"expected one pytorch_npu_model.pt under ./cache/models, found {len(saved)}")
    os.replace(saved[0], out)
    return model


def linear_kinds(model: Any) -> dict[str, int]:
    """How many linear layers of each class the compiled model has (``intel_npu_acceleration_library.QuantizedLinear``...)."""
    kinds: dict[str, int] = {}
    for module in model.modules():
        if "Linear" in type(module).__name__:
            name = f"{type(module).__module__.split('.')[0]}.{type(module).__name__}"
            kinds[name] = kinds.get(name, 0) + 1
    return kinds


def precision(module: Any) -> str:
    """What a layer's weight is stored as: ``int4`` (the library packs two in a uint8), ``int8``, or its float dtype."""
    import torch

    weight = module.weight
    if "Quantized" in type(module).__name__:
        return "int4" if weight.dtype == torch.uint8 else "int8"
    return str(weight.dtype).removeprefix("torch.")


def embedding_tie(model: Any) -> dict[str, Any]:
    """What the compiled model holds for the input embedding and the LM head, in the layout the other families read
    back from their artifacts (``pipeline.openvino.ir_inspect.embedding_tie``); the export adds the checkpoint's
    tie with ``pipeline.core.manifest.tied_embeddings``, which this environment cannot import."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    return {
        "shared_constant": embed.weight.data_ptr() == head.weight.data_ptr(),
        "embedding": {"layer": "model.embed_tokens", "precision": precision(embed)},
        "lm_head": {"layer": "lm_head", "precision": precision(head)},
    }


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Import the library and report versions and the device it would use."""
    return {**import_library(), "versions": versions()}
