"""Typed configuration: the composed ``params.yaml`` loaded into checked dataclasses.

DVC composes ``conf/`` (Hydra) into ``params.yaml``; every stage loads that file through
:func:`load_params`, so an unknown key, a wrong type or an out-of-range value fails at load
time with one line that names the key and says what to do.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = Path("params.yaml")
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which key and how to fix it."""


def pick_variant(section: dict[str, Any], name: str, what: str) -> Any:
    """``section[name]``, or a one-line :class:`ConfigError` listing the configured ``what`` variants."""
    if name not in section:
        raise ConfigError(f"unknown {what} variant '{name}': configured ones are {', '.join(section)}")
    return section[name]


MODEL_SOURCES = ("hub", "local", "tiny")
# Embedded test models (source=tiny): folders under pipeline/assets/, each with a README saying how it was made.
EMBEDDED_ASSETS = (
    "tiny_phi3",  # 4k context, sliding window 2047, MHA (scripts/make_tiny_phi3.py)
    "tiny_phi3_128k",  # LongRoPE 128k, GQA, no sliding window (scripts/make_tiny_phi3_128k.py)
)
WEIGHT_FORMATS = ("int4", "int8", "fp16")
BACKUP_PRECISIONS = ("none", "int8_sym", "int8_asym")
SENSITIVITY_METRICS = (
    "weight_quantization_error",
    "hessian_input_activation",
    "mean_activation_variance",
    "max_activation_variance",
    "mean_activation_magnitude",
)
GROUP_SIZE_FALLBACKS = ("error", "ignore", "adjust")
# Datasets that work offline: text shipped inside this package.
OFFLINE_DATASETS = ("heldout",)


@dataclass
class ModelConfig:
    """Which checkpoint to convert and where it comes from."""

    name: str = "tiny-phi3"
    source: str = "tiny"
    asset: str = "tiny_phi3"  # which embedded model source=tiny copies (EMBEDDED_ASSETS)
    repo_id: str | None = None
    revision: str | None = None
    local_path: str | None = None
    allow_patterns: list[str] = field(default_factory=list)
    license: str | None = None
    trust_remote_code: bool = False
    notes: str | None = None

    def __post_init__(self) -> None:
        _check_choice("model.source", self.source, MODEL_SOURCES)
        _check_choice("model.asset", self.asset, EMBEDDED_ASSETS)
        if self.source == "hub":
            if not self.repo_id or "/" not in self.repo_id:
                raise ConfigError("model.repo_id must be 'owner/name' for source=hub")
            if not self.revision:
                raise ConfigError("model.revision must pin a commit for source=hub (reproducible downloads)")
        if self.source == "local" and not self.local_path:
            raise ConfigError("model.local_path is required for source=local: point it at a model folder")


@dataclass
class OpenVinoVariantConfig:
    """One OpenVINO IR to export: weight format plus NNCF weight-compression parameters."""

    weight_format: str = "int4"
    group_size: int = 128
    ratio: float = 1.0
    sym: bool = False
    backup_precision: str = "int8_asym"
    all_layers: bool = False
    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    dataset: str | None = None
    num_samples: int | None = None
    sensitivity_metric: str | None = None
    group_size_fallback: str = "error"

    def __post_init__(self) -> None:
        _check_choice("weight_format", self.weight_format, WEIGHT_FORMATS)
        _check_choice("backup_precision", self.backup_precision, BACKUP_PRECISIONS)
        _check_choice("group_size_fallback", self.group_size_fallback, GROUP_SIZE_FALLBACKS)
        if self.sensitivity_metric is not None:
            _check_choice("sensitivity_metric", self.sensitivity_metric, SENSITIVITY_METRICS)
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"ratio must be in (0, 1], got {self.ratio}: it is the share of layers kept at 4 bits")
        if self.group_size != -1 and self.group_size <= 0:
            raise ConfigError(f"group_size must be positive or -1 (per channel), got {self.group_size}")
        if self.num_samples is not None and self.num_samples <= 0:
            raise ConfigError(f"num_samples must be positive, got {self.num_samples}")
        needs_data = self.awq or self.scale_estimation or self.gptq
        if needs_data and self.dataset is None:
            raise ConfigError("awq/scale_estimation/gptq need data: set dataset=heldout (offline) or a dataset name")
        if self.dataset is not None and self.weight_format != "int4":
            raise ConfigError("dataset is only used by int4 data-aware compression; remove it for int8/fp16")

    @property
    def compressed(self) -> bool:
        """True when NNCF weight compression applies (int4/int8)."""
        return self.weight_format in ("int4", "int8")


