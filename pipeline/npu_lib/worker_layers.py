"""The library's recipe, built one decoder layer at a time: the same model in a fraction of the memory.

Runs in the library's environment (standard library + torch + transformers + safetensors + the library),
imported by :mod:`pipeline.npu_lib.worker_compile`. The recipe (``NPUModel.from_pretrained``) loads the whole
checkpoint at ``load_dtype`` (float32: 2x a bf16 checkpoint, 14.2 GiB for Phi-3-mini) and then quantizes it;
its peak on the full-size Phi-3-mini was 16.6 / 20.2 / 16.1 GiB for int4 / int8 / fp16. Here the model is
created on the meta device, the embeddings and final norm are loaded, and then each decoder layer (and the LM head)
is read from the safetensors files at ``load_dtype``, compiled with the library's own ``compile`` (the same
neural-compressor RTN per ``nn.Linear``, the same lowering to its NPU layers) and put in place before the next
one is read. Only one float layer exists at a time.

Every ``nn.Linear`` is quantized on its own by the recipe (RTN, per output channel, no calibration), so
compiling a layer alone gives the same tensors as compiling the whole model: on the tiny Phi-3 and Phi-4
every tensor and the logits are bit-identical (``tests/npu_lib/test_npu_lib_layers.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LAYERS_PREFIX = "model.layers."


def tensor_files(model_dir: Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor (``model.safetensors.index.json``, or the single file)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    from safetensors import safe_open

    single = model_dir / "model.safetensors"
    with safe_open(str(single), "pt") as handle:
        return dict.fromkeys(handle.keys(), single)


class CheckpointReader:
    """Reads named tensors from a checkpoint's safetensors files, cast to ``dtype`` (``nn.Linear`` weights: ``linear_dtype``).

    ``linear_dtype`` is for the fp16 variant, whose lowering only casts every Linear weight to float16: reading
    it as float16 directly gives the same bits (a bf16 or fp16 checkpoint widens to float32 exactly, so both
    paths round the same value once) without a float32 copy of the layer.
    """

    def __init__(self, model_dir: Path, dtype: Any, linear_dtype: Any = None) -> None:
        self.files = tensor_files(model_dir)
        self.dtype = dtype
        self.linear_dtype = linear_dtype or dtype

    def target_dtypes(self, module: Any) -> dict[str, Any]:
        """The dtype each state-dict entry of ``module`` is read as."""
        import torch

        linear = {f"{n}.weight" if n else "weight" for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
        return {name: self.linear_dtype if name in linear else self.dtype for name in module.state_dict()}

    def load_into(self, module: Any, prefix: str) -> None:
        """Give ``module`` (on the meta device) its tensors ``prefix + name``, read and cast, nothing else."""
        from safetensors import safe_open

        dtypes = self.target_dtypes(module)
        names = list(dtypes)
        missing = [prefix + n for n in names if prefix + n not in self.files]
        if missing:
            raise RuntimeError(f"the checkpoint has no {missing[0]} (layer-by-layer build; set layer_by_layer: false)")
        state = {}
        for file in sorted({self.files[prefix + n] for n in names}):
            with safe_open(str(file), "pt") as handle:
                for name in names:
                    if self.files[prefix + name] == file:
                        state[name] = handle.get_tensor(prefix + name).to(dtypes[name])
        module.load_state_dict(state, assign=True, strict=True)

    def unused(self, used_prefixes: list[str]) -> list[str]:
        """Tensors of the checkpoint that no loaded module took (a checkpoint this builder does not understand)."""
        return sorted(n for n in self.files if not n.startswith(tuple(used_prefixes)))


def compiled(module: Any, compiler_config: Any) -> Any:
    """``module`` through the library's ``compile`` (quantization and lowering), as the recipe does to the model."""
    import torch
    from intel_npu_acceleration_library import compile as npu_compile

    holder = torch.nn.ModuleDict({"m": module})  # compile replaces children: give the module a parent
    return npu_compile(holder, compiler_config)["m"]


