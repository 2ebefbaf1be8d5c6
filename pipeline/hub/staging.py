"""What ``aipc publish`` publishes: the artifact and the records that vouch for it, the staged files, card and message.

Read by :mod:`pipeline.hub.publish` (the command) and :mod:`pipeline.hub.publish_backends` (the uploads), so
neither imports the other for them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import MANIFEST
from pipeline.core.errors import fail
from pipeline.core.hashes import sha256_file
from pipeline.core.log import say
from pipeline.core.manifest import read_manifest
from pipeline.core.registry import FAMILIES
from pipeline.hub.model_card import CardFacts, build_card, weight_format

KINDS = {name: f for name, f in FAMILIES.items() if f.publishable}  # artifacts/<kind>/<variant>
DEFAULT_REPO = "{namespace}/{model}-{kind}-{variant}"


@dataclass
class PublishOptions:
    """What ``aipc publish`` was asked to do (its command-line flags)."""

    backend: str = "hf"  # hf: HfApi; git: plain git + git-lfs
    repo: str = DEFAULT_REPO  # hf: repo id template; git: remote URL or path template
    endpoint: str | None = None  # hf: Hub endpoint (default HF_ENDPOINT or huggingface.co)
    branch: str = "main"
    tag: str | None = None
    private: bool = True
    create: bool = True
    force: bool = False
    dry_run: bool = False
    allow_quick: bool = False  # publish a verdict of validate.profile=quick (publish.check_profile; the card says so)


@dataclass
class Artifact:
    """One pipeline output to publish, with the records that vouch for it."""

    kind: str
    variant: str
    folder: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    lock: dict[str, Any]
    license: str
    license_source: str
    license_file: Path | None = None

    @property
    def name(self) -> str:
        """The artifact's name in metrics and cards, e.g. ``openvino-int4``."""
        return KINDS[self.kind].artifact(self.variant)


@dataclass
class PublishResult:
    """What happened (or, with ``--dry-run``, would happen) for one artifact."""

    artifact: str
    repo: str
    changed: list[str] = field(default_factory=list)  # files new or different on the remote
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # remote files the artifact no longer has
    commit: str | None = None
    card: str = ""


def load_artifact(root: Path, spec: str, force: bool = False) -> Artifact:
    """Read ``artifacts/<kind>/<variant>`` (spec ``openvino/int4`` or ``openvino-int4``) and its records.

    An artifact whose validation failed is refused unless ``force``; a failed ``validate`` stage is not
    recorded in ``dvc.lock``, so its metrics file is then not checked against the lock.
    """
    kind, sep, variant = spec.partition("/")
    if not sep:
        kind, _, variant = spec.partition("-")
    if kind not in KINDS or not variant:
        fail(f"cannot publish '{spec}': name an artifact as <kind>/<variant> with kind one of {', '.join(KINDS)}")
    folder = root / "artifacts" / kind / variant
    export_stage, validate_stage, prefix = (
        KINDS[kind].export_stage,
        KINDS[kind].validate_stage,
        KINDS[kind].metrics_prefix,
    )
    if not (folder / MANIFEST).is_file():
        fail(f"{folder} has no {MANIFEST}: build it first with `dvc repro {export_stage}@{variant}`")
    from pipeline.core.verify import verify_folder

    verify_folder(folder, f"{export_stage}@{variant}", root / "dvc.lock")  # every file, the manifest, dvc.lock
    metrics_path = root / "artifacts" / "metrics" / f"{prefix}-{variant}.json"
    if not metrics_path.is_file():
        fail(f"{spec} was never validated ({metrics_path} missing): run `dvc repro {validate_stage}@{variant}`")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except ValueError as err:
        fail(f"{metrics_path} is not valid JSON ({err}): run `dvc repro {validate_stage}@{variant}`")
    if not isinstance(metrics, dict):
        fail(f"{metrics_path} is not a metrics record: run `dvc repro {validate_stage}@{variant}`")
    passed = check_publishable(f"{prefix}-{variant}", metrics, force)
    lock = check_lock(
        root, folder, metrics_path if passed else None, f"{export_stage}@{variant}", f"{validate_stage}@{variant}"
    )
    licence, licence_source, licence_file = source_license(root)
    return Artifact(kind, variant, folder, read_manifest(folder), metrics, lock, licence, licence_source, licence_file)


def check_lock(root: Path, folder: Path, metrics_path: Path | None, export: str, validate: str) -> dict[str, Any]:
    """Fail unless ``dvc.lock`` records this exact folder (and metrics file, if given); return the stages' hashes."""
    from pipeline.core.yamlfile import read_yaml

    lock_path = root / "dvc.lock"
    stages = read_yaml(lock_path)["stages"] if lock_path.is_file() else {}
    if export not in stages or (metrics_path is not None and validate not in stages):
        fail(f"dvc.lock has no {export} / {validate}: run `dvc repro {validate}` so the artifact is recorded")
    out = next(o for o in stages[export]["outs"] if Path(o["path"]) == folder.relative_to(root))
    files = [p for p in folder.rglob("*") if p.is_file()]
    if (len(files), sum(p.stat().st_size for p in files)) != (out.get("nfiles"), out.get("size")):
        fail(f"{folder.relative_to(root)} changed since dvc.lock: run `dvc repro {validate}` before publishing")
    if metrics_path is None:
        return {export: out["md5"], validate: "failed, not recorded"}
    validated = next((d["md5"] for d in stages[validate]["deps"] if d["path"] == out["path"]), None)
    metrics_md5 = hashlib.md5(metrics_path.read_bytes()).hexdigest()
    if validated != out["md5"] or metrics_md5 != stages[validate]["outs"][0]["md5"]:
        fail(f"{metrics_path.name} does not belong to this artifact per dvc.lock: run `dvc repro {validate}`")
    return {export: out["md5"], validate: metrics_md5}


