"""The two ways ``aipc publish`` uploads: the Hugging Face Hub API (``HfApi``) and plain git + git-lfs.

Both stage the files (checked against the manifest) plus the card, compare them with what the remote
branch already holds, upload only what differs and make no commit when nothing does. Xet: with ``hf_xet``
installed ``huggingface_hub`` 1.21 uploads through Xet whenever ``HF_HUB_DISABLE_XET`` is unset (it does
not ask the server); servers without Xet (mirrors, :mod:`pipeline.hub.server`) need ``HF_HUB_DISABLE_XET=1``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from pipeline.core.artifacts import MANIFEST
from pipeline.core.errors import StageError, fail
from pipeline.core.log import say
from pipeline.core.published import write_record
from pipeline.hub import git as hub_git
from pipeline.hub.staging import Artifact, PublishOptions, PublishResult, commit_message, render_card, stage_files


class Backend(Protocol):
    """What :func:`pipeline.hub.publish.publish` needs from a backend."""

    def namespace(self) -> str | None: ...

    def publish(self, art: Artifact, repo: str, staging: Path, opts: PublishOptions) -> PublishResult: ...


def make_backend(opts: PublishOptions, token: str | None) -> Backend:
    """The backend ``opts.backend`` names, authenticated with ``token``."""
    return HfBackend(opts, token) if opts.backend == "hf" else GitBackend(opts, token)


def file_ids(path: Path) -> set[str]:
    """A file's sha256 (how the Hub names LFS files) and git blob id (how it names regular ones)."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            sha256.update(block)
            sha1.update(block)
    return {sha256.hexdigest(), sha1.hexdigest()}


def write_card(art: Artifact, repo: str, staging: Path, opts: PublishOptions) -> str:
    """Stage the artifact, its card and the record of what publishing added (``published.json``); return the card."""
    staged = stage_files(art, staging)
    card = render_card(art, repo, opts)
    (staging / "README.md").write_text(card, encoding="utf-8")
    added = [rel for rel in staged if rel not in art.manifest["files"] and rel != MANIFEST]
    write_record(staging, ["README.md", *added])  # so a pulled folder verifies, and an edited card does not
    return card


