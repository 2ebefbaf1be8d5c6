"""Typed configuration: the composed ``params.yaml`` loaded into checked pydantic dataclasses.

DVC composes ``conf/`` (Hydra) into ``params.yaml``; every stage loads that file through
:func:`load_params`, so an unknown key, a wrong type or an out-of-range value fails at load
time with one line that names the key and says what to do. pydantic does the checking (strict
types, ``extra="forbid"``, per-field checks); :func:`_one_line` turns its report into that line.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

# The section machinery (pipeline.core.typed); ConfigError and build are also imported from here by callers.
from pipeline.core import typed as bound  # the numeric field types, each with its range
from pipeline.core.registry import FAMILIES
from pipeline.core.typed import ConfigError, FromConf, Nats, Share, TokenCounts, _check_choice, _typed, build

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # pipeline/
PROJECT_ROOT = PACKAGE_DIR.parent
ASSETS_DIR = PACKAGE_DIR / "assets"  # embedded models, test vectors, the NPU-library constraints
PARAMS_FILE = Path("params.yaml")
CONF_DIR = bound.CONF_DIR


ModelSource = Literal["hub", "local", "tiny"]
# Embedded test models (source=tiny): folders under pipeline/assets/, each with a README saying how it was made.
EmbeddedAsset = Literal[
    "tiny_phi3",  # 4k context, sliding window 2047, MHA (scripts/make_tiny_phi3.py)
    "tiny_phi3_128k",  # LongRoPE 128k, GQA, no sliding window (scripts/make_tiny_phi3_128k.py)
    "tiny_phi4",  # Phi-4-mini-shaped: head 128, partial rotary 0.75, GQA 2:1, LongRoPE (scripts/make_tiny_phi4.py)
]
WeightFormat = Literal["int4", "int8", "fp16"]
EMBEDDED_ASSETS = typing.get_args(EmbeddedAsset)
# Datasets that work offline: text shipped inside this package.
OFFLINE_DATASETS = ("heldout",)
LOCAL_PATH_REQUIRED = "model.local_path is required for source=local: pass model.local_path=C:/path/to/checkpoint"


@_typed("model", conf="model/preset/base.yaml")
class ModelConfig(FromConf):
    """Which checkpoint to convert and where it comes from (defaults: ``conf/model/preset/base.yaml``)."""

    name: str
    source: ModelSource
    asset: EmbeddedAsset  # which embedded model source=tiny copies
    repo_id: str | None
    revision: str | None
    local_path: str | None
    allow_patterns: list[str]
    license: str | None
    trust_remote_code: bool
    notes: str | None

    @classmethod
    def preset(cls, option: str, /, **overrides: Any) -> ModelConfig:
        """``conf/model/<option>.yaml`` over the base it starts from (as ``model=<option>`` composes), with overrides."""
        return cls.from_conf(**{**bound.conf_values(f"model/{option}.yaml"), **overrides})

    def __post_init__(self) -> None:
        if self.source == "hub":
            if not self.repo_id or "/" not in self.repo_id:
                raise ConfigError("model.repo_id must be 'owner/name' for source=hub")
            if not self.revision:
                raise ConfigError("model.revision must pin a commit for source=hub (reproducible downloads)")
        if self.source == "local" and not self.local_path:
            raise ConfigError(LOCAL_PATH_REQUIRED)


ComputePrecision = Literal["f32", "bf16", "f16"]


@_typed("validate.long_context", conf="validate/default.yaml")
class LongContextConfig(FromConf):
    """Teacher-forced windows long enough to cross the sliding window and LongRoPE's switch of rope factors."""

    lengths: TokenCounts  # capped at the model's context length
    boundaries: TokenCounts  # plus sliding_window, original context
    top_k: bound.TopK
    min_top1_agreement: dict[WeightFormat, Share]
    max_mean_kl: dict[WeightFormat, Nats]


