"""What composed this workspace: the Hydra overrides that give back ``params.yaml`` from ``conf/``.

``dvc exp run -S`` composes ``params.yaml`` afresh from ``conf/`` and its ``-S`` arguments only, so the sweep and
``aipc exp-run`` pass :func:`workspace_overrides` first; a refused export's row spells the ``aipc compose`` line that
leaves it out with them (:mod:`pipeline.core.refusal`). Values are written in Hydra's override grammar
(:func:`hydra_value`, what ``dvc exp run -S`` parses).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.core.config import CONF_DIR, PARAMS_FILE, compose
from pipeline.core.errors import fail

PLAIN = re.compile(r"[A-Za-z_][\w./-]*")  # a string Hydra reads back as itself without quotes
KEYWORDS = {"true", "false", "null", "none", "nan", "inf"}  # words Hydra would read as another type


def hydra_value(value: Any) -> str:
    """``value`` as a Hydra override value: ``true``, ``null``, ``64``, ``0.8``, ``'a,b'``, ``[x,'y z']``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if PLAIN.fullmatch(text) and text.lower() not in KEYWORDS:
        return text
    # In a quoted Hydra string a backslash escapes only quotes (and backslashes right before a quote or the end)
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def check_overrides(
    overrides: list[str],
    params_file: Path = PARAMS_FILE,
    hint: str = "pass the overrides you composed with, e.g. `aipc sweep model=tiny`",
) -> None:
    """Fail unless ``params.yaml`` is ``conf/`` composed with ``overrides``.

    DVC composes every queued experiment from ``conf/`` plus its ``-S`` arguments, so a workspace
    composed with other overrides (say ``model=tiny``) would silently sweep a different model.
    """
    current = read_params(params_file)
    expected = compose(overrides)
    differ = sorted(k for k in expected if k != "sweep" and current.get(k) != expected[k])
    if differ:
        fail(
            f"params.yaml is not conf/ + overrides {overrides or '(none)'} (sections {', '.join(differ)} differ): {hint}"
        )


def read_params(params_file: Path = PARAMS_FILE) -> dict:
    """``params.yaml`` as plain data (a file that is not YAML is one line)."""
    import yaml

    try:
        data = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        fail(f"{params_file} is not valid YAML ({str(err).splitlines()[0]}): rewrite it with `aipc compose`")
    return data if isinstance(data, dict) else {}


def workspace_overrides(params_file: Path = PARAMS_FILE) -> list[str]:
    """The overrides that compose ``conf/`` into this workspace's ``params.yaml``: group choices, then values.

    ``dvc exp run -S`` composes ``params.yaml`` afresh from ``conf/`` and its ``-S`` arguments only, which
    drops what ``aipc compose`` chose (``aipc demo``: ``model=tiny``). Given first, these keep it. Fails in one
    line when they do not give back ``params.yaml`` exactly (:func:`check_overrides`).
    """
    if not params_file.is_file():
        return []
    current = read_params(params_file)
    overrides = group_choices(current)
    overrides += value_overrides(compose(overrides), current)
    check_overrides(overrides, params_file, hint="compose it again with `aipc compose ...`, then rerun")
    return overrides


def group_choices(current: dict) -> list[str]:
    """The conf/ group options (model preset first: it picks some family groups) whose sections ``current`` has."""
    import yaml

    model = current.get("model") or {}
    presets = sorted((CONF_DIR / "model").glob("*.yaml"))
    names = {p.stem: (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("name") for p in presets}
    choices = [f"model={stem}" for stem, name in names.items() if name and name == model.get("name")][:1]
    if choices == ["model=local"] and model.get("local_path"):
        choices.append(f"model.local_path={hydra_value(model['local_path'])}")
    base = compose(choices)
    for group in sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "model"):
        if current.get(group) == base.get(group):
            continue
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        choices += [
            f"{group}={o}" for o in options if compose([*choices, f"{group}={o}"])[group] == current.get(group)
        ][:1]
    return choices


def value_overrides(base: dict, current: dict, prefix: str = "") -> list[str]:
    """Hydra overrides that turn ``base`` into ``current``: changed values, added keys (``+``), removed keys (``~``)."""
    out: list[str] = []
    for key, value in current.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key, {}), dict):
            out += value_overrides(base.get(key, {}), value, f"{name}.")
        elif key not in base:
            out.append(f"+{name}={hydra_value(value)}")
        elif value != base[key]:
            out.append(f"{name}={hydra_value(value)}")
    return out + [f"~{prefix}{key}" for key in base if key not in current]


# What sets Phi-4-mini apart from Phi-3 in a Phi3ForCausalLM checkpoint: the keys and values that the
# model=local composition reads to give it the Phi-4-mini presets' variant choices (conf/model/phi4-mini-*.yaml).
PHI4_MARKS = {"partial_rotary_factor": lambda v: v is not None and float(v) < 1.0, "tie_word_embeddings": bool}
PHI4_PRESET = "phi4-mini-instruct"  # the preset whose group choices a Phi-4-shaped local checkpoint gets


def phi4_groups() -> list[str]:
    """The Phi-4-mini presets' ``defaults`` overrides as ``group=option``: each family's recipe, from ``conf/``."""
    import yaml

    preset = yaml.safe_load((CONF_DIR / "model" / f"{PHI4_PRESET}.yaml").read_text(encoding="utf-8"))
    overrides = [(k, v) for d in preset["defaults"] if isinstance(d, dict) for k, v in d.items()]
    return [f"{k.split('/', 1)[1].split('@')[0]}={v}" for k, v in overrides if k.startswith("override /")]


def local_recipe(overrides: list[str], composed: dict) -> tuple[list[str], str] | None:
    """For ``model=local``: the group overrides of the preset whose architecture the checkpoint has, and why.

    A checkpoint at ``model.local_path`` with partial rotary or tied embeddings is a Phi-4-mini: it gets that
    preset's group choices (:func:`phi4_groups`: OpenVINO's int4 recipe) unless the user chose one of those groups.
    ``None`` when the model is not local, not Phi-4-shaped, its ``config.json`` cannot be read, or the user chose.
    """
    import json

    model = composed.get("model") or {}
    chosen = {o.split("=")[0].lstrip("+~") for o in overrides}  # groups the user chose: theirs, not the preset's
    groups = phi4_groups()
    if model.get("source") != "local" or chosen & {g.split("=")[0] for g in groups}:
        return None
    try:
        config = json.loads((Path(str(model.get("local_path"))) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    marks = [f"{key} {config[key]}" for key, test in PHI4_MARKS.items() if key in config and test(config[key])]
    if not marks:
        return None
    why = (
        f"model.local_path has Phi-4-mini's architecture ({', '.join(marks)}): composing {' '.join(groups)}, "
        f"the Phi-4-mini presets' int4 recipe (add {' '.join(g.split('=')[0] + '=default' for g in groups)} to keep "
        "Phi-3's)"
    )
    return groups, why
