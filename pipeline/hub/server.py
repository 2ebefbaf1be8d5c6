"""A minimal Hugging Face Hub-compatible HTTP server over a folder of bare git + git-lfs repositories.

It implements exactly the endpoints ``huggingface_hub`` 1.21 uses to publish (whoami, create repo,
preupload, LFS batch + upload, NDJSON commit, branch, tag, validate-yaml) and to download
(``repo_info``, tree, ``resolve`` with ``X-Repo-Commit``/``ETag``/``X-Linked-Etag``), with model repos at
``<root>/<namespace>/<name>.git``. Point ``HF_ENDPOINT`` at it to pull what ``aipc publish --backend git``
pushed to a bare repository, with ``snapshot_download`` or ``dvc repro download``::

    python -m pipeline.hub.server --root /srv/models --port 8080 --token me=hf_xxx

Every request is recorded in :attr:`HubServer.calls` and every LFS upload in :attr:`HubServer.uploads`, so
tests can check what a client sent. Xet storage is not offered: clients must set ``HF_HUB_DISABLE_XET=1``
(``huggingface_hub`` picks Xet whenever ``hf_xet`` is installed, without asking the server).
Why not ``olah``: 0.5.4 needs ``huggingface_hub>=1.27`` (we pin 1.21) and reads LFS objects from
``<work tree>/.git/lfs/objects``, so it cannot serve a bare repository as pushed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.hub import git as hub_git

REPO = r"(?P<ns>[\w.-]+)/(?P<name>[\w.-]+)"
ROUTES = [  # (method, pattern, handler name); revisions arrive URL-quoted (refs%2Fpr%2F1)
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", rf"/api/models/{REPO}/refs", "refs"),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/api/models/{REPO}/tag/(?P<rev>[^/]+)", "tag"),
    ("POST", rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", "branch"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", rf"/lfs-upload/{REPO}/(?P<oid>[0-9a-f]{{64}})", "lfs_upload"),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
DEFAULT_GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n"
    for p in ("*.bin", "*.onnx", "*.onnx.data", "*.safetensors", "*.blob", "*.model", "*.pt", "*.pth", "*.h5", "*.zip")
)


class HubHTTPError(Exception):
    """An HTTP error answer: status, the Hub's ``X-Error-Code`` and a message."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class HubServer:
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

    def start(self, host: str = "127.0.0.1", port: int = 0) -> HubServer:
        """Serve in a background thread; sets :attr:`url`."""
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()