NPU_GENERATE_HINTS = ("FAST_COMPILE", "BEST_PERF")
NPU_PREFILL_HINTS = ("DYNAMIC", "STATIC")
NPU_CACHE_MODES = ("OPTIMIZE_SPEED", "OPTIMIZE_SIZE")


@dataclass
class NpuVariantConfig:
    """An NPU-ready OpenVINO IR: int4 symmetric, ratio 1.0, group 128 or channel-wise, plus NPU run settings.

    Source of the layout rules: OpenVINO GenAI "on NPU" guide (docs.openvino.ai, inference-with-genai-on-npu).
    """

    group_size: int = 128
    ratio: float = 1.0
    sym: bool = True
    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    dataset: str | None = None
    num_samples: int | None = None
    max_prompt_len: int = 1024
    min_response_len: int = 128
    generate_hint: str = "FAST_COMPILE"
    prefill_hint: str = "DYNAMIC"
    cache_mode: str = "OPTIMIZE_SPEED"

    def __post_init__(self) -> None:
        if not self.sym or self.ratio != 1.0 or self.group_size not in (128, -1):
            raise ConfigError(
                f"the NPU needs int4 symmetric weights, ratio 1.0 and group_size 128 or -1 (channel-wise); "
                f"got sym={self.sym}, ratio={self.ratio}, group_size={self.group_size}")
        if (self.awq or self.scale_estimation or self.gptq) and self.dataset is None:
            raise ConfigError("awq/scale_estimation/gptq need data: set dataset=heldout (offline) or a dataset name")
        for key in ("max_prompt_len", "min_response_len"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        _check_choice("generate_hint", self.generate_hint, NPU_GENERATE_HINTS)
        _check_choice("prefill_hint", self.prefill_hint, NPU_PREFILL_HINTS)
        _check_choice("cache_mode", self.cache_mode, NPU_CACHE_MODES)

    def as_openvino(self) -> OpenVinoVariantConfig:
        """The equivalent weight-compression request for the OpenVINO exporter."""
        return OpenVinoVariantConfig(
            weight_format="int4", group_size=self.group_size, ratio=self.ratio, sym=self.sym,
            backup_precision="int8_asym", awq=self.awq, scale_estimation=self.scale_estimation, gptq=self.gptq,
            dataset=self.dataset, num_samples=self.num_samples)

    def run_settings(self) -> dict[str, Any]:
        """The ``LLMPipeline(..., "NPU", **settings)`` properties stored beside the model."""
        return {"MAX_PROMPT_LEN": self.max_prompt_len, "MIN_RESPONSE_LEN": self.min_response_len,
                "GENERATE_HINT": self.generate_hint, "PREFILL_HINT": self.prefill_hint, "CACHE_MODE": self.cache_mode}


NPU_LIB_DTYPES = ("int4", "int8", "fp16")  # intel_npu_acceleration_library: int4, int8, torch.float16
NPU_LIB_LOAD_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class NpuLibVariantConfig:
    """One intel-npu-acceleration-library model: ``CompilerConfig(dtype=...)`` and the checkpoint's load dtype.

    Source: the library's README recipe, ``NPUModelForCausalLM.from_pretrained(model_id, use_cache=True,
    config=CompilerConfig(dtype=int4))`` (github.com/intel/intel-npu-acceleration-library, v1.4.0).
    """

    dtype: str = "int4"
    load_dtype: str = "float32"

    def __post_init__(self) -> None:
        _check_choice("dtype", self.dtype, NPU_LIB_DTYPES)
        _check_choice("load_dtype", self.load_dtype, NPU_LIB_LOAD_DTYPES)


# ONNX Runtime GenAI model builder (onnxruntime_genai.models.builder 0.18). Precisions per provider: the builder's
# own "valid combinations" list, minus fp32 for dml and cuda: the builder writes those graphs, but their present.*
# outputs are produced by no node, so ONNX Runtime refuses to load them.
ONNX_PRECISIONS = {"dml": ("int4", "fp16"), "cpu": ("int4", "int8", "fp32"), "cuda": ("int4", "int8", "fp16"),
                   "webgpu": ("int4", "int8")}
ONNX_BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MatMulNBits quantization accepts (MLAS)
ONNX_ALGOS = ("default", "rtn", "k_quant", "rtn_last", "k_quant_last", "k_quant_mixed", "k_quant_linear")
# Further builder options accepted under extra_options (current names; value type; providers it applies to).
ONNX_EXTRA_OPTIONS: dict[str, tuple[type, tuple[str, ...] | None]] = {
    "op_types_to_quantize": (list, None), "nodes_to_exclude": (list, None), "matmul_mixed_precision": (str, None),
    "shared_embeddings": (bool, None), "fuse_qkv": (bool, None), "use_qdq": (bool, None),
    "windowed_kv_cache": (bool, None), "enable_cuda_graph": (bool, ("cuda",)), "use_cuda_bf16": (bool, ("cuda",)),
    "enable_webgpu_graph": (bool, ("webgpu",)), "use_webgpu_fp32": (bool, ("webgpu",)),
}


@dataclass
class OnnxVariantConfig:
    """One ONNX Runtime GenAI model built by onnxruntime_genai's model builder; option names are the builder's."""

    execution_provider: str = "dml"
    precision: str = "int4"
    block_size: int | None = None          # None = builder default (32)
    accuracy_level: int | None = None      # None = builder default (4 on cpu/webgpu, 0 elsewhere)
    is_symmetric: bool | None = None       # None = builder default (true)
    algo_config: str | None = None         # None = builder default ("default", i.e. RTN)
    exclude_embeds: bool = False
    exclude_lm_head: bool = False
    enable_dml_graph: bool | None = None   # DML graph capture; None = builder default (on)
    extra_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("execution_provider", self.execution_provider, tuple(ONNX_PRECISIONS))
        _check_choice("precision", self.precision, ("int4", "int8", "fp16", "fp32"))
        allowed = ONNX_PRECISIONS[self.execution_provider]
        if self.precision == "fp32" and self.execution_provider in ("dml", "cuda"):
            raise ConfigError(f"precision fp32 is refused for {self.execution_provider}: the builder writes a graph whose "
                              f"present.* outputs no node produces; use one of {', '.join(allowed)}")
        if self.precision not in allowed:
            raise ConfigError(f"precision {self.precision} is not supported for execution_provider "
                              f"{self.execution_provider}; use one of {', '.join(allowed)}")
        quant = {k: getattr(self, k) for k in ("block_size", "accuracy_level", "is_symmetric", "algo_config")}
        if self.precision not in ("int4", "int8") and any(v is not None for v in quant.values()):
            raise ConfigError(f"int4/int8-only options set for {self.precision}: "
                              f"{', '.join(k for k, v in quant.items() if v is not None)}; remove them")
        if self.block_size is not None and self.block_size not in ONNX_BLOCK_SIZES:
            raise ConfigError(f"block_size must be one of {', '.join(map(str, ONNX_BLOCK_SIZES))} "
                              f"(MatMulNBits), got {self.block_size}")
        if self.accuracy_level is not None and not 0 <= self.accuracy_level <= 4:
            raise ConfigError(f"accuracy_level must be 0-4 (0 = provider default, 4 = int8 compute), got {self.accuracy_level}")
        if self.algo_config is not None:
            _check_choice("algo_config", self.algo_config, ONNX_ALGOS)
        if self.enable_dml_graph is not None and self.execution_provider != "dml":
            raise ConfigError("enable_dml_graph applies to execution_provider dml only; remove it")
        _check_builder_options(self.extra_options, self.execution_provider)


def _check_builder_options(options: dict[str, Any], provider: str) -> None:
    """Reject extra_options the builder would silently ignore (unknown, renamed) or that do not fit."""
    typed = ("block_size", "accuracy_level", "is_symmetric", "algo_config", "exclude_embeds", "exclude_lm_head",
             "enable_dml_graph")
    for name, value in options.items():
        if name in typed:
            raise ConfigError(f"set {name} directly on the variant, not under extra_options")
        if name.startswith("int4_") and name[5:] in (*typed, *ONNX_EXTRA_OPTIONS):
            raise ConfigError(f"extra_options.{name} is the old name, which builder 0.18 silently ignores: "
                              f"use {name[5:]}")
        if name not in ONNX_EXTRA_OPTIONS:
            raise ConfigError(f"unknown builder option extra_options.{name} (the builder would silently ignore it); "
                              f"valid: {', '.join(typed)} (as variant keys), {', '.join(ONNX_EXTRA_OPTIONS)}")
        kind, providers = ONNX_EXTRA_OPTIONS[name]
        if providers and provider not in providers:
            raise ConfigError(f"extra_options.{name} applies to {', '.join(providers)} only, not {provider}")
        ok = all(isinstance(v, str) for v in value) if kind is list and isinstance(value, list) else isinstance(value, kind)
        if not ok:
            raise ConfigError(f"extra_options.{name} must be a {kind.__name__}{' of strings' if kind is list else ''}, "
                              f"got {value!r}")


COMPUTE_PRECISIONS = ("f32", "bf16", "f16")


@dataclass
class LongContextConfig:
    """Teacher-forced windows long enough to cross the sliding window and LongRoPE's switch of rope factors."""

    lengths: list[int] = field(default_factory=lambda: [3000, 6000])  # capped at the model's context length
    boundaries: list[int] = field(default_factory=lambda: [1024])  # plus sliding_window, original context
    top_k: int = 64
    min_top1_agreement: dict[str, float] = field(default_factory=dict)
    max_mean_kl: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, values in {"lengths": self.lengths, "boundaries": self.boundaries}.items():
            if any(v <= 1 for v in values):
                raise ConfigError(f"validate.long_context.{key} must hold token counts above 1, got {values}")
        if self.top_k <= 0:
            raise ConfigError(f"validate.long_context.top_k must be positive, got {self.top_k}")
        _check_thresholds("validate.long_context", self.min_top1_agreement, self.max_mean_kl, WEIGHT_FORMATS)


@dataclass
class DeviceNumericsConfig:
    """Thresholds on how far a run at the device's own numerics drifts from the pinned f32 run of the artifact."""

    min_top1_agreement: dict[str, float] = field(default_factory=dict)  # keyed by compute precision
    max_mean_kl: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_thresholds("validate.device_numerics", self.min_top1_agreement, self.max_mean_kl, COMPUTE_PRECISIONS)

    def thresholds(self, compute: str) -> dict[str, float | None]:
        """The drift thresholds of ``compute`` (``f32``, ``bf16``, ``f16``)."""
        return {"min_top1_agreement": self.min_top1_agreement.get(compute), "max_mean_kl": self.max_mean_kl.get(compute)}


def _check_thresholds(where: str, top1: dict[str, float], kl: dict[str, float], keys: tuple[str, ...]) -> None:
    """Threshold tables: known keys, top-1 agreement in [0, 1], KL positive."""
    for key, threshold in top1.items():
        _check_choice(f"{where}.min_top1_agreement key", key, keys)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"{where}.min_top1_agreement.{key} must be in [0, 1], got {threshold}")
    for key, threshold in kl.items():
        _check_choice(f"{where}.max_mean_kl key", key, keys)
        if threshold <= 0:
            raise ConfigError(f"{where}.max_mean_kl.{key} must be positive (nats), got {threshold}")


