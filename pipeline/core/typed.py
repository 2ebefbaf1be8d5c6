"""Strict typed config sections: pydantic dataclasses whose errors are one line that names the key.

:func:`_typed` makes a class a strict pydantic dataclass (``extra="forbid"``, no coercion) whose constructor raises
:class:`ConfigError`; :func:`build` builds one from a YAML mapping; :func:`_one_line` turns pydantic's report into
the line (``openvino.int4.ratio must be in [0, 1], got 1.5``). :mod:`pipeline.core.config` declares the sections.

The conf/ YAML is the one source of default values: a section's fields have none (``tests/core/test_one_source.py``),
and :meth:`FromConf.from_conf` builds one from the YAML that holds its defaults, with overrides.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, TypeVar

from pydantic import AfterValidator, ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from typing_extensions import dataclass_transform


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which key and how to fix it."""


def pick_variant(section: dict[str, Any], name: str, what: str) -> Any:
    """``section[name]``, or a one-line :class:`ConfigError` listing the configured ``what`` variants."""
    if name not in section:
        raise ConfigError(f"unknown {what} variant '{name}': configured ones are {', '.join(section)}")
    return section[name]


CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"  # the Hydra config groups
T = TypeVar("T")
# Strict: no "1" -> 1, no 1 -> true. Nested sections are read from JSON (see build), where strict mode still
# accepts a mapping for a dataclass; from Python, strict mode wants an instance.
_STRICT = ConfigDict(extra="forbid", strict=True)


class FromConf:
    """A config section whose default values live in one conf/ YAML file (``_conf``), not in the class."""

    _conf: ClassVar[str] = ""  # that file, relative to conf/ (set by _typed)
    _home: ClassVar[str] = ""

    @classmethod
    def from_conf(cls, **overrides: Any) -> Self:
        """The section as its conf/ YAML sets it, with ``overrides`` on top, checked as ``params.yaml`` is.

        Raises:
            ConfigError: On an unknown key or a bad value; a key the YAML leaves unset (``???``) and no override sets.
        """
        return build(cls, {**conf_defaults(cls), **overrides})


def conf_defaults(cls: type) -> dict[str, Any]:
    """The values conf/ gives section ``cls``: its ``_conf`` file, at ``_home`` minus the group."""
    conf = getattr(cls, "_conf", "")
    if not conf:
        raise ConfigError(f"{cls.__name__} has no conf/ file of defaults")
    return conf_values(conf, getattr(cls, "_home", "").split(".")[1:])  # validate.long_context: its long_context


def conf_values(path: str, keys: list[str] | None = None) -> dict[str, Any]:
    """The values of conf/ file ``path`` (under ``keys``) as Hydra reads it, less ``defaults`` and unset (``???``) keys."""
    from omegaconf import OmegaConf

    data: Any = OmegaConf.to_container(OmegaConf.load(CONF_DIR / path))
    for key in keys or []:
        data = data[key]
    return {k: v for k, v in data.items() if k != "defaults" and v != "???"}


@dataclass_transform(field_specifiers=(field,))
def _typed(home: str = "", conf: str = "") -> Callable[[type[T]], type[T]]:
    """Make ``cls`` a strict pydantic dataclass whose constructor raises a one-line :class:`ConfigError`.

    Args:
        home: The dotted key the section always lives at (``"validate"``), used to name keys in messages.
        conf: The conf/ file that holds its default values (``"openvino/variant/base.yaml"``): a file holds its
            group's package, so ``validate.long_context`` is the ``long_context`` key of ``validate/default.yaml``.
    """

    def wrap(cls: type[T]) -> type[T]:
        checked = pydantic_dataclass(cls, config=_STRICT)
        init = checked.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as err:
                raise _one_line(err, checked, home) from None

        checked.__init__ = __init__  # type: ignore[method-assign]  # the one-line error wraps pydantic's __init__
        checked._home = home  # type: ignore[attr-defined]
        checked._conf = conf  # type: ignore[attr-defined]
        return typing.cast(type[T], checked)  # pydantic_dataclass returns the class it was given, checked

    return wrap


def _check(test: Callable[[Any], bool], message: str) -> AfterValidator:
    """A field check; ``message`` follows the key name and formats the bad value, e.g. ``"must be positive, got {}"``."""

    def check(value: Any) -> Any:
        if not test(value):
            raise ValueError(message.format(value))
        return value

    return AfterValidator(check)


def _at_most(high: float, unit: str = "") -> AfterValidator:
    """A field's upper bound (after its lower one; ``inf`` fails it too): ``must be at most 8192 tokens, got ...``."""
    return _check(lambda v: v <= high, f"must be at most {high}{unit}, got {{}}")