@_typed("validate.device_numerics", conf="validate/default.yaml")
class DeviceNumericsConfig(FromConf):
    """Thresholds on how far a run at the device's own numerics drifts from the pinned f32 run of the artifact."""

    min_top1_agreement: dict[ComputePrecision, Share]
    max_mean_kl: dict[ComputePrecision, Nats]

    def thresholds(self, compute: str) -> dict[str, float | None]:
        """The drift thresholds of ``compute`` (``f32``, ``bf16``, ``f16``)."""
        key: Any = compute
        return {"min_top1_agreement": self.min_top1_agreement.get(key), "max_mean_kl": self.max_mean_kl.get(key)}


ChatRole = Literal["system", "user", "assistant"]


@_typed()
class ChatMessage:
    """One message of a validation prompt, rendered with the checkpoint's chat template (Phi-3's where it has none)."""

    role: ChatRole
    content: str


# A validation prompt: chat messages; a plain string is shorthand for one user message.
ChatPrompt = Annotated[
    list[ChatMessage], BeforeValidator(lambda v: [ChatMessage(role="user", content=v)] if isinstance(v, str) else v)
]


def target_device_choices() -> dict[str, tuple[str, ...]]:
    """Target devices a family may list in validate.devices (its registry line's ``devices``), read at check time."""
    return {f.name: f.devices for f in FAMILIES.values() if f.devices}


@_typed("validate", conf="validate/default.yaml")
class ValidateConfig(FromConf):
    """How exported models are run and compared with the PyTorch original (defaults: ``conf/validate/default.yaml``)."""

    devices: dict[str, list[str]]
    cpu_stand_in: bool
    # quick: what fits the time budget; full: what `aipc publish` requires. Both give the same verdicts.
    profile: Literal["quick", "full"]
    stand_in_speed: bool | None  # speed runs of CPU stand-in cells; None: only in the full profile
    stand_in_max_ram_gib: bound.GiB
    prompts: list[ChatPrompt]
    max_new_tokens: bound.Tokens
    eval_tokens: bound.Tokens
    eval_window: bound.Tokens
    kl_top_k: bound.TopK
    perf_prompt_tokens: dict[str, bound.Tokens]
    perf_new_tokens: bound.Tokens
    warmup: bound.Warmup
    repeats: bound.Runs
    perf_budget_s: bound.Seconds
    reference_dtype: Literal["float32", "bfloat16", "float16"]
    min_top1_agreement: dict[WeightFormat, Share]
    max_mean_kl: dict[WeightFormat, Nats]
    device_numerics: DeviceNumericsConfig
    emulate_numerics: list[Literal["bf16", "f16"]]
    npuw_max_size_mb: bound.MB
    long_context: LongContextConfig

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("validate.prompts must list at least one prompt")
        for i, prompt in enumerate(self.prompts):
            if not prompt or prompt[-1].role != "user":
                raise ConfigError(f"validate.prompts[{i}] must end with a user message: the model answers it")
        if self.profile == "full" and self.stand_in_speed is False:
            raise ConfigError("validate.profile=full measures every speed run: drop validate.stand_in_speed=false")
        if not self.perf_prompt_tokens:
            raise ConfigError("validate.perf_prompt_tokens must name at least one prompt length, e.g. {short: 32}")
        choices_of = target_device_choices()
        for family, choices in choices_of.items():
            if not self.devices.get(family):
                raise ConfigError(f"validate.devices.{family} must list the devices it targets, e.g. [{choices[0]}]")
            for device in self.devices[family]:
                _check_choice(f"validate.devices.{family} entry", device, choices)
        for family in self.devices:
            if family not in choices_of:
                raise ConfigError(
                    f"validate.devices.{family}: unknown family; valid: "
                    f"{', '.join(choices_of)} (ONNX variants target their execution_provider)"
                )

    @property
    def measures_stand_in_speed(self) -> bool:
        """Whether CPU stand-in cells run speed runs: ``stand_in_speed`` if set, else the full profile does."""
        return self.profile == "full" if self.stand_in_speed is None else self.stand_in_speed

    def thresholds(self, precision: str) -> dict[str, float | None]:
        """The fidelity thresholds of ``precision`` (fp32 is held to the fp16 ones)."""
        key: Any = "fp16" if precision == "fp32" else precision
        return {"min_top1_agreement": self.min_top1_agreement.get(key), "max_mean_kl": self.max_mean_kl.get(key)}

    def long_context_thresholds(self, precision: str) -> dict[str, float | None]:
        """The per-range long-context thresholds of weight format ``precision``."""
        key: Any = "fp16" if precision == "fp32" else precision
        lc = self.long_context
        return {"min_top1_agreement": lc.min_top1_agreement.get(key), "max_mean_kl": lc.max_mean_kl.get(key)}