@dataclass
class ValidateConfig:
    """How exported models are run and compared with the PyTorch original."""

    devices: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_TARGET_DEVICES))
    cpu_stand_in: bool = True
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 32
    eval_tokens: int = 512
    eval_window: int = 128
    kl_top_k: int = 1024
    perf_prompt_tokens: dict[str, int] = field(default_factory=lambda: {"short": 32, "long": 1024})
    perf_new_tokens: int = 32
    warmup: int = 1
    repeats: int = 3
    reference_dtype: str = "float32"
    min_top1_agreement: dict[str, float] = field(default_factory=dict)
    max_mean_kl: dict[str, float] = field(default_factory=dict)
    device_numerics: DeviceNumericsConfig = field(default_factory=DeviceNumericsConfig)
    emulate_numerics: list[str] = field(default_factory=lambda: ["bf16", "f16"])
    long_context: LongContextConfig = field(default_factory=LongContextConfig)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("validate.prompts must list at least one prompt")
        for key, value in {"max_new_tokens": self.max_new_tokens, "eval_tokens": self.eval_tokens,
                           "eval_window": self.eval_window, "repeats": self.repeats, "kl_top_k": self.kl_top_k,
                           "perf_new_tokens": self.perf_new_tokens, **{f"perf_prompt_tokens.{k}": v for k, v in
                                                                      self.perf_prompt_tokens.items()}}.items():
            if value <= 0:
                raise ConfigError(f"validate.{key} must be positive, got {value}")
        if not self.perf_prompt_tokens:
            raise ConfigError("validate.perf_prompt_tokens must name at least one prompt length, e.g. {short: 32}")
        _check_target_devices(self.devices)
        if self.warmup < 0:
            raise ConfigError(f"validate.warmup must be >= 0, got {self.warmup}")
        _check_choice("validate.reference_dtype", self.reference_dtype, ("float32", "bfloat16", "float16"))
        _check_thresholds("validate", self.min_top1_agreement, self.max_mean_kl, WEIGHT_FORMATS)
        for precision in self.emulate_numerics:
            _check_choice("validate.emulate_numerics entry", precision, ("bf16", "f16"))

    def thresholds(self, precision: str) -> dict[str, float | None]:
        """The fidelity thresholds of ``precision`` (fp32 is held to the fp16 ones)."""
        key = "fp16" if precision == "fp32" else precision
        return {"min_top1_agreement": self.min_top1_agreement.get(key), "max_mean_kl": self.max_mean_kl.get(key)}

    def long_context_thresholds(self, precision: str) -> dict[str, float | None]:
        """The per-range long-context thresholds of weight format ``precision``."""
        key = "fp16" if precision == "fp32" else precision
        lc = self.long_context
        return {"min_top1_agreement": lc.min_top1_agreement.get(key), "max_mean_kl": lc.max_mean_kl.get(key)}