class HfBackend:
    """Publish through ``HfApi`` (``--endpoint`` or ``HF_ENDPOINT`` for mirrors and self-hosted hubs)."""

    def __init__(self, opts: PublishOptions, token: str | None):
        from huggingface_hub import HfApi

        self.api = HfApi(endpoint=opts.endpoint, token=token)
        self.user = None
        if token:
            self.user = self._call(lambda: self.api.whoami()["name"], "checking the token")
        elif not opts.dry_run:
            fail("no hub token: set HF_TOKEN to a write token or run `hf auth login`")

    def namespace(self) -> str | None:
        """The logged-in user, the default namespace of new repos."""
        return self.user

    def _call(self, func, what: str, repo: str | None = None, passthrough: tuple = ()):
        """Run one Hub call; HTTP and connection errors become one line that says what to do."""
        import httpx
        from huggingface_hub import errors as hf_errors

        try:
            return func()
        except passthrough:
            raise
        except hf_errors.HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", "?")
            if status == 401:
                fail(
                    f"the hub at {self.api.endpoint} rejected the token (HTTP 401) while {what}: set HF_TOKEN to a "
                    "valid write token or run `hf auth login`"
                )
            fail(
                f"hub request failed while {what}{f' for {repo}' if repo else ''} (HTTP {status}): "
                f"{str(err).splitlines()[0]}"
            )
        except (httpx.TransportError, OSError, ValueError) as err:
            fail(f"cannot reach the hub at {self.api.endpoint} while {what}: {str(err).splitlines()[0]}")

    def remote_files(self, repo: str, branch: str) -> dict[str, str] | None:
        """Path -> sha256 (LFS) or git blob id (regular) on ``branch``; ``None`` if the repo does not exist."""
        from huggingface_hub import errors as hf_errors
        from huggingface_hub.hf_api import RepoFile

        missing = (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError)
        try:
            entries = self._call(
                lambda: list(self.api.list_repo_tree(repo, revision=branch, recursive=True)),
                "listing the repo",
                repo,
                passthrough=missing,
            )
        except hf_errors.RepositoryNotFoundError:
            return None
        except hf_errors.RevisionNotFoundError:
            return {}
        return {e.path: (e.lfs.sha256 if e.lfs else e.blob_id) for e in entries if isinstance(e, RepoFile)}

    def publish(self, art: Artifact, repo: str, staging: Path, opts: PublishOptions) -> PublishResult:
        """Create or reuse ``repo``, upload the changed files in one commit, tag it if asked."""
        card = write_card(art, repo, staging, opts)
        try:
            remote = self.remote_files(repo, opts.branch)
        except StageError as err:
            if not opts.dry_run:
                raise
            say(f"[{art.name}] not compared with the remote ({err}): listing every file")
            remote = {}
        if remote is None and not opts.create:
            fail(
                f"repo '{repo}' does not exist on {self.api.endpoint} and --no-create was given: create it "
                "(private) on the hub, or drop --no-create"
            )
        local = {p.relative_to(staging).as_posix(): p for p in sorted(staging.rglob("*")) if p.is_file()}
        changed = [p for p in local if (remote or {}).get(p) not in file_ids(local[p])]
        result = PublishResult(
            art.name,
            repo,
            changed,
            sorted(set(local) - set(changed)),
            sorted(set(remote or {}) - set(local) - {".gitattributes"}),
            card=card,
        )
        if opts.dry_run:
            return result
        if remote is None:
            self._call(lambda: self.api.create_repo(repo, private=opts.private, exist_ok=True), "creating", repo)
        if opts.branch != "main":
            self._call(lambda: self.api.create_branch(repo, branch=opts.branch, exist_ok=True), "branching", repo)
        summary, description = commit_message(art)
        info = self._call(
            lambda: self.api.upload_folder(
                repo_id=repo,
                folder_path=staging,
                revision=opts.branch,
                commit_message=summary,
                commit_description=description,
                delete_patterns="*",
            ),
            "uploading",
            repo,
        )
        result.commit = info.oid if (result.changed or result.removed) else None
        if opts.tag:
            self._tag(repo, opts.tag, info.oid)
        return result

    def _tag(self, repo: str, tag: str, commit: str) -> None:
        """Tag ``commit``; an existing tag must already point there."""
        refs = self._call(lambda: self.api.list_repo_refs(repo), "reading tags", repo)
        existing = {t.name: t.target_commit for t in refs.tags}
        if tag in existing and existing[tag] != commit:
            fail(f"tag '{tag}' already exists in {repo} at another commit: pick a new --tag")
        if tag not in existing:
            self._call(lambda: self.api.create_tag(repo, tag=tag, revision=commit), "tagging", repo)


