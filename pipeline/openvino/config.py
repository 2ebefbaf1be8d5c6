"""Variant configs of the OpenVINO families: ``openvino.<v>`` (IR int4 / int8 / fp16) and ``npu.<v>`` (NPU-ready IR).

The registry names these classes (``pipeline.core.registry``); ``pipeline.core.config`` builds the composed
params with them, so a bad value fails at load time with one line naming its key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pipeline.core.config import WeightFormat
from pipeline.core.typed import ConfigError, FromConf, Positive, Tokens, _at_most, _check, _typed

# at most a hidden size (Phi-3-mini 3072, Phi-4-mini 3072, medium 5120); check_group_size tests it divides the model's
GroupSize = Annotated[
    int, _check(lambda v: v == -1 or v > 0, "must be positive or -1 (per channel), got {}"), _at_most(16384)
]
BackupPrecision = Literal["none", "int8_sym", "int8_asym"]
SensitivityMetric = Literal[
    "weight_quantization_error",
    "hessian_input_activation",
    "mean_activation_variance",
    "max_activation_variance",
    "mean_activation_magnitude",
]
GroupSizeFallback = Literal["error", "ignore", "adjust"]
# The NPU takes group 128 or channel-wise only: "adjust" picks channel-wise; "ignore" would leave layers in float.
NpuGroupSizeFallback = Literal["error", "adjust"]

NEEDS_DATA = "awq/scale_estimation/gptq need data: set dataset=heldout (offline) or a dataset name"


@_typed(conf="openvino/variant/base.yaml")
class OpenVinoVariantConfig(FromConf):
    """One OpenVINO IR to export: weight format plus NNCF weight-compression parameters.

    Every default is in ``conf/openvino/variant/base.yaml``; :meth:`from_conf` builds one from it.
    """

    weight_format: WeightFormat
    group_size: GroupSize
    ratio: Annotated[
        float, _check(lambda v: 0.0 < v <= 1.0, "must be in (0, 1], got {}: it is the share of layers kept at 4 bits")
    ]
    sym: bool
    backup_precision: BackupPrecision
    all_layers: bool
    awq: bool
    scale_estimation: bool
    gptq: bool
    dataset: str | None
    num_samples: Positive | None
    sensitivity_metric: SensitivityMetric | None
    group_size_fallback: GroupSizeFallback
    # Layers kept at the IR's float precision (NNCF ignored scope: Python regexes matched from the start of the
    # IR layer name), e.g. [".*mlp\\.down_proj.*"] against degenerate int4 output; checked on the IR after export.
    keep_float: list[str]
    # The CPU's compute precision, written into the IR's runtime_config.json for every loader that reads it (aipc chat,
    # the validation, the card's code); null: the plugin's own (bf16 on AMX / AVX512-BF16 CPUs, f32 on AVX2 laptops).
    # The validation names this override when the CPU's default numerics garble the greedy answers.
    cpu_inference_precision: Literal["f32", "bf16"] | None

    def __post_init__(self) -> None:
        if (self.awq or self.scale_estimation or self.gptq) and self.dataset is None:
            raise ConfigError(NEEDS_DATA)
        if self.dataset is not None and self.weight_format != "int4":
            raise ConfigError("dataset is only used by int4 data-aware compression; remove it for int8/fp16")
        if self.keep_float and not self.compressed:
            raise ConfigError("keep_float applies to int4/int8 compression; an fp16 IR keeps every layer in float")
        for pattern in self.keep_float:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"keep_float pattern {pattern!r} is not a regular expression ({err})") from None

    @property
    def compressed(self) -> bool:
        """True when NNCF weight compression applies (int4/int8)."""
        return self.weight_format in ("int4", "int8")


NpuGenerateHint = Literal["FAST_COMPILE", "BEST_PERF"]
NpuPrefillHint = Literal["DYNAMIC", "STATIC"]
NpuCacheMode = Literal["OPTIMIZE_SPEED", "OPTIMIZE_SIZE"]


@_typed(conf="npu/variant/base.yaml")
class NpuVariantConfig(FromConf):
    """An NPU-ready OpenVINO IR: int4 symmetric, ratio 1.0, group 128 or channel-wise, plus NPU run settings.

    Source of the layout rules: OpenVINO GenAI "on NPU" guide (docs.openvino.ai, inference-with-genai-on-npu).
    Every default is in ``conf/npu/variant/base.yaml``; :meth:`from_conf` builds one from it.
    """

    group_size: int
    ratio: float
    sym: bool
    awq: bool
    scale_estimation: bool
    gptq: bool
    dataset: str | None
    num_samples: Positive | None
    max_prompt_len: Tokens
    min_response_len: Tokens
    generate_hint: NpuGenerateHint
    prefill_hint: NpuPrefillHint
    cache_mode: NpuCacheMode
    group_size_fallback: NpuGroupSizeFallback

    def __post_init__(self) -> None:
        if not self.sym or self.ratio != 1.0 or self.group_size not in (128, -1):
            raise ConfigError(
                f"the NPU needs int4 symmetric weights, ratio 1.0 and group_size 128 or -1 (channel-wise); "
                f"got sym={self.sym}, ratio={self.ratio}, group_size={self.group_size}"
            )
        if (self.awq or self.scale_estimation or self.gptq) and self.dataset is None:
            raise ConfigError(NEEDS_DATA)

    def as_openvino(self, group_size: int | None = None) -> OpenVinoVariantConfig:
        """The equivalent weight-compression request for the OpenVINO exporter (``group_size``: another layout)."""
        return OpenVinoVariantConfig(
            weight_format="int4",
            group_size=self.group_size if group_size is None else group_size,
            ratio=self.ratio,
            sym=self.sym,
            backup_precision="int8_asym",
            awq=self.awq,
            scale_estimation=self.scale_estimation,
            gptq=self.gptq,
            dataset=self.dataset,
            num_samples=self.num_samples,
            # The NPU IR's own request, not defaults: no other NNCF options, and a group that does not divide is
            # already settled here (npu.<v>.group_size_fallback, passed as group_size).
            all_layers=False,
            sensitivity_metric=None,
            group_size_fallback="error",
            keep_float=[],
            cpu_inference_precision=None,
        )

    def run_settings(self) -> dict[str, Any]:
        """The ``LLMPipeline(..., "NPU", **settings)`` properties stored beside the model."""
        return {
            "MAX_PROMPT_LEN": self.max_prompt_len,
            "MIN_RESPONSE_LEN": self.min_response_len,
            "GENERATE_HINT": self.generate_hint,
            "PREFILL_HINT": self.prefill_hint,
            "CACHE_MODE": self.cache_mode,
        }