# Target devices per artifact family (validate.devices); ONNX variants target their execution_provider.
DEFAULT_TARGET_DEVICES = {"openvino": ["CPU", "GPU"], "npu": ["NPU"], "npu_lib": ["NPU"]}
TARGET_DEVICE_CHOICES = {"openvino": ("CPU", "GPU", "NPU"), "npu": ("CPU", "GPU", "NPU"), "npu_lib": ("NPU",)}


def _check_target_devices(devices: dict[str, list[str]]) -> None:
    """Every artifact family named, with at least one device it can target."""
    for family, choices in TARGET_DEVICE_CHOICES.items():
        if not devices.get(family):
            raise ConfigError(f"validate.devices.{family} must list the devices it targets, e.g. [{choices[0]}]")
        for device in devices[family]:
            _check_choice(f"validate.devices.{family} entry", device, choices)
    for family in devices:
        if family not in TARGET_DEVICE_CHOICES:
            raise ConfigError(f"validate.devices.{family}: unknown family; valid: {', '.join(TARGET_DEVICE_CHOICES)} "
                              f"(ONNX variants target their execution_provider)")


@dataclass
class SweepConfig:
    """A grid of OpenVINO compression settings run as DVC experiments, and the fidelity budget."""

    grid: dict[str, list[Any]] = field(default_factory=dict)
    min_top1_agreement: float = 0.95
    metrics_file: str = "artifacts/metrics/openvino-int4.json"
    targets: list[str] = field(default_factory=lambda: ["validate@int4"])
    jobs: int = 1

    def __post_init__(self) -> None:
        if not self.grid:
            raise ConfigError("sweep.grid must list at least one parameter, e.g. openvino.int4.group_size: [64, 128]")
        for key, values in self.grid.items():
            if not key.startswith(("openvino.", "npu.", "onnx.")) or not values:
                raise ConfigError(f"sweep.grid key '{key}' must be an export parameter with a list of values")
        if not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ConfigError(f"sweep.min_top1_agreement must be in [0, 1], got {self.min_top1_agreement}")
        if self.jobs <= 0:
            raise ConfigError(f"sweep.jobs must be positive, got {self.jobs}")


