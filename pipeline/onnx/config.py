"""Variant config of the ``onnx`` family (``onnx.<v>``): ONNX Runtime GenAI models from the model builder."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pipeline.core.typed import ConfigError, FromConf, _check, _typed

# ONNX Runtime GenAI model builder (onnxruntime_genai.models.builder 0.18). Precisions per provider: the builder's
# own "valid combinations" list, minus fp32 for dml and cuda: the builder writes those graphs, but their present.*
# outputs are produced by no node, so ONNX Runtime refuses to load them.
ONNX_PRECISIONS = {
    "dml": ("int4", "fp16"),
    "cpu": ("int4", "int8", "fp32"),
    "cuda": ("int4", "int8", "fp16"),
    "webgpu": ("int4", "int8"),
}
ONNX_BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MatMulNBits quantization accepts (MLAS)
OnnxAlgo = Literal["default", "rtn", "k_quant", "rtn_last", "k_quant_last", "k_quant_mixed", "k_quant_linear"]
# Further builder options accepted under extra_options (current names; value type; providers it applies to).
ONNX_EXTRA_OPTIONS: dict[str, tuple[type, tuple[str, ...] | None]] = {
    "op_types_to_quantize": (list, None),
    "nodes_to_exclude": (list, None),
    "matmul_mixed_precision": (str, None),
    "shared_embeddings": (bool, None),
    "fuse_qkv": (bool, None),
    "use_qdq": (bool, None),
    "windowed_kv_cache": (bool, None),
    "enable_cuda_graph": (bool, ("cuda",)),
    "use_cuda_bf16": (bool, ("cuda",)),
    "enable_webgpu_graph": (bool, ("webgpu",)),
    "use_webgpu_fp32": (bool, ("webgpu",)),
}
BlockSize = Annotated[
    int,
    _check(
        lambda v: v in ONNX_BLOCK_SIZES,
        f"must be one of {', '.join(map(str, ONNX_BLOCK_SIZES))} (MatMulNBits), got {{}}",
    ),
]
AccuracyLevel = Annotated[
    int, _check(lambda v: 0 <= v <= 4, "must be 0-4 (0 = provider default, 4 = int8 compute), got {}")
]


@_typed(conf="onnx/variant/base.yaml")
class OnnxVariantConfig(FromConf):
    """One ONNX Runtime GenAI model built by onnxruntime_genai's model builder; option names are the builder's.

    Every default is in ``conf/onnx/variant/base.yaml``; :meth:`from_conf` builds one from it.
    """

    execution_provider: Literal["dml", "cpu", "cuda", "webgpu"]
    precision: Literal["int4", "int8", "fp16", "fp32"]
    block_size: BlockSize | None  # None = builder default (32)
    accuracy_level: AccuracyLevel | None  # None = builder default (4 on cpu/webgpu, 0 elsewhere)
    is_symmetric: bool | None  # None = builder default (true)
    algo_config: OnnxAlgo | None  # None = builder default ("default", i.e. RTN)
    exclude_embeds: bool
    exclude_lm_head: bool
    enable_dml_graph: bool | None  # DML graph capture; None = builder default (on)
    extra_options: dict[str, Any]

    def __post_init__(self) -> None:
        allowed = ONNX_PRECISIONS[self.execution_provider]
        if self.precision == "fp32" and self.execution_provider in ("dml", "cuda"):
            raise ConfigError(
                f"precision fp32 is refused for {self.execution_provider}: the builder writes a graph whose "
                f"present.* outputs no node produces; use one of {', '.join(allowed)}"
            )
        if self.precision not in allowed:
            raise ConfigError(
                f"precision {self.precision} is not supported for execution_provider "
                f"{self.execution_provider}; use one of {', '.join(allowed)}"
            )
        quant = {k: getattr(self, k) for k in ("block_size", "accuracy_level", "is_symmetric", "algo_config")}
        if self.precision not in ("int4", "int8") and any(v is not None for v in quant.values()):
            raise ConfigError(
                f"int4/int8-only options set for {self.precision}: "
                f"{', '.join(k for k, v in quant.items() if v is not None)}; remove them"
            )
        if self.enable_dml_graph is not None and self.execution_provider != "dml":
            raise ConfigError("enable_dml_graph applies to execution_provider dml only; remove it")
        _check_builder_options(self.extra_options, self.execution_provider)


def _check_builder_options(options: dict[str, Any], provider: str) -> None:
    """Reject extra_options the builder would silently ignore (unknown, renamed) or that do not fit."""
    typed = (
        "block_size",
        "accuracy_level",
        "is_symmetric",
        "algo_config",
        "exclude_embeds",
        "exclude_lm_head",
        "enable_dml_graph",
    )
    for name, value in options.items():
        if name in typed:
            raise ConfigError(f"set {name} directly on the variant, not under extra_options")
        if name.startswith("int4_") and name[5:] in (*typed, *ONNX_EXTRA_OPTIONS):
            raise ConfigError(
                f"extra_options.{name} is the old name, which builder 0.18 silently ignores: use {name[5:]}"
            )
        if name not in ONNX_EXTRA_OPTIONS:
            raise ConfigError(
                f"unknown builder option extra_options.{name} (the builder would silently ignore it); "
                f"valid: {', '.join(typed)} (as variant keys), {', '.join(ONNX_EXTRA_OPTIONS)}"
            )
        kind, providers = ONNX_EXTRA_OPTIONS[name]
        if providers and provider not in providers:
            raise ConfigError(f"extra_options.{name} applies to {', '.join(providers)} only, not {provider}")
        ok = (
            all(isinstance(v, str) for v in value)
            if kind is list and isinstance(value, list)
            else isinstance(value, kind)
        )
        if not ok:
            raise ConfigError(
                f"extra_options.{name} must be a {kind.__name__}{' of strings' if kind is list else ''}, got {value!r}"
            )