def source_license(root: Path) -> tuple[str, str, Path | None]:
    """The source model's licence: its model card's ``license``, else the model config's; and its LICENSE file."""
    from huggingface_hub import ModelCard

    model_dir = root / "artifacts" / "model"
    manifest = read_manifest(model_dir)
    licence_file = model_dir / "LICENSE" if (model_dir / "LICENSE").is_file() else None
    if (model_dir / "README.md").is_file():
        card_licence = ModelCard.load(model_dir / "README.md", ignore_metadata_errors=True).data.license
        if card_licence:
            return str(card_licence), f"the source model card of {manifest.get('repo_id')}", licence_file
    if manifest.get("license"):
        return str(manifest["license"]), f"model.license of the `{manifest.get('model')}` preset", licence_file
    fail("the source model's licence is unknown: set model.license (e.g. mit) and `dvc repro download`")


def check_publishable(name: str, metrics: dict[str, Any], force: bool) -> bool:
    """Whether validation passed; refuse an artifact whose validation failed or did not run, unless ``force``."""
    if metrics.get("passed") is True:
        return True
    reason = "; ".join(metrics.get("problems") or []) or metrics.get("note") or metrics.get("reason") or "not validated"
    outcome = "was not validated here" if metrics.get("status") == "skipped" else "failed validation"
    if not force:
        fail(
            f"{name} {outcome} ({reason}): fix it and `dvc repro`, or pass --force to publish it "
            "with a card that says so"
        )
    say(f"[{name}] publishing despite failed validation (--force): {reason}")
    return False


def stage_files(art: Artifact, dest: Path) -> dict[str, str]:
    """Copy the manifest's files (checked against their sha256), the manifest and LICENSE into ``dest``."""
    hashes = {}
    for rel, info in art.manifest["files"].items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(art.folder / rel, target)
        hashes[rel] = sha256_file(target)
        if hashes[rel] != info["sha256"]:
            fail(
                f"{art.folder / rel} does not match its manifest sha256: repair with "
                f"`aipc repair {KINDS[art.kind].export_stage}@{art.variant}` before publishing"
            )
    for src, rel in ((art.folder / MANIFEST, MANIFEST), (art.license_file, "LICENSE")):
        if src is not None:
            shutil.copy2(src, dest / rel)
            hashes[rel] = sha256_file(dest / rel)
    return hashes


def render_card(art: Artifact, repo_id: str, opts: PublishOptions) -> str:
    """The model card text for ``art`` published as ``repo_id``."""
    facts = CardFacts(
        repo_id=repo_id,
        revision=opts.tag or opts.branch,
        kind=art.kind,
        artifact=art.name,
        manifest=art.manifest,
        metrics=art.metrics,
        license=art.license,
        license_source=art.license_source,
        lock=art.lock,
    )
    try:
        return str(build_card(facts))
    except ValueError as err:
        fail(f"[{art.name}] {err}")


def commit_message(art: Artifact) -> tuple[str, str]:
    """One-line summary with the key parameters, and a description with all of them and the provenance."""
    params = art.manifest.get("parameters", {})
    short = " ".join(f"{k}={v}" for k, v in params.items() if v not in (None, False, {}) and k != "weight_format")
    source = art.manifest.get("source", {})
    summary = f"{art.name}: {weight_format_of(art)} {short}".strip()[:200]
    description = json.dumps(
        {
            "parameters": params,
            "source": source,
            "validation": {
                k: art.metrics.get(k)
                for k in ("label", "passed", "profile", "top1_agreement", "greedy_exact_match", "tokens_per_s")
            },
            "dvc.lock": art.lock,
        },
        indent=1,
        default=str,
    )
    return summary, description


def weight_format_of(art: Artifact) -> str:
    """int4 / int8 / fp16 of an artifact."""
    return weight_format(CardFacts("", "", art.kind, art.name, art.manifest, art.metrics, art.license, ""))


def repo_name(template: str, art: Artifact, namespace: str | None) -> str:
    """Fill ``{namespace} {model} {kind} {variant} {artifact}`` in a repo id or remote template."""
    if "{namespace}" in template and not namespace:
        fail("no namespace for the repo id: log in (`hf auth login` / HF_TOKEN) or pass --repo owner/name")
    model = str(art.manifest.get("source", {}).get("model") or "model")
    return template.format(namespace=namespace, model=model, kind=art.kind, variant=art.variant, artifact=art.name)
