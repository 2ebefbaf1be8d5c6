"""aipc publish: HfApi against a local Hub-compatible server, git + git-lfs to a bare repo, the round trip.

Nothing reaches the internet: :class:`pipeline.hub.server.HubServer` runs in this process on 127.0.0.1,
stores repos as bare git + LFS repositories, and records every call and every uploaded byte. Xet is
disabled (``huggingface_hub`` 1.21 would otherwise upload through ``hf_xet`` without asking the server).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_project, run_cmd

from pipeline.core.errors import StageError
from pipeline.core.published import PUBLISHED
from pipeline.core.workspace import Workspace
from pipeline.hub import git as hub_git
from pipeline.hub.card_rules import metadata_problems
from pipeline.hub.publish import PublishOptions, check_pulled_extras, publish
from pipeline.hub.server import HubServer

TOKEN = "hf_alice" + "Wr1te" * 6
USER = "alice"
REPO = f"{USER}/tiny-phi3-openvino-int4"
PROJECT_PARTS = ["dvc.lock", "params.yaml", "artifacts/model", "artifacts/reference", "artifacts/metrics",
                 "artifacts/openvino/int4"]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is needed")
HAS_LFS = subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0 if shutil.which("git") else False
needs_lfs = pytest.mark.skipif(not HAS_LFS, reason="git-lfs is not installed (.ci/run installs it)")


@pytest.fixture(scope="session")
def int4_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a validated tiny int4 IR: the shared demo project when this session builds it anyway,
    otherwise a cheaper build of just ``validate@int4``."""
    others = [i for i in request.session.items if getattr(i, "module", None) is not None
              and i.module.__name__ != __name__ and "demo_project" in getattr(i, "fixturenames", ())]
    if others:
        return request.getfixturevalue("demo_project")[0]
    project = make_project(tmp_path_factory.mktemp("session-publish_project"))
    run_cmd([sys.executable, "-m", "pipeline.cli", "compose", "model=tiny"], project)
    run_cmd([sys.executable, "-m", "dvc", "repro", "validate@int4"], project)
    return project


@pytest.fixture
def project(int4_source: Path, tmp_path: Path) -> Path:
    """A private copy of what publish reads (the shared project is never written to)."""
    dest = tmp_path / "project"
    for part in PROJECT_PARTS:
        src, target = int4_source / part, dest / part
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, target) if src.is_dir() else shutil.copy2(src, target)
    return dest


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Hub-compatible server in this process; huggingface_hub pointed at it, online, without Xet."""
    import huggingface_hub.constants as hf_constants

    server = HubServer(tmp_path / "hub", {TOKEN: USER}).start()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.stop()


def options(hub: HubServer, backend: str, **kw) -> PublishOptions:
    """Publish options for ``backend``: the server's endpoint (hf) or a bare repo it serves (git)."""
    repo = REPO if backend == "hf" else str(hub.repo_dir(USER, "tiny-phi3-openvino-int4"))
    kw.setdefault("allow_quick", True)  # the project was validated with the default quick profile
    return PublishOptions(backend=backend, repo=repo, endpoint=hub.url, **kw)


