"""Model cards for published artifacts, built only from manifests and validation records.

The card's metadata goes through ``huggingface_hub.ModelCardData``/``ModelCard`` (the same parser the Hub
client uses) and the Hub's own checks (:func:`pipeline.hub.card_rules.metadata_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.core.cards import CardFormat
from pipeline.core.registry import FAMILIES, entries, entry
from pipeline.hub.card_rules import HUB_LICENSES, metadata_problems


def card_format(kind: str) -> CardFormat:
    """What the cards of family ``kind`` say (its registry line's ``card``, in the family's package)."""
    if not FAMILIES[kind].card:
        raise ValueError(f"{kind} artifacts have no model card: publishable ones are {', '.join(entries('card'))}")
    return entry(kind, "card")


@dataclass
class CardFacts:
    """Everything a card states, taken from the artifact's manifest, its metrics and the source model."""

    repo_id: str
    revision: str  # what users pin in the snippet: the tag if one is published, else the branch
    kind: str  # the artifact's family (a registry name with a ``card``)
    artifact: str  # e.g. openvino-int4
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    license: str
    license_source: str
    lock: dict[str, Any] = field(default_factory=dict)  # dvc.lock entries of the export and validate stages


def weight_format(facts: CardFacts) -> str:
    """int4 / int8 / fp16 ... from the artifact's parameters."""
    params = facts.manifest.get("parameters", {})
    return str(params.get("weight_format") or params.get("precision") or facts.metrics.get("weight_format") or "fp16")


def card_metadata(facts: CardFacts) -> dict[str, Any]:
    """The YAML metadata of the card (license, base_model, tags, library, pipeline tag)."""
    spec = card_format(facts.kind)
    library, format_tags, devices = spec.library, spec.format_tags, spec.devices(facts.manifest.get("parameters", {}))
    fmt = weight_format(facts)
    compressed = fmt in ("int4", "int8") and spec.nncf
    source = facts.manifest.get("source", {})
    meta: dict[str, Any] = {
        "license": facts.license if facts.license in HUB_LICENSES else "other",
        "library_name": library,
        "pipeline_tag": "text-generation",
        "tags": [
            *format_tags,
            *(["nncf"] if compressed else []),
            fmt,
            "phi3",
            "text-generation",
            *devices,
            "aipc-pipeline",
        ],
    }
    if meta["license"] == "other":
        meta.update(license_name=facts.license, license_link=f"https://huggingface.co/{source.get('repo_id')}")
    if source.get("repo_id"):
        meta["base_model"] = source["repo_id"]
        if fmt in ("int4", "int8"):
            meta["base_model_relation"] = "quantized"
    return meta


def build_card(facts: CardFacts):
    """A ``huggingface_hub.ModelCard`` for the artifact; raises ``ValueError`` if its metadata is invalid."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(**card_metadata(facts))
    body = "\n\n".join(
        [_summary(facts), _parameters(facts), _validation(facts), _usage(facts), _files(facts), _provenance(facts)]
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    problems = metadata_problems(str(card))
    if problems:
        raise ValueError(f"model card metadata is invalid: {'; '.join(problems)}")
    return card


def _summary(facts: CardFacts) -> str:
    source = facts.manifest.get("source", {})
    fmt, kind = weight_format(facts), card_format(facts.kind).kind_name
    if source.get("repo_id"):
        origin = (
            f"[{source['repo_id']}](https://huggingface.co/{source['repo_id']}) at revision `{source.get('revision')}`"
        )
    else:
        origin = f"the `{source.get('model')}` checkpoint (source: {source.get('source')}, not on the Hub)"
    passed = facts.metrics.get("passed")
    verdict = "passed" if passed else "**FAILED** (published with --force)"
    if facts.metrics.get("status") == "skipped":
        verdict = f"**not run** (published with --force: {facts.metrics.get('reason')})"
    return (
        f"# {facts.repo_id.split('/')[-1]}\n\n{fmt} {kind} of {origin}, built and validated by aipc-pipeline "
        f"(`{facts.manifest.get('stage')}@{facts.manifest.get('variant')}`). Validation {verdict}{_profile(facts)}: "
        f"**{facts.metrics.get('label')}**.\n\nLicence: `{facts.license}`, inherited from the source model "
        f"({facts.license_source})."
    )


def _profile(facts: CardFacts) -> str:
    """Which ``validate.profile`` gave the verdict, as the card says it after the verdict."""
    profile = facts.metrics.get("profile")
    if profile == "quick":
        return " with the **quick** validation profile (published with --allow-quick: stand-in speed runs skipped)"
    return f" with the `{profile}` validation profile" if profile else " (validation profile not recorded)"


def _parameters(facts: CardFacts) -> str:
    rows = [f"| `{k}` | `{v}` |" for k, v in facts.manifest.get("parameters", {}).items()]
    text = "## Quantization parameters\n\n| parameter | value |\n|---|---|\n" + "\n".join(rows)
    if facts.manifest.get("weight_layers"):
        text += f"\n\nWeight layers by precision (read back from the IR): `{facts.manifest['weight_layers']}`."
    mode = facts.manifest.get("nncf_rt_info", {}).get("weight_compression", {}).get("mode")
    if mode:
        text += f" NNCF `{facts.manifest['nncf_rt_info'].get('version')}` mode `{mode}`."
    text += _tie(facts)
    note = card_format(facts.kind).parameters_note
    text += note(facts.manifest) if note else ""  # what only this family's manifests hold (the NPU's blob)
    return text


def _tie(facts: CardFacts) -> str:
    """The manifest's ``tied_embeddings`` in one sentence, for a checkpoint that ties them (nothing otherwise)."""
    tie = facts.manifest.get("tied_embeddings")
    if not (tie and tie.get("checkpoint_tied")):
        return ""
    kept = "one shared matrix" if tie["shared_constant"] else "two copies (the tie was not kept)"
    return (
        f"\n\nTied embeddings: the source ties the LM head to the input embedding; they are {kept} in "
        f"{card_format(facts.kind).tie_holder}, {tie['embedding']['precision']} / {tie['lm_head']['precision']} "
        "(embedding / LM head)."
    )


