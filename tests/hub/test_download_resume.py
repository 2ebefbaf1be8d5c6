"""An interrupted hub download goes on from the files it had finished (pipeline/hub/resume.py).

Runs the download stage's code in a fresh process, as DVC does, against the project's own Hub-compatible server
(pipeline/hub/server.py), which records every request. What an interrupted run leaves is laid by huggingface_hub
itself: the weights downloaded into the kept folder, as a run cut off after them leaves them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DIR
from huggingface_hub import HfApi, hf_hub_download

from pipeline.hub.resume import resume_dir
from pipeline.hub.server import HubServer

TOKEN, REPO = "hf_resume_token", "me/tiny-phi3"
RUN = (
    "import sys; from pathlib import Path; from pipeline.core.config import ModelConfig; "
    "from pipeline.core.errors import run_main; from pipeline.hub.download import run; "
    "run_main(lambda: run(ModelConfig.from_conf(name='t', source='hub', repo_id=sys.argv[1], revision=sys.argv[2]), Path('out')))"
)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """The server, and huggingface_hub in this process online and without Xet (to upload the model)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    server = HubServer(tmp_path / "hub", {TOKEN: "me"}).start()
    yield server
    server.stop()


def download(project: Path, endpoint: str, revision: str) -> subprocess.CompletedProcess:
    """The download stage for ``REPO`` at ``revision`` from ``endpoint``, in a new process (cwd ``project``)."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", RUN, REPO, revision], cwd=project, env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace")


def test_an_interrupted_download_keeps_the_files_it_finished(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(REPO)
    revision = api.upload_folder(folder_path=TINY_DIR, repo_id=REPO, allow_patterns=["*.json", "*.safetensors"]).oid
    project = tmp_path / "project"
    partial = project / resume_dir(REPO, revision)
    hf_hub_download(REPO, "model.safetensors", revision=revision, local_dir=partial, endpoint=hub.url)

    cut = download(project, "http://127.0.0.1:9", revision)  # the network is gone: the run fails in one line
    assert cut.returncode == 2 and "cannot reach the model hub" in cut.stderr.strip().splitlines()[-1], cut.stderr
    assert (partial / "model.safetensors").is_file() and not (project / "out").exists(), "the finished file is kept"

    hub.calls.clear()
    done = download(project, hub.url, revision)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming the download" in done.stderr
    fetched = {path.rsplit("/", 1)[-1] for method, path in hub.calls if method == "GET" and "/resolve/" in path}
    assert fetched and "model.safetensors" not in fetched, f"the weights were fetched again: {fetched}"
    out = project / "out"
    assert (out / "model.safetensors").read_bytes() == (TINY_DIR / "model.safetensors").read_bytes()
    assert (out / "tokenizer.json").read_bytes() == (TINY_DIR / "tokenizer.json").read_bytes()
    assert not partial.exists() and (out / "manifest.json").is_file()
