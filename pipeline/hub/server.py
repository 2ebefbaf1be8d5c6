"""A minimal Hugging Face Hub-compatible HTTP server over a folder of bare git + git-lfs repositories.

It implements exactly the endpoints ``huggingface_hub`` 1.21 uses to publish (whoami, create repo,
preupload, LFS batch + upload, NDJSON commit, branch, tag, validate-yaml) and to download
(``repo_info``, tree, ``resolve`` with ``X-Repo-Commit``/``ETag``/``X-Linked-Etag``), in
:mod:`pipeline.hub.endpoints`; this module routes requests to them. Model repos live at
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
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.hub.endpoints import ROUTES, HubHTTPError, HubState


class HubServer(HubState):
    """The server: its state (:class:`pipeline.hub.endpoints.HubState`) served over HTTP."""

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
                for method, pattern, endpoint in ROUTES:
                    match = re.fullmatch(pattern, parts.path)
                    if method == self.command and match:
                        args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        return endpoint(self, hub, user, parse_qs(parts.query), **args)
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
