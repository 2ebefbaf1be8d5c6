"""The Hub API endpoints of :mod:`pipeline.hub.server`, over bare git + git-lfs repositories.

Each endpoint is ``(handler, hub, user, query, **path parameters)``: ``handler`` is the request (its ``body()``
and ``reply()``), ``user`` the token's user or ``None``. :data:`ROUTES` maps methods and paths to them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.hub import git as hub_git

DEFAULT_GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n"
    for p in ("*.bin", "*.onnx", "*.onnx.data", "*.safetensors", "*.blob", "*.model", "*.pt", "*.pth", "*.h5", "*.zip")
)


@dataclass
class HubState:
    """The server state: repositories under ``root``, accepted tokens, and what clients did."""

    root: Path
    tokens: dict[str, str] = field(default_factory=dict)  # token -> user name
    calls: list[tuple[str, str]] = field(default_factory=list)
    uploads: list[tuple[str, int]] = field(default_factory=list)  # (sha256, bytes received)
    grants: set[tuple[str, str, str, str]] = field(default_factory=set)  # upload URLs handed out by the LFS batch
    url: str = ""

    def repo_dir(self, ns: str, name: str) -> Path:
        """Where repository ``ns/name`` lives."""
        return self.root / ns / f"{name}.git"


class HubHTTPError(Exception):
    """An HTTP error answer: status, the Hub's ``X-Error-Code`` and a message."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


def _repo(hub: HubState, ns: str, name: str, user: str | None, write: bool = False) -> Path:
    """An existing repository the caller may read (or write); otherwise the Hub's 404/401/403 answers."""
    path = hub.repo_dir(ns, name)
    meta = _meta(path)
    if meta is None or (meta["private"] and user != ns):
        raise HubHTTPError(404 if user else 401, f"Repository {ns}/{name} not found", "RepoNotFound")
    if write and user != ns:
        raise HubHTTPError(403 if user else 401, f"You cannot write to {ns}/{name}")
    return path


def _meta(path: Path) -> dict | None:
    """Repository settings (``private``); repos pushed by plain git have none and are public."""
    if not (path / "HEAD").is_file():
        return None
    meta_file = path / "aipc-hub.json"
    return json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {"private": False}


def _commit(path: Path, rev: str) -> str:
    """The commit ``rev`` names, or the Hub's RevisionNotFound."""
    sha = hub_git.resolve(path, rev)
    if sha is None:
        raise HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    return sha


def whoami(h, hub: HubState, user: str | None, query: dict) -> None:
    """The token's user (401 without a valid token)."""
    if user is None:
        raise HubHTTPError(401, "Invalid credentials in Authorization header")
    h.reply(200, {"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": "write"}}})


def create_repo(h, hub: HubState, user: str | None, query: dict) -> None:
    """Create ``<ns>/<name>.git`` (bare) with the Hub's initial commit; 409 if it exists."""
    data = json.loads(h.body())
    ns = data.get("organization") or user
    if user is None or ns != user:
        raise HubHTTPError(401 if user is None else 403, "You cannot create a repository in this namespace")
    path = hub.repo_dir(ns, data["name"])
    if _meta(path) is not None:
        raise HubHTTPError(409, "You already created this model repo")
    hub_git.git(["init", "-q", "--bare", "--initial-branch=main", str(path)])
    (path / "aipc-hub.json").write_text(
        json.dumps({"private": data.get("visibility", "public") != "public"}), encoding="utf-8"
    )
    # Like the Hub, a new repo starts with a commit holding the default .gitattributes.
    attributes = {
        "key": "file",
        "value": {
            "path": ".gitattributes",
            "encoding": "base64",
            "content": base64.b64encode(DEFAULT_GITATTRIBUTES.encode()).decode(),
        },
    }
    first = hub_git.write_commit(path, None, [attributes], {"summary": "initial commit"})
    hub_git.git(["update-ref", "refs/heads/main", first], cwd=path)
    h.reply(200, {"url": f"{hub.url}/{ns}/{data['name']}", "name": f"{ns}/{data['name']}"})


def validate_yaml(h, hub: HubState, user: str | None, query: dict) -> None:
    """The Hub's README metadata check, with :func:`pipeline.hub.card_rules.metadata_problems`."""
    from pipeline.hub.card_rules import metadata_problems

    problems = metadata_problems(json.loads(h.body())["content"])
    h.reply(400 if problems else 200, {"errors": [{"message": p} for p in problems], "warnings": []})