VALIDATION_COLUMNS = [  # (header, metrics key): one row per device cell of the validation record
    ("target", "column"),
    ("result", "status"),
    ("device that ran", "device_executed"),
    ("label", "label"),
    ("tokens/s", "tokens_per_s"),
    ("TTFT ms", "ttft_ms"),
    ("TPOT ms", "tpot_ms"),
    ("top-1 agreement (f32 runtime)", "top1_agreement"),
    ("mean KL (f32 runtime)", "mean_kl"),
    ("perplexity delta %", "perplexity_delta_pct"),
    ("device numerics", "device_numerics"),
    ("top-1 agreement (device numerics)", "device_top1_agreement"),
    ("mean KL (device numerics)", "device_mean_kl"),
    ("long-context top-1 (lowest range)", "long_context"),
    ("greedy exact match (default numerics)", "greedy_exact_match"),
    ("greedy exact match (f32)", "greedy_exact_match_f32"),
]


def _card_value(key: str, value: object) -> object:
    """A metrics value as the card shows it: the numerics label, the lowest long-context range."""
    if key == "device_numerics" and isinstance(value, dict):
        return value.get("label")
    if key == "long_context":
        return min((r["top1_agreement"] for r in value), default=None) if isinstance(value, list) else None
    return value


def _validation(facts: CardFacts) -> str:
    m = facts.metrics
    cells = m.get("cells") or {
        m.get("device_requested") or "-": {
            **m,
            "column": m.get("device_requested"),
            "status": "passed" if m.get("passed") else "failed",
        }
    }
    rows = []
    for cell in cells.values():
        values = [_card_value(key, cell.get(key)) for _, key in VALIDATION_COLUMNS]
        if cell.get("status") == "skipped":
            values[3] = f"skipped: {cell.get('reason')}"
        rows.append("| " + " | ".join("-" if v is None else str(v) for v in values) + " |")
    header = "| " + " | ".join(h for h, _ in VALIDATION_COLUMNS) + " |\n|" + "---|" * len(VALIDATION_COLUMNS)
    thresholds = m.get("thresholds") or {"min_top1_agreement": m.get("min_top1_agreement")}
    notes = [
        f"Top-1 agreement and mean KL: teacher-forced next-token comparison with the original PyTorch model on "
        f"held-out text (thresholds {thresholds}), twice: with the runtime pinned to f32 (what the export did, "
        "the same on every machine) and at the device's own numerics as read back from the compiled model (what "
        "you get; e.g. bf16 compute on AMX CPUs, f16 on Intel GPUs and NPUs). Long-context: the lowest top-1 "
        "agreement over position ranges of windows up to 6000 tokens (sliding window, LongRoPE switch). "
        "Greedy exact match: share of the validation prompts whose "
        "whole greedy continuation equals PyTorch's, at the numerics you get by default (with the folder's "
        'runtime_config.json, if any) and pinned to f32. "Device that ran" is read back from the runtime; a CPU '
        "stand-in is labelled so. Speed was measured on the build machine and says little about yours."
    ]
    skipped_speed = sorted({c["speed_not_measured"] for c in cells.values() if c.get("speed_not_measured")})
    notes += [f"{c[0].upper()}{c[1:]}." for c in skipped_speed]
    if m.get("note"):
        notes.append(f"Note: {m['note']}.")
    if m.get("problems"):
        notes.append(f"Problems: {'; '.join(m['problems'])}.")
    return "## Validation\n\n" + header + "\n" + "\n".join(rows) + "\n\n" + " ".join(notes)


def _usage(facts: CardFacts) -> str:
    pin = f'path = snapshot_download("{facts.repo_id}", revision="{facts.revision}")\n'
    install, code = card_format(facts.kind).usage(facts.manifest, pin)
    return f"## Use it\n\n```bash\n{install}\n```\n\n```python\n{code}\n```"


def _files(facts: CardFacts) -> str:
    rows = [
        f"| `{name}` | {info['bytes']} | `{info['sha256']}` |" for name, info in facts.manifest.get("files", {}).items()
    ]
    return (
        "## Files\n\nEvery file with its sha256, as recorded in `manifest.json` when the artifact was built:\n\n"
        "| file | bytes | sha256 |\n|---|---:|---|\n" + "\n".join(rows)
    )


def _provenance(facts: CardFacts) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in facts.manifest.get("versions", {}).items() if k != "platform")
    stages = "; ".join(f"`{name}`: {info}" for name, info in facts.lock.items())
    return f"## Provenance\n\nBuilt with {versions}.\n\nDVC stages (from `dvc.lock`): {stages or 'not recorded'}."