@dataclass
class PipelineConfig:
    """The whole composed configuration (one ``params.yaml``)."""

    model: ModelConfig
    openvino: dict[str, OpenVinoVariantConfig]
    npu: dict[str, NpuVariantConfig]
    npu_lib: dict[str, NpuLibVariantConfig]
    validate: ValidateConfig
    sweep: SweepConfig
    onnx: dict[str, OnnxVariantConfig] = field(default_factory=dict)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` strictly, recursing into dataclasses, lists and dicts."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def build(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Args:
        cls: The dataclass type.
        data: A mapping (from YAML).
        where: Dotted key prefix used in error messages.

    Returns:
        An instance of ``cls``; its ``__post_init__`` range checks have run.

    Raises:
        ConfigError: On an unknown key, a wrong type or a value out of range.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key '{key}'; valid keys here: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}" if where and not str(err).startswith(where) else str(err)) from None
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where or 'config'}: {err}") from None


def load_params(path: Path | str = PARAMS_FILE) -> PipelineConfig:
    """Load and check ``params.yaml`` (written by DVC's Hydra composition or ``aipc compose``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `aipc compose` (or `dvc exp run`) in the project root")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return build(PipelineConfig, data)


def compose(overrides: list[str] | None = None, conf_dir: Path = CONF_DIR) -> dict:
    """Compose ``conf/config.yaml`` with Hydra overrides, as ``dvc exp run -S`` does.

    Args:
        overrides: Hydra overrides such as ``["model=tiny", "openvino.int4.group_size=64"]``.
        conf_dir: The Hydra config directory.

    Returns:
        The composed configuration as plain containers (already type-checked).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot compose conf/: {str(err).splitlines()[0]}") from None
    data = OmegaConf.to_container(cfg, resolve=True)
    build(PipelineConfig, data)
    return data


def dump_yaml(data: dict) -> str:
    """Render ``data`` as YAML the way ``params.yaml`` is committed (key order kept)."""
    import yaml

    header = "# Generated from conf/ by `aipc compose` (DVC's Hydra composition writes the same file).\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