def skeleton(model_dir: Path, dtype: Any) -> Any:
    """The causal LM with every weight on the meta device (no memory), as ``from_pretrained`` would build it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    # Computed buffers (rotary frequencies) are not in the checkpoint: build them again on the CPU, in float32.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config)
    return model


def build_layer_by_layer(model_dir: Path, compiler_config: Any, load_dtype: Any) -> Any:
    """The recipe's compiled model, from one decoder layer at a time (see the module docstring).

    With tied embeddings the LM head gets its own copy of the embedding table, as
    :class:`pipeline.npu_lib.worker_compile.UntiedCausalLM` gives the whole-model recipe (the library would
    otherwise quantize the shared table in place).
    """
    import torch

    model = skeleton(Path(model_dir), load_dtype)
    fp16 = compiler_config.dtype == torch.float16  # the fp16 variant: Linear weights are only cast to float16
    reader = CheckpointReader(Path(model_dir), load_dtype, torch.float16 if fp16 else None)
    reader.load_into(model.model.embed_tokens, "model.embed_tokens.")
    reader.load_into(model.model.norm, "model.norm.")
    # Tied: transformers would share the embedding table with the LM head; the head gets its own copy instead.
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = "model.embed_tokens." if tied else "lm_head."
    model.config.tie_word_embeddings = False
    layers = model.model.layers
    for i in range(len(layers)):
        layer = layers[i]
        reader.load_into(layer, f"{LAYERS_PREFIX}{i}.")
        layers[i] = compiled(layer, compiler_config)
        del layer
        print(f"[npu-lib worker] decoder layer {i + 1}/{len(layers)} compiled", file=sys.stderr, flush=True)
    reader.load_into(model.lm_head, head)
    model.lm_head = compiled(model.lm_head, compiler_config)
    leftover = reader.unused(["model.embed_tokens.", "model.norm.", LAYERS_PREFIX, "lm_head."])  # tied: lm_head ignored
    if leftover:
        raise RuntimeError(f"the checkpoint's {leftover[0]} has no place in the model (layer-by-layer build)")
    return model.eval()


def make_reproducible(model: Any, model_dir: Path) -> None:
    """Give the pickle the same bytes for the same checkpoint and library: no random ids, no absolute paths.

    The library names each compiled layer with ``uuid.uuid4()`` (``op_id``, its kernel-cache key: only unique within
    a process) and transformers keeps the checkpoint's absolute path in ``config._name_or_path``; both went into the
    pickle, so two builds differed (and so did torch's ``serialization_id``, a CRC of the contents). Each ``op_id``
    becomes a UUID derived from the layer's module path and its weights (unique, also across two models loaded in
    one process), and the path the folder's name.
    """
    import hashlib
    import uuid

    import torch

    for name, module in model.named_modules():
        if isinstance(getattr(module, "op_id", None), str):
            digest = hashlib.sha256(name.encode())
            for key in ("weight", "scale"):
                value = getattr(module, key, None)
                if isinstance(value, torch.Tensor):
                    digest.update(value.detach().contiguous().view(torch.uint8).numpy().tobytes())
            module.op_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"aipc-pipeline/npu_lib/{digest.hexdigest()}"))
    for module in model.modules():  # transformers keeps the path on the model (name_or_path) and its config
        if isinstance(getattr(module, "name_or_path", None), str):
            module.name_or_path = Path(model_dir).name
        config: Any = getattr(module, "config", None)
        if isinstance(getattr(config, "_name_or_path", None), str):
            config._name_or_path = Path(model_dir).name
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(generation, "_original_object_hash", None) is not None:
        # hash() of its JSON: salted per process (it never matches after loading in another one anyway)
        text = generation.to_json_string(ignore_metadata=True).encode()
        generation._original_object_hash = int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)