@_typed("sweep", conf="sweep/default.yaml")
class SweepConfig(FromConf):
    """A grid of OpenVINO compression settings run as DVC experiments, and the fidelity budget."""

    grid: dict[str, list[Any]]
    min_top1_agreement: Share
    metrics_file: str
    targets: list[str]
    jobs: bound.Runs

    def __post_init__(self) -> None:
        if not self.grid:
            raise ConfigError("sweep.grid must list at least one parameter, e.g. openvino.int4.group_size: [64, 128]")
        prefixes = tuple(f"{f.name}." for f in FAMILIES.values() if f.sweepable)
        for key, values in self.grid.items():
            if not key.startswith(prefixes) or not values:
                raise ConfigError(f"sweep.grid key '{key}' must be an export parameter with a list of values")


if typing.TYPE_CHECKING:

    class PipelineConfig:
        """The whole composed configuration (one ``params.yaml``): see :func:`pipeline_config_class`."""

        model: ModelConfig
        validate: ValidateConfig
        sweep: SweepConfig

        def __getattr__(self, family: str) -> dict[str, Any]: ...


def _check_pipeline(self: Any) -> None:
    # "???" is Hydra's unset value (conf/model/local.yaml). A bare ModelConfig keeps it, so download names it too.
    if self.model.source == "local" and self.model.local_path == "???":
        raise ConfigError(LOCAL_PATH_REQUIRED)


@functools.cache
def pipeline_config_class() -> type:
    """The class of the whole composed configuration: ``model``, ``validate``, ``sweep``, plus one section per family.

    Each family's section maps variant names to the variant config class its registry line names
    (``pipeline.openvino.config:OpenVinoVariantConfig``), imported here lazily, so the core imports no family
    and adding a family never edits this module. ``PipelineConfig`` (this module's attribute) is this class.
    """
    sections: list[Any] = [("model", ModelConfig), ("validate", ValidateConfig), ("sweep", SweepConfig)]
    # A section type built at run time from the registry (mypy reads only static types in a subscript)
    sections += [(f.name, dict[str, f.variant_config()], field(default_factory=dict)) for f in FAMILIES.values()]  # type: ignore[misc]
    cls = dataclasses.make_dataclass(
        "PipelineConfig",
        sections,
        namespace={
            "__post_init__": _check_pipeline,
            "__doc__": "The whole composed configuration (params.yaml).",
            "__module__": __name__,
        },
    )
    return _typed()(cls)


def __getattr__(name: str) -> Any:
    if name == "PipelineConfig":  # built on first use: it imports every family's variant config (lazily)
        return pipeline_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_params(path: Path | str = PARAMS_FILE) -> PipelineConfig:
    """Load and check ``params.yaml`` (written by DVC's Hydra composition or ``aipc compose``)."""
    from pipeline.core.yamlfile import read_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `aipc compose` (or `dvc exp run`) in the project root")
    data = read_yaml(path) or {}
    return build(pipeline_config_class(), data)


def compose(overrides: list[str] | None = None, conf_dir: Path = CONF_DIR) -> dict:
    """``conf_dir``'s ``config.yaml`` with Hydra ``overrides`` (``model=tiny``), as ``dvc exp run -S`` composes it.

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
    assert isinstance(data, dict)  # a composed config is a mapping (narrows to_container's union)
    build(pipeline_config_class(), data)
    return data


def dump_yaml(data: dict) -> str:
    """Render ``data`` as YAML the way ``params.yaml`` is committed (key order kept)."""
    import yaml

    header = "# Generated from conf/ by `aipc compose` (DVC's Hydra composition writes the same file).\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
