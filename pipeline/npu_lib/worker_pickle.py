"""The NPU library's model file, checked and loaded without running anything in it (runs in the library's env).

Imported by :mod:`pipeline.npu_lib.worker` (standard library + torch + the library; never the main environment).
:func:`check_hash` runs before anything is unpickled; :func:`load_model` is ``torch.load(weights_only=True)`` with
only :data:`SAFE_CLASSES` allowed.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

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