def repo_info(h, hub: HubState, user: str | None, query: dict, ns: str, name: str, rev: str = "main") -> None:
    """``model_info``/``repo_info``: the resolved commit and the file list (siblings)."""
    path = _repo(hub, ns, name, user)
    sha = _commit(path, rev)
    files = hub_git.tree_files(path, sha)
    h.reply(
        200,
        {
            "id": f"{ns}/{name}",
            "sha": sha,
            "private": (_meta(path) or {"private": False})["private"],  # _repo found it: never the default
            "siblings": [{"rfilename": p} for p in sorted(files)],
        },
    )


def tree(h, hub: HubState, user: str | None, query: dict, ns: str, name: str, rev: str, path: str = "") -> None:
    """``list_repo_tree``: files with blob ids, and LFS sha256/size for LFS files."""
    repo = _repo(hub, ns, name, user)
    files = hub_git.tree_files(repo, _commit(repo, rev))
    prefix = path.rstrip("/") + "/" if path else ""
    h.reply(200, [_tree_entry(f) for p, f in sorted(files.items()) if p.startswith(prefix)])


def _tree_entry(f: hub_git.RepoFile) -> dict:
    entry = {"type": "file", "path": f.path, "oid": f.blob_id, "size": f.size}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(hub_git.lfs_pointer(f.sha256, f.size))}
    return entry


def preupload(h, hub: HubState, user: str | None, query: dict, ns: str, name: str, rev: str) -> None:
    """Per file: regular or LFS upload, and the remote oid (so unchanged files are skipped)."""
    path = _repo(hub, ns, name, user, write=True)
    sha = hub_git.resolve(path, rev)
    existing = hub_git.tree_files(path, sha) if sha else {}
    out = []
    for f in json.loads(h.body())["files"]:
        lfs = f["size"] >= hub_git.LFS_MIN_BYTES or b"\0" in base64.b64decode(f["sample"])
        old = existing.get(f["path"])
        oid = (old.sha256 if old.lfs else old.blob_id) if old else None
        out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    h.reply(200, {"files": out, "commitOid": sha})


def lfs_batch(h, hub: HubState, user: str | None, query: dict, ns: str, name: str) -> None:
    """LFS batch API: an upload action only for objects the repo does not hold yet."""
    path = _repo(hub, ns, name, user, write=True)
    objects = []
    for obj in json.loads(h.body())["objects"]:
        entry = {"oid": obj["oid"], "size": obj["size"]}
        if not hub_git.lfs_object_path(path, obj["oid"]).is_file():
            grant = secrets.token_hex(16)  # like the Hub's pre-signed storage URLs: the PUT carries no token
            hub.grants.add((ns, name, obj["oid"], grant))
            entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{ns}/{name}/{obj['oid']}?sig={grant}"}}
        objects.append(entry)
    h.reply(200, {"transfer": "basic", "objects": objects})


def lfs_upload(h, hub: HubState, user: str | None, query: dict, ns: str, name: str, oid: str) -> None:
    """Receive one LFS object at a granted URL; its sha256 must match."""
    grant = (ns, name, oid, query.get("sig", [""])[0])
    if grant not in hub.grants:
        raise HubHTTPError(403, "upload URL not granted by the LFS batch endpoint")
    path = hub.repo_dir(ns, name)
    data = h.body()
    if hashlib.sha256(data).hexdigest() != oid:
        raise HubHTTPError(400, "uploaded content does not match its sha256")
    target = hub_git.lfs_object_path(path, oid)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    hub.uploads.append((oid, len(data)))
    h.reply(200, {})