class GitBackend:
    """Publish with plain git + git-lfs to any remote: the Hub's git endpoint, a forge, a bare repository."""

    def __init__(self, opts: PublishOptions, token: str | None):
        hub_git.require_git_lfs()
        self.env = {**hub_git.auth_env(token), "GIT_LFS_SKIP_SMUDGE": "1"}  # large files are replaced, not read

    def namespace(self) -> str | None:
        """Git remotes name their own namespace."""
        return None

    def remote_url(self, remote: str, opts: PublishOptions) -> str:
        """The URL to push to; a missing local bare repository is created unless ``--no-create``."""
        parts = urlsplit(remote)
        if parts.password or (parts.username and parts.scheme in ("http", "https")):
            fail("the remote URL carries credentials: remove them and put the token in HF_TOKEN instead")
        if parts.scheme in ("http", "https", "ssh", "git") or ("@" in remote and ":" in remote):
            return remote
        path = Path(parts.path if parts.scheme == "file" else remote).resolve()
        if not (path / "HEAD").is_file():
            if not opts.create:
                fail(
                    f"git repository {path} does not exist and --no-create was given: `git init --bare {path}` "
                    "or drop --no-create"
                )
            if not opts.dry_run:
                hub_git.git(["init", "-q", "--bare", "--initial-branch=main", str(path)])
        return path.as_uri()

    def publish(self, art: Artifact, remote: str, staging: Path, opts: PublishOptions) -> PublishResult:
        """Clone, replace the files, commit only if something changed, push (git-lfs uploads new objects)."""
        url, work = self.remote_url(remote, opts), staging / "repo"
        if url.startswith("file:") and not (Path(urlsplit(url).path) / "HEAD").is_file():  # dry run, repo not created
            hub_git.git(["init", "-q", "--initial-branch=main", str(work)])
        else:
            hub_git.git(["clone", "-q", "--no-checkout", url, str(work)], env=self.env)
        self._checkout(work, opts.branch)
        for old in (p for p in work.iterdir() if p.name != ".git"):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        card = write_card(art, remote, work, opts)
        lfs = sorted(
            p.relative_to(work).as_posix()
            for p in work.rglob("*")
            if ".git" not in p.relative_to(work).parts and p.is_file() and hub_git.is_lfs_file(p)
        )
        # `* -text` first: Git for Windows converts line endings by default, which would break every sha256 on pull
        (work / ".gitattributes").write_text(
            "* -text\n" + "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in lfs),
            encoding="utf-8",
            newline="\n",
        )
        self._git(["add", "-A"], work)
        status = [line.split("\t") for line in self._git(["diff", "--cached", "--name-status"], work).splitlines()]
        changed = sorted(p for s, p in status if s != "D")
        files = sorted(
            p.relative_to(work).as_posix()
            for p in work.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(work).parts
        )
        result = PublishResult(
            art.name,
            remote,
            changed,
            sorted(set(files) - set(changed)),
            sorted(p for s, p in status if s == "D"),
            card=card,
        )
        if opts.dry_run:
            return result
        if status:
            summary, description = commit_message(art)
            self._git(["commit", "-q", "-m", summary, "-m", description], work)
            self._git(["push", "-q", "origin", f"HEAD:refs/heads/{opts.branch}"], work)
            result.commit = self._git(["rev-parse", "HEAD"], work).strip()
        if opts.tag:
            self._tag(work, opts.tag, art)
        return result

    def _git(self, args: list[str], work: Path) -> str:
        """Run git in the clone with the auth environment and a fallback identity."""
        ident = (
            {}
            if subprocess.run(["git", "config", "user.email"], cwd=work, capture_output=True).stdout.strip()
            else {
                "GIT_AUTHOR_NAME": "aipc-pipeline",
                "GIT_AUTHOR_EMAIL": "aipc@localhost",
                "GIT_COMMITTER_NAME": "aipc-pipeline",
                "GIT_COMMITTER_EMAIL": "aipc@localhost",
            }
        )
        return hub_git.git(args, cwd=work, env={**self.env, **ident}).decode()

    def _checkout(self, work: Path, branch: str) -> None:
        """Check out ``branch`` from the remote, else start it from the remote HEAD (or empty)."""
        self._git(["lfs", "install", "--local"], work)
        if hub_git.resolve(work, f"refs/remotes/origin/{branch}"):
            self._git(["checkout", "-q", "-B", branch, f"origin/{branch}"], work)
        elif hub_git.resolve(work, "HEAD"):
            self._git(["checkout", "-q", "-B", branch], work)
        else:
            self._git(["checkout", "-q", "--orphan", branch], work)

    def _tag(self, work: Path, tag: str, art: Artifact) -> None:
        """Tag HEAD and push the tag; an existing remote tag must already point at HEAD."""
        head = self._git(["rev-parse", "HEAD"], work).strip()
        listed = self._git(["ls-remote", "--tags", "origin", f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}"], work)
        targets = {line.split("\t")[1]: line.split("\t")[0] for line in listed.splitlines()}
        current = targets.get(f"refs/tags/{tag}^{{}}") or targets.get(f"refs/tags/{tag}")
        if current and current != head:
            fail(f"tag '{tag}' already exists on the remote at another commit: pick a new --tag")
        if not current:
            self._git(["tag", "-a", tag, "-m", f"{art.name} {tag}"], work)
            self._git(["push", "-q", "origin", f"refs/tags/{tag}"], work)
