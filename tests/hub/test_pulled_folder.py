"""Issue 35.4: a pulled artifact is usable. ``aipc pull`` brings the model card along (``*.md``); the card and the
licence are vouched for by ``published.json``, which publishing writes, so ``aipc verify`` and ``aipc chat`` accept
the pulled folder, and a card edited after publishing (on the hub or after the pull) is still refused in one line.

Runs against the project's own Hub-compatible server with the fixtures of tests/hub/test_publish.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_cmd
from test_publish import REPO, TOKEN, hub, int4_source, options, project, pull_in_fresh_process  # noqa: F401  (fixtures)

from pipeline.core.published import PUBLISHED
from pipeline.hub.publish import check_pulled_extras, publish
from pipeline.hub.server import HubServer

CARD = b"---\nlicense: mit\npipeline_tag: text-generation\n---\nA card someone edited on the hub.\n"


def aipc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``aipc ...`` in a fresh process, as a user runs it outside any project."""
    return run_cmd([sys.executable, "-m", "pipeline.cli", *args], cwd, check=check)


def one_error(done: subprocess.CompletedProcess) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return errors[0]


def test_a_pulled_folder_verifies_and_chats_and_an_edited_card_is_refused(project: Path, hub: HubServer,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    publish(project, ["openvino/int4"], options(hub, "hf", tag="v1"))
    pulled = tmp_path / "pulled"
    pull_in_fresh_process(hub, "v1", pulled)
    assert (pulled / "README.md").is_file(), "pull brings the model card"
    record = json.loads((pulled / PUBLISHED).read_text(encoding="utf-8"))
    assert "README.md" in record["files"] and record["recorded_by"] == "aipc publish"

    assert aipc(["verify", str(pulled)], tmp_path).stdout.startswith("ok: ")
    answer = aipc(["chat", str(pulled), "--prompt", "Hi"], tmp_path)
    assert answer.stdout.strip(), "the pulled IR answered"

    card = pulled / "README.md"
    text = card.read_text(encoding="utf-8")
    card.write_text(text.replace("OpenVINO", "OpenVIN0", 1), encoding="utf-8")  # same size, one byte differs
    for command in (["verify", str(pulled)], ["chat", str(pulled), "--prompt", "Hi"]):
        line = one_error(aipc(command, tmp_path, check=False))
        assert "README.md does not match the sha256 in" in line and PUBLISHED in line, line
        assert "modified after it was published" in line, line
    card.write_text(text + "\nEdited later.\n", encoding="utf-8")
    line = one_error(aipc(["verify", str(pulled)], tmp_path, check=False))
    assert "README.md is not the size" in line and "modified after it was published" in line, line


def test_a_card_edited_on_the_hub_after_publishing_is_refused_by_pull(project: Path, hub: HubServer,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    publish(project, ["openvino/int4"], options(hub, "hf"))
    HfApi(endpoint=hub.url, token=TOKEN).upload_file(path_or_fileobj=CARD,
                                                     path_in_repo="README.md", repo_id=REPO)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN}
    dest = tmp_path / "pulled"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "pull", REPO, "main", str(dest)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    line = one_error(done)
    assert "README.md" in line and f"published {PUBLISHED}" in line, line
    assert not dest.exists(), "nothing half-checked is left"


def test_a_repo_published_without_a_record_gets_one_labelled_by_pull(project: Path, tmp_path: Path) -> None:  # noqa: F811
    from pipeline.core.verify import verify_folder

    folder = tmp_path / "legacy"
    folder.mkdir()
    for path in (project / "artifacts/openvino/int4").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "README.md").write_text("an old card\n", encoding="utf-8")
    check_pulled_extras(folder, f"{REPO}@abc123", set(json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["files"]))
    record = json.loads((folder / PUBLISHED).read_text(encoding="utf-8"))
    assert list(record["files"]) == ["README.md"] and "vouched as pulled" in record["recorded_by"]
    assert verify_folder(folder)["files"]