# Every numeric field has an upper bound a real run could not need, so a stray digit (max_new_tokens=100000000000)
# is refused at compose time in one line instead of hours into a run. Token counts: the longest context of the
# models this targets (Phi-3-mini-128k, Phi-4-mini: 131072).
MAX_TOKENS = 131072
_POSITIVE = _check(lambda v: v > 0, "must be positive, got {}")
_NOT_NEGATIVE = "must be >= 0{}, got {{}}"
Positive = Annotated[int, _POSITIVE, _at_most(1_000_000)]  # a count with no tighter bound of its own
Tokens = Annotated[int, _POSITIVE, _at_most(MAX_TOKENS, " tokens")]
_TOKEN_COUNTS = f"must hold token counts in (1, {MAX_TOKENS}], got {{}}"
TokenCounts = Annotated[list[int], _check(lambda vs: all(1 < v <= MAX_TOKENS for v in vs), _TOKEN_COUNTS)]
# log-probs kept per position: at most a vocabulary (Phi-4's has 200064 tokens)
TopK = Annotated[int, _POSITIVE, _at_most(262_144)]
Runs = Annotated[int, _POSITIVE, _at_most(100)]  # measured speed runs, sweep workers
Warmup = Annotated[int, _check(lambda v: v >= 0, _NOT_NEGATIVE.format("")), _at_most(100)]
Seconds = Annotated[float, _check(lambda v: v >= 0, _NOT_NEGATIVE.format(" (seconds; 0 = no cap)")), _at_most(86_400)]
GiB = Annotated[float, _check(lambda v: v >= 0, _NOT_NEGATIVE.format(" (GiB; 0 = no cap)")), _at_most(1024, " GiB")]
MB = Annotated[float, _check(lambda v: v >= 0, _NOT_NEGATIVE.format(" (MB)")), _at_most(1_000_000, " MB")]
Share = Annotated[float, _check(lambda v: 0.0 <= v <= 1.0, "must be in [0, 1], got {}")]
_NATS = _check(lambda v: v > 0, "must be positive (nats), got {}")
Nats = Annotated[float, _NATS, _at_most(100, " nats")]  # a mean KL: ln(vocabulary) is about 12


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


_KINDS = {
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
}


def _one_line(err: ValidationError, cls: type, where: str) -> ConfigError:
    """pydantic's report, first error only, as one line naming the dotted key (``openvino.int4.ratio``)."""
    first = err.errors(include_url=False)[0]
    kind, loc, value = first["type"], first["loc"], first["input"]
    is_key = loc[-1:] == ("[key]",)  # a dict key outside its Literal
    path = [where] if where else []
    path += [f"[{p}]" if isinstance(p, int) else str(p) for p in (loc[:-2] if is_key else loc)]
    key = ".".join(path).replace(".[", "[")
    if kind == "unexpected_keyword_argument":
        valid = [f.name for f in dataclasses.fields(_type_at(cls, loc[:-1]))]
        return ConfigError(f"unknown config key '{key}'; valid keys here: {', '.join(sorted(valid))}")
    if kind == "literal_error":  # expected: "'int4', 'int8' or 'fp16'"
        choices = first["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return ConfigError(f"{key}{' key' if is_key else ''} must be one of {choices}; got {value!r}")
    if kind in _KINDS:
        return ConfigError(f"{key or 'config'} must be {_KINDS[kind]}, got {value!r}")
    if kind == "missing":
        return ConfigError(f"missing config key '{key}'{_where_defaults(_type_at(cls, loc[:-1]), key)}")
    error = first.get("ctx", {}).get("error")
    if isinstance(error, ConfigError):  # from a __post_init__: the message names its key, or is relative to `key`
        return ConfigError(f"{key}: {error}" if key and not str(error).startswith(key) else str(error))
    return ConfigError(f"{key} {error}" if error else f"{key or 'config'}: {first['msg']}")


STALE = " (or a params.yaml composed before conf/ spelled it out: run `aipc compose` again)"


def _where_defaults(cls: type, key: str) -> str:
    """Where a missing key's default lives; for a family variant, the Hydra override that starts from it."""
    conf = getattr(cls, "_conf", "")
    group, _, rest = conf.partition("/")
    if rest == "variant/base.yaml" and key.count(".") >= 2:  # a variant: openvino.int4g64.ratio
        variant = key.rsplit(".", 1)[0]
        return f": start the variant from conf/{conf}, which sets every key: add +{group}/variant@{variant}=base first{STALE}"
    return f": its default is in conf/{conf}{STALE}" if conf else ""


def _type_at(cls: type, loc: tuple[Any, ...]) -> Any:
    """The declared type at ``loc`` under dataclass ``cls`` (to list the valid keys there)."""
    tp: Any = cls
    for part in loc:  # a field's type, or the value type of a dict
        tp = typing.get_type_hints(tp)[part] if dataclasses.is_dataclass(tp) else typing.get_args(tp)[-1]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None
            tp = typing.get_args(tp)[0]
    return tp


def _jsonable(value: Any) -> Any:
    """A nested section given as an instance (``from_conf(long_context=...)``) as its mapping; other extras as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def build(cls: type[T], data: Any, where: str | None = None) -> T:
    """Build config dataclass ``cls`` from a mapping, rejecting unknown keys, wrong types and bad values.

    Args:
        cls: The config class (e.g. :class:`PipelineConfig`).
        data: A mapping (from YAML).
        where: Dotted key prefix used in error messages; defaults to where ``cls`` always lives (``validate``).

    Returns:
        An instance of ``cls``; its checks have run.

    Raises:
        ConfigError: On an unknown key, a wrong type or a value out of range; one line.
    """
    where = getattr(cls, "_home", "") if where is None else where
    # Validated as JSON: YAML values are JSON values, and pydantic's strict mode takes a mapping for a nested
    # dataclass only from JSON. Dates and other YAML extras become their text.
    text = json.dumps(data, default=_jsonable)
    try:
        return cls.__pydantic_validator__.validate_json(text)  # type: ignore[attr-defined]
    except ValidationError as err:
        raise _one_line(err, cls, where) from None