def pull_in_fresh_process(hub: HubServer, revision: str, dest: Path) -> dict:
    """Download like a user would: a new process configured only through HF_ENDPOINT / HF_TOKEN."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN}
    code = ("import json, sys; from pathlib import Path; from pipeline.hub.publish import pull; "
            f"print(json.dumps(pull({REPO!r}, {revision!r}, Path(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, str(dest)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def validate_pulled(project: Path, folder: Path, tmp_path: Path) -> dict:
    """Run the pipeline's own validation on the downloaded IR against the project's PyTorch reference."""
    from pipeline.core.config import load_params
    from pipeline.openvino import validate

    cfg = load_params(project / "params.yaml").validate
    target = validate.Target("openvino-int4-pulled", "openvino", folder, ["CPU"])
    return validate.run(target, cfg, Workspace(reference=project / "artifacts/reference/reference.json", metrics=tmp_path / "metrics"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", pytest.param("git", marks=needs_lfs)])
def test_round_trip_publish_twice_pull_pinned_and_validate(backend: str, project: Path, hub: HubServer,
                                                          tmp_path: Path) -> None:
    manifest = json.loads((project / "artifacts/openvino/int4/manifest.json").read_text(encoding="utf-8"))
    first = publish(project, ["openvino/int4"], options(hub, backend, tag="v1"))[0]
    assert first.commit and "openvino_model.bin" in first.changed and "README.md" in first.changed
    if backend == "hf":  # the calls and the bytes: every LFS object uploaded once, with the manifest's content
        big = {i["sha256"]: i["bytes"] for i in manifest["files"].values() if i["bytes"] >= hub_git.LFS_MIN_BYTES}
        assert {oid: n for oid, n in hub.uploads if oid in big} == big
        assert ("POST", "/api/repos/create") in hub.calls
        assert json.loads((hub.repo_dir(USER, REPO.split("/")[1]) / "aipc-hub.json").read_text(encoding="utf-8"))["private"] is True
    calls, uploads, objects = len(hub.calls), list(hub.uploads), _lfs_objects(hub)
    head = hub_git.resolve(hub.repo_dir(USER, REPO.split("/")[1]), "main")

    second = publish(project, ["openvino/int4"], options(hub, backend, tag="v1"))[0]
    assert second.commit is None and second.changed == [] and second.removed == []
    assert hub.uploads == uploads and _lfs_objects(hub) == objects
    assert hub_git.resolve(hub.repo_dir(USER, REPO.split("/")[1]), "main") == head
    assert not any("/commit/" in path or "/lfs-upload/" in path for _, path in hub.calls[calls:])

    pulled = pull_in_fresh_process(hub, "v1", tmp_path / "pulled")
    assert pulled["commit"] == head
    for rel, info in manifest["files"].items():
        assert _sha256(tmp_path / "pulled" / rel) == info["sha256"], rel
    assert metadata_problems((tmp_path / "pulled" / "README.md").read_text(encoding="utf-8")) == []
    metrics = validate_pulled(project, tmp_path / "pulled", tmp_path)
    original = json.loads((project / "artifacts/metrics/openvino-int4.json").read_text(encoding="utf-8"))
    assert metrics["passed"] and metrics["top1_agreement"] == original["top1_agreement"]


def _lfs_objects(hub: HubServer) -> set[str]:
    return {p.name for p in hub.root.rglob("lfs/objects/*/*/*")}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_token_gives_one_line_and_is_never_printed(project: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    from pipeline import cli

    wrong = "hf_" + "wrongtoken" * 4
    monkeypatch.setenv("HF_TOKEN", wrong)
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exc:
        cli.main(["publish", "--endpoint", hub.url, "--repo", REPO, "--allow-quick", "openvino/int4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "HTTP 401" in err[0] and "HF_TOKEN" in err[0]
    assert wrong not in err[0] and not hub.repo_dir(USER, REPO.split("/")[1]).exists()


@pytest.mark.parametrize("backend", ["hf", pytest.param("git", marks=needs_lfs)])
def test_missing_repo_with_creation_disabled_gives_one_line(backend: str, project: Path, hub: HubServer) -> None:
    with pytest.raises(StageError, match="--no-create") as exc:
        publish(project, ["openvino/int4"], options(hub, backend, create=False))
    assert "\n" not in str(exc.value)
    assert not hub.repo_dir(USER, REPO.split("/")[1]).exists()
    assert not any(method in ("POST", "PUT") for method, _ in hub.calls)


def test_failed_validation_is_refused_unless_forced(project: Path, hub: HubServer) -> None:
    path = project / "artifacts/metrics/openvino-int4.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics.update(passed=False, problems=["top-1 agreement 0.412 below the int4 threshold 0.85"])
    path.write_text(json.dumps(metrics), encoding="utf-8")  # what a failed validate stage leaves (dvc.lock does not record it)
    with pytest.raises(StageError, match="failed validation") as exc:
        publish(project, ["openvino/int4"], options(hub, "hf"))
    assert "\n" not in str(exc.value) and "--force" in str(exc.value) and "0.412" in str(exc.value)
    assert hub.calls == []
    result = publish(project, ["openvino/int4"], options(hub, "hf", force=True))[0]
    assert result.commit and "**FAILED**" in result.card and "0.412 below the int4 threshold" in result.card


def test_a_quick_profile_verdict_is_refused_unless_allowed_and_the_card_says_so(project: Path, hub: HubServer) -> None:
    with pytest.raises(StageError, match="validate.profile=full") as exc:
        publish(project, ["openvino/int4"], options(hub, "hf", allow_quick=False))
    assert "\n" not in str(exc.value) and "--allow-quick" in str(exc.value) and hub.calls == []
    result = publish(project, ["openvino/int4"], options(hub, "hf"))[0]
    assert result.commit and "passed with the **quick** validation profile (published with --allow-quick" in result.card


def test_dry_run_lists_the_upload_and_the_card_and_writes_nothing(project: Path, hub: HubServer,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from pipeline import cli

    monkeypatch.chdir(project)
    cli.main(["publish", "--dry-run", "--allow-quick", "--endpoint", hub.url, "--repo", REPO, "openvino/int4"])
    out = capsys.readouterr().out
    assert "would upload: openvino_model.bin" in out and "would upload: README.md" in out
    assert "license: mit" in out and "OpenVINO IR, validated on CPU" in out and "ov_genai.LLMPipeline" in out
    assert not any(method in ("POST", "PUT") for method, _ in hub.calls)
    assert not hub.repo_dir(USER, REPO.split("/")[1]).exists()


@needs_lfs
def test_token_never_lands_in_output_cards_manifests_or_repos(project: Path, hub: HubServer,
                                                              capfd: pytest.CaptureFixture) -> None:
    for backend in ("hf", "git"):
        opts = options(hub, backend)
        if backend == "git":
            opts.repo = str(hub.repo_dir(USER, "git-copy"))
        publish(project, ["openvino/int4"], opts)
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    written = [p for root in (hub.root, project) for p in root.rglob("*") if p.is_file()]
    assert written and not [p for p in written if TOKEN.encode() in p.read_bytes()]


def test_card_metadata_is_valid_and_says_what_ran(project: Path) -> None:
    from huggingface_hub import ModelCard

    from pipeline.hub.staging import load_artifact, render_card

    art = load_artifact(project, "openvino/int4")
    card = ModelCard(render_card(art, REPO, PublishOptions(tag="v1")))
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["pipeline_tag"] == "text-generation"
    assert {"openvino", "nncf", "int4", "phi3", "text-generation", "cpu"} <= set(data["tags"])
    assert "base_model" not in data  # the tiny model is not on the Hub: no made-up base model
    assert "| CPU | passed | CPU | OpenVINO IR, validated on CPU |" in card.text
    assert f'snapshot_download("{REPO}", revision="v1")' in card.text and "`group_size` | `" in card.text
    assert metadata_problems(str(card)) == []


def test_card_for_hub_sources_npu_and_onnx(project: Path) -> None:
    from huggingface_hub import ModelCard

    from pipeline.hub.model_card import CardFacts, build_card

    manifest = json.loads((project / "artifacts/openvino/int4/manifest.json").read_text(encoding="utf-8"))
    manifest["source"] = {"model": "phi3-mini-4k", "source": "hub", "repo_id": "microsoft/Phi-3-mini-4k-instruct",
                          "revision": "f39ac1d28e925b323eae81227eaba4464caced4e", "license": "mit"}
    metrics = {"label": "NPU-ready IR, validated on CPU", "device_requested": "CPU", "device_executed": "CPU",
               "passed": True, "note": "no NPU: no NPU driver"}
    npu = build_card(CardFacts(REPO, "main", "npu", "npu-int4", manifest, metrics, "mit", "source card"))
    assert npu.data.base_model == "microsoft/Phi-3-mini-4k-instruct" and npu.data.base_model_relation == "quantized"
    assert "npu" in npu.data.tags and "NPU-ready IR, validated on CPU" in npu.text and '"NPU", **settings' in npu.text
    onnx_manifest = {**manifest, "parameters": {"execution_provider": "dml", "precision": "int4", "block_size": 128}}
    onnx = build_card(CardFacts(REPO, "main", "onnx", "onnx-dml_int4", onnx_manifest,
                                {**metrics, "label": "DML graph, validated on CPU provider"}, "mit", "source card"))
    assert {"onnx", "directml", "int4"} <= set(onnx.data.tags) and "nncf" not in onnx.data.tags
    assert "og.Model(path)" in onnx.text and metadata_problems(str(onnx)) == []
    assert ModelCard(str(onnx)).data.library_name == "onnxruntime-genai"


def test_every_publishable_family_states_the_tie_in_its_card() -> None:
    """Issue 21.4: the card says whether the tie survived and at which precisions, naming where it was read back."""
    from pipeline.core.registry import FAMILIES, entries
    from pipeline.hub.model_card import CardFacts, build_card, card_format

    publishable = {f.name for f in FAMILIES.values() if f.publishable}
    assert publishable == set(entries("card"))  # each publishable family's package says what its cards say
    metrics = {"label": "validated on CPU", "device_requested": "CPU", "device_executed": "CPU", "passed": True}
    parameters = {"onnx": {"execution_provider": "cpu", "precision": "int4"}, "winml": {"device_type": "NPU"}}
    tie = {"checkpoint_tied": True, "shared_constant": True, "embedding": {"layer": "e", "precision": "int8"},
           "lm_head": {"layer": "h", "precision": "int8"}}
    for kind in sorted(publishable):
        manifest = {"parameters": parameters.get(kind, {"weight_format": "int4"}), "tied_embeddings": tie}
        card = build_card(CardFacts(REPO, "main", kind, f"{kind}-v", manifest, metrics, "mit", "source card"))
        said = f"they are one shared matrix in {card_format(kind).tie_holder}, int8 / int8 (embedding / LM head)."
        assert said in card.text, kind
        untied = {**manifest, "tied_embeddings": {**tie, "shared_constant": False}}
        card = build_card(CardFacts(REPO, "main", kind, f"{kind}-v", untied, metrics, "mit", "source card"))
        assert "two copies (the tie was not kept)" in card.text, kind
        phi3 = {**manifest, "tied_embeddings": {**tie, "checkpoint_tied": False}}  # nothing to say for an untied source
        card = build_card(CardFacts(REPO, "main", kind, f"{kind}-v", phi3, metrics, "mit", "source card"))
        assert "Tied embeddings" not in card.text, kind


def test_metadata_problems_catches_what_the_hub_rejects() -> None:
    assert metadata_problems("---\nlicense: mit\npipeline_tag: text-generation\n---\nok") == []
    assert "not a Hub licence" in metadata_problems("---\nlicense: my-own\npipeline_tag: text-generation\n---\n")[0]
    assert metadata_problems("---\nlicense: mit\npipeline_tag: text-generation\nbase_model_relation: quantized\n---\n")
    assert metadata_problems("---\n- a list\n---\n")  # metadata must be a mapping (ModelCard raises)


def test_pull_offline_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "pulled"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "pull", "someone/phi3-int4", "v1", str(dest)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot reach the model hub for 'someone/phi3-int4'")
    assert "Traceback" not in done.stderr
    assert not dest.exists() and not list(tmp_path.glob(".pulled.tmp-*")), "nothing half-written"


# --- issue 35.4: a pulled folder verifies and chats; the card is vouched for by published.json ---------------------
# `aipc pull` brings the model card along (*.md); publishing records its sha256 (and the licence's, and the manifest's)
# in published.json, so `aipc verify` and `aipc chat` accept the pulled folder and a card edited later is refused.

CARD = b"---\nlicense: mit\npipeline_tag: text-generation\n---\nA card someone edited on the hub.\n"


def aipc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``aipc ...`` in a fresh process, as a user runs it outside any project."""
    return run_cmd([sys.executable, "-m", "pipeline.cli", *args], cwd, check=check)


def one_error(done: subprocess.CompletedProcess) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return errors[0]


def test_a_pulled_folder_verifies_and_chats_and_an_edited_card_is_refused(project: Path, hub: HubServer,
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


def test_a_card_edited_on_the_hub_after_publishing_is_refused_by_pull(project: Path, hub: HubServer,
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


def test_a_repo_published_without_a_record_gets_one_labelled_by_pull(project: Path, tmp_path: Path) -> None:
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
