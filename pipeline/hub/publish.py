"""``aipc publish``: push validated artifacts to the Hugging Face Hub (``HfApi``) or any git + git-lfs remote.

Outside the ``dvc repro`` graph: it reads what the pipeline recorded (each artifact folder's
``manifest.json``, ``artifacts/metrics/<artifact>.json`` and ``dvc.lock``), refuses artifacts that failed
validation (unless ``--force``) or changed since ``dvc.lock``, copies the files into a staging folder under
``.aipc/publish/`` (checking every sha256 against the manifest; DVC outputs are only read), writes the
model card (:mod:`pipeline.hub.model_card`) and makes one commit per artifact with its parameters in the
message. Unchanged files are not uploaded; an unchanged artifact makes no commit at all.

The token comes from ``HF_TOKEN`` or ``hf auth login`` (``huggingface_hub.get_token``). It is sent in
HTTP headers only, never printed, never written into the card, the manifest or ``.git/config``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import MANIFEST
from pipeline.core.errors import fail, run_main
from pipeline.core.hashes import sha256_file
from pipeline.core.log import step
from pipeline.core.manifest import read_manifest
from pipeline.core.published import PUBLISHED, vouched_files, write_record
from pipeline.hub.staging import DEFAULT_REPO, Artifact, PublishOptions, PublishResult, load_artifact, repo_name


def resolve_token() -> str | None:
    """``HF_TOKEN`` or the token of ``hf auth login``; never printed."""
    from huggingface_hub import get_token

    return get_token()


def publish(root: Path, specs: list[str], opts: PublishOptions) -> list[PublishResult]:
    """Publish each artifact in ``specs`` (e.g. ``openvino/int4``) from the project at ``root``."""
    from pipeline.hub import publish_backends

    arts = [load_artifact(root, spec, opts.force) for spec in specs]
    for art in arts:
        check_profile(art, opts.allow_quick)
    backend = publish_backends.make_backend(opts, resolve_token())
    results = []
    staging_root = root / ".aipc" / "publish"
    staging_root.mkdir(parents=True, exist_ok=True)
    for art in arts:
        repo = repo_name(opts.repo, art, backend.namespace())
        with tempfile.TemporaryDirectory(prefix="stage-", dir=staging_root) as tmp:
            with step(f"[{art.name}] {'checking' if opts.dry_run else 'publishing'} {repo} ({opts.backend})"):
                results.append(backend.publish(art, repo, Path(tmp), opts))
    return results


def check_profile(art: Artifact, allow_quick: bool) -> None:
    """Refuse (one line) a verdict that ``validate.profile=full`` did not give, unless ``allow_quick``.

    Both profiles give the same verdicts; ``quick`` skips the speed runs of CPU stand-in cells, and a card states
    every figure of the record. A record without a profile predates the setting. A skipped artifact has no verdict.
    """
    profile = art.metrics.get("profile")
    if allow_quick or profile == "full" or art.metrics.get("status") == "skipped":
        return
    stage = f"{art.kind}/{art.variant}"
    given = f"the {profile} validation profile" if profile else "no validation profile recorded"
    fail(
        f"{stage} has a verdict of {given}; publishing needs validate.profile=full (every speed run): recompose with "
        f"your overrides plus `validate.profile=full` (`aipc compose model=NAME validate.profile=full`), rerun "
        f"`dvc repro`, or pass --allow-quick"
    )


def pull(repo_id: str, revision: str, dest: Path, endpoint: str | None = None) -> dict[str, Any]:
    """Download a published artifact at a pinned ``revision`` and check every file against its manifest.

    Uses the download stage's hub code (:func:`pipeline.hub.download.fetch_snapshot`: pinned revision,
    one-line errors) with the artifact file patterns (OpenVINO IR / ONNX, never a pickle). Returns
    the published manifest with the resolved ``commit``.
    """
    from pipeline.core.artifacts import staged_dir
    from pipeline.hub.download import ARTIFACT_FILES, fetch_snapshot

    with staged_dir(Path(dest)) as tmp:  # ``dest`` is replaced only by a complete, checked download
        commit = fetch_snapshot(repo_id, revision, tmp, ARTIFACT_FILES, endpoint=endpoint)
        manifest = read_manifest(tmp)
        vouched = vouched_files(tmp, f"{repo_id}@{revision} was changed after publishing: ask its publisher")
        for rel, info in {**vouched, **manifest["files"]}.items():
            if not (tmp / rel).is_file() or sha256_file(tmp / rel) != info["sha256"]:
                record = MANIFEST if rel in manifest["files"] else PUBLISHED
                fail(f"{repo_id}@{revision}: {rel} is missing or does not match the sha256 in the published {record}")
        check_pulled_extras(tmp, f"{repo_id}@{commit}", set(manifest["files"]) | set(vouched))
    return {**manifest, "commit": commit}


def check_pulled_extras(folder: Path, pinned: str, known: set[str]) -> None:
    """Refuse files neither record lists; a repo published without ``published.json`` gets one, labelled so."""
    extra = sorted(
        rel
        for rel in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if rel not in known and rel not in (MANIFEST, PUBLISHED)
    )
    if (folder / PUBLISHED).is_file():
        if extra:
            fail(f"{pinned}: {extra[0]} is listed in neither the published {MANIFEST} nor {PUBLISHED}")
    elif extra:
        write_record(folder, extra, recorded_by=f"aipc pull of {pinned}: published without a record, vouched as pulled")


def report(result: PublishResult, dry_run: bool) -> None:
    """Print what was (or would be) uploaded."""
    verb = "would upload" if dry_run else "uploaded"
    print(
        f"{result.artifact} -> {result.repo}: {verb} {len(result.changed)} file(s), {len(result.unchanged)} "
        f"unchanged, {len(result.removed)} removed; {f'commit {result.commit}' if result.commit else 'no commit'}"
    )
    for path in result.changed:
        print(f"  {verb}: {path}")
    for path in result.removed:
        print(f"  {'would remove' if dry_run else 'removed'}: {path}")
    if dry_run:
        print(f"--- README.md (model card) ---\n{result.card}")


def main(argv: list[str] | None = None) -> None:
    """``aipc publish [options] ARTIFACT...``."""
    parser = argparse.ArgumentParser(prog="aipc publish", description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", help="e.g. openvino/int4 npu/int4 onnx/dml_int4")
    parser.add_argument("--backend", choices=["hf", "git"], default="hf")
    parser.add_argument(
        "--repo",
        default=None,
        help=f"hf: repo id (default {DEFAULT_REPO}); git: remote URL or path; "
        "{namespace} {model} {kind} {variant} {artifact} are filled in",
    )
    parser.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--branch", default="main", help="branch to commit to (created if missing)")
    parser.add_argument("--tag", help="tag the published commit (e.g. v1)")
    parser.add_argument("--public", action="store_true", help="create the repo public (default private)")
    parser.add_argument("--no-create", action="store_true", help="fail instead of creating a missing repo")
    parser.add_argument("--force", action="store_true", help="publish even if validation failed (the card says so)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded and print the card")
    parser.add_argument("--allow-quick", action="store_true", help="publish a quick-profile verdict")
    args = parser.parse_args(argv)
    if args.backend == "git" and not args.repo:
        parser.error("--backend git needs --repo (a remote URL or a bare repository path)")
    opts = PublishOptions(
        args.backend,
        args.repo or DEFAULT_REPO,
        args.endpoint,
        args.branch,
        args.tag,
        not args.public,
        not args.no_create,
        args.force,
        args.dry_run,
        args.allow_quick,
    )
    for result in publish(Path.cwd(), args.artifacts, opts):
        report(result, opts.dry_run)


if __name__ == "__main__":
    run_main(main)