def _make_handler(hub: HubServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet; calls are recorded in hub.calls
            pass

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            hub.calls.append((self.command, parts.path))
            try:
                user = _authenticate(hub, self.headers.get("Authorization"))
                for method, pattern, name in ROUTES:
                    match = re.fullmatch(pattern, parts.path)
                    if method == self.command and match:
                        args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        return HANDLERS[name](self, hub, user, parse_qs(parts.query), **args)
                raise HubHTTPError(404, f"no route for {self.command} {parts.path}")
            except HubHTTPError as err:
                self.reply(err.status, {"error": str(err)}, {"X-Error-Code": err.code} if err.code else {})

        do_GET = do_POST = do_PUT = do_HEAD = _dispatch

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def reply(self, status: int, data, headers: dict | None = None) -> None:
            raw = data if isinstance(data, bytes) else json.dumps(data).encode()
            self.send_response(status)
            self.send_header(
                "Content-Type", "application/octet-stream" if isinstance(data, bytes) else "application/json"
            )
            self.send_header("Content-Length", str(len(raw)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

    return Handler


def _authenticate(hub: HubServer, header: str | None) -> str | None:
    """The user a bearer token belongs to; a token the server does not know is a 401, like the Hub."""
    if not header:
        return None
    token = header.split(" ", 1)[-1]
    if token not in hub.tokens:
        raise HubHTTPError(401, "Invalid credentials in Authorization header")
    return hub.tokens[token]


def _repo(hub: HubServer, ns: str, name: str, user: str | None, write: bool = False) -> Path:
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


def whoami(h, hub: HubServer, user: str | None, query: dict) -> None:
    """The token's user (401 without a valid token)."""
    if user is None:
        raise HubHTTPError(401, "Invalid credentials in Authorization header")
    h.reply(200, {"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": "write"}}})


def create_repo(h, hub: HubServer, user: str | None, query: dict) -> None:
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
    first = _write_commit(path, None, [attributes], {"summary": "initial commit"})
    hub_git.git(["update-ref", "refs/heads/main", first], cwd=path)
    h.reply(200, {"url": f"{hub.url}/{ns}/{data['name']}", "name": f"{ns}/{data['name']}"})


def validate_yaml(h, hub: HubServer, user: str | None, query: dict) -> None:
    """The Hub's README metadata check, with :func:`pipeline.hub.model_card.metadata_problems`."""
    from pipeline.hub.model_card import metadata_problems

    problems = metadata_problems(json.loads(h.body())["content"])
    h.reply(400 if problems else 200, {"errors": [{"message": p} for p in problems], "warnings": []})


def repo_info(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str, rev: str = "main") -> None:
    """``model_info``/``repo_info``: the resolved commit and the file list (siblings)."""
    path = _repo(hub, ns, name, user)
    sha = _commit(path, rev)
    files = hub_git.tree_files(path, sha)
    h.reply(
        200,
        {
            "id": f"{ns}/{name}",
            "sha": sha,
            "private": _meta(path)["private"],
            "siblings": [{"rfilename": p} for p in sorted(files)],
        },
    )


def tree(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str, rev: str, path: str = "") -> None:
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


def preupload(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str, rev: str) -> None:
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


def lfs_batch(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str) -> None:
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


def lfs_upload(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str, oid: str) -> None:
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


def commit(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str, rev: str) -> None:
    """NDJSON commit: apply the file operations on the branch and move it."""
    path = _repo(hub, ns, name, user, write=True)
    lines = [json.loads(line) for line in h.body().splitlines() if line.strip()]
    header = next(item["value"] for item in lines if item["key"] == "header")
    parent = hub_git.resolve(path, rev)
    if parent is None and rev != "main":
        raise HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    new = _write_commit(path, parent, [i for i in lines if i["key"] != "header"], header)
    hub_git.git(["update-ref", f"refs/heads/{rev}", new, parent or ""], cwd=path)
    h.reply(200, {"commitUrl": f"{hub.url}/{ns}/{name}/commit/{new}", "commitOid": new, "success": True})


def _write_commit(path: Path, parent: str | None, items: list[dict], header: dict) -> str:
    """Apply NDJSON file operations on top of ``parent`` with a temporary index; return the new commit."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_AUTHOR_NAME": "hub",
            "GIT_AUTHOR_EMAIL": "hub@localhost",
            "GIT_COMMITTER_NAME": "hub",
            "GIT_COMMITTER_EMAIL": "hub@localhost",
        }
        hub_git.git(["read-tree", *([parent] if parent else ["--empty"])], cwd=path, env=env)
        for item in items:
            value = item["value"]
            if item["key"] == "deletedFile":
                hub_git.git(["update-index", "--force-remove", value["path"]], cwd=path, env=env)
                continue
            if item["key"] == "lfsFile":
                if not hub_git.lfs_object_path(path, value["oid"]).is_file():
                    raise HubHTTPError(400, f"LFS object of {value['path']} was not uploaded")
                data = hub_git.lfs_pointer(value["oid"], value["size"])
            else:
                data = base64.b64decode(value["content"])
            blob = hub_git.git(["hash-object", "-w", "--stdin"], cwd=path, input=data).decode().strip()
            hub_git.git(["update-index", "--add", "--cacheinfo", f"100644,{blob},{value['path']}"], cwd=path, env=env)
        tree_id = hub_git.git(["write-tree"], cwd=path, env=env).decode().strip()
        message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
        args = ["commit-tree", tree_id, *(["-p", parent] if parent else []), "-m", message]
        return hub_git.git(args, cwd=path, env=env).decode().strip()


def refs(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str) -> None:
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


def tag(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str, rev: str) -> None:
    """Create a tag at a revision; 409 if it exists."""
    path = _repo(hub, ns, name, user, write=True)
    data = json.loads(h.body())
    if hub_git.resolve(path, f"refs/tags/{data['tag']}"):
        raise HubHTTPError(409, f"Tag {data['tag']} already exists")
    hub_git.git(["update-ref", f"refs/tags/{data['tag']}", _commit(path, rev)], cwd=path)
    h.reply(200, {})


def branch(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str, branch: str) -> None:
    """Create a branch from ``startingPoint`` (default main); 409 if it exists."""
    path = _repo(hub, ns, name, user, write=True)
    if hub_git.resolve(path, f"refs/heads/{branch}"):
        raise HubHTTPError(409, f"Branch {branch} already exists")
    start = json.loads(h.body() or b"{}").get("startingPoint") or "main"
    hub_git.git(["update-ref", f"refs/heads/{branch}", _commit(path, start)], cwd=path)
    h.reply(200, {})


def resolve(h, hub: HubServer, user: str | None, query: dict, ns: str, name: str, rev: str, path: str) -> None:
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


HANDLERS = {name: globals()[name] for _, _, name in ROUTES}


def main(argv: list[str] | None = None) -> None:
    """Serve ``--root`` until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding <namespace>/<name>.git bare repositories")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", action="append", default=[], help="USER=TOKEN accepted for writes (repeatable)")
    args = parser.parse_args(argv)
    tokens = {tok: user for user, tok in (t.split("=", 1) for t in args.token)}
    tokens.update(
        {
            tok: user
            for user, tok in (t.split("=", 1) for t in os.environ.get("AIPC_HUB_TOKENS", "").split() if "=" in t)
        }
    )
    hub = HubServer(Path(args.root), tokens).start(args.host, args.port)
    print(f"serving {args.root} at {hub.url} (HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1)", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