def commit(h, hub: HubState, user: str | None, query: dict, ns: str, name: str, rev: str) -> None:
    """NDJSON commit: apply the file operations on the branch and move it."""
    path = _repo(hub, ns, name, user, write=True)
    lines = [json.loads(line) for line in h.body().splitlines() if line.strip()]
    header = next(item["value"] for item in lines if item["key"] == "header")
    parent = hub_git.resolve(path, rev)
    if parent is None and rev != "main":
        raise HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    items = [i for i in lines if i["key"] != "header"]
    for item in items:
        if item["key"] == "lfsFile" and not hub_git.lfs_object_path(path, item["value"]["oid"]).is_file():
            raise HubHTTPError(400, f"LFS object of {item['value']['path']} was not uploaded")
    new = hub_git.write_commit(path, parent, items, header)
    hub_git.git(["update-ref", f"refs/heads/{rev}", new, parent or ""], cwd=path)
    h.reply(200, {"commitUrl": f"{hub.url}/{ns}/{name}/commit/{new}", "commitOid": new, "success": True})


def refs(h, hub: HubState, user: str | None, query: dict, ns: str, name: str) -> None:
    """List branches and tags with the commits they point at."""
    path = _repo(hub, ns, name, user)
    out: dict[str, list] = {"branches": [], "tags": [], "converts": []}
    listing = hub_git.git(["for-each-ref", "--format=%(refname)%09%(objectname)%09%(*objectname)"], cwd=path).decode()
    for line in listing.splitlines():
        ref, target, peeled = line.split("\t")
        group = "branches" if ref.startswith("refs/heads/") else "tags" if ref.startswith("refs/tags/") else None
        if group:
            out[group].append({"name": ref.split("/", 2)[2], "ref": ref, "targetCommit": peeled or target})
    h.reply(200, out)


def tag(h, hub: HubState, user: str | None, query: dict, ns: str, name: str, rev: str) -> None:
    """Create a tag at a revision; 409 if it exists."""
    path = _repo(hub, ns, name, user, write=True)
    data = json.loads(h.body())
    if hub_git.resolve(path, f"refs/tags/{data['tag']}"):
        raise HubHTTPError(409, f"Tag {data['tag']} already exists")
    hub_git.git(["update-ref", f"refs/tags/{data['tag']}", _commit(path, rev)], cwd=path)
    h.reply(200, {})


def branch(h, hub: HubState, user: str | None, query: dict, ns: str, name: str, branch: str) -> None:
    """Create a branch from ``startingPoint`` (default main); 409 if it exists."""
    path = _repo(hub, ns, name, user, write=True)
    if hub_git.resolve(path, f"refs/heads/{branch}"):
        raise HubHTTPError(409, f"Branch {branch} already exists")
    start = json.loads(h.body() or b"{}").get("startingPoint") or "main"
    hub_git.git(["update-ref", f"refs/heads/{branch}", _commit(path, start)], cwd=path)
    h.reply(200, {})


def resolve(h, hub: HubState, user: str | None, query: dict, ns: str, name: str, rev: str, path: str) -> None:
    """HEAD/GET a file: ``X-Repo-Commit``, ``ETag`` (git blob id) and, for LFS, ``X-Linked-Etag``/``X-Linked-Size``."""
    repo = _repo(hub, ns, name, user)
    sha = _commit(repo, rev)
    entry = hub_git.tree_files(repo, sha).get(path)
    if entry is None:
        raise HubHTTPError(404, f"Entry not found: {path}", "EntryNotFound")
    headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.blob_id}"'}
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
    if h.command == "GET":
        h.reply(200, hub_git.read_file(repo, entry), headers)
        return
    h.send_response(200)  # HEAD: the real size, no body
    for key, value in {**headers, "Content-Length": str(entry.size)}.items():
        h.send_header(key, value)
    h.end_headers()


REPO = r"(?P<ns>[\w.-]+)/(?P<name>[\w.-]+)"
# (method, pattern, endpoint); revisions arrive URL-quoted (refs%2Fpr%2F1)
ROUTES: list[tuple[str, str, Callable[..., None]]] = [
    ("GET", r"/api/whoami-v2", whoami),
    ("POST", r"/api/repos/create", create_repo),
    ("POST", r"/api/validate-yaml", validate_yaml),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", repo_info),
    ("GET", rf"/api/models/{REPO}/refs", refs),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", tree),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", preupload),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", commit),
    ("POST", rf"/api/models/{REPO}/tag/(?P<rev>[^/]+)", tag),
    ("POST", rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", branch),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", lfs_batch),
    ("PUT", rf"/lfs-upload/{REPO}/(?P<oid>[0-9a-f]{{64}})", lfs_upload),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", resolve),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", resolve),
]
