"""download stage: tiny and local sources, hub errors offline, refusal of incomplete folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline import download
from pipeline.artifacts import read_manifest, sha256_file
from pipeline.config import ModelConfig
from pipeline.errors import StageError

from conftest import TINY_DIR, assert_untouched, previous_artifact


def test_tiny_source_copies_model_and_records_hashes(tmp_path: Path) -> None:
    out = tmp_path / "model"
    manifest = download.run(ModelConfig(source="tiny"), out)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert manifest == read_manifest(out)
    for name, info in manifest["files"].items():
        assert info["sha256"] == sha256_file(out / name)
    assert not any(n.endswith((".bin", ".pt")) for n in manifest["files"])


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_unknown_model_offline_gives_one_line_and_keeps_previous_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", env["HF_HUB_OFFLINE"] == "1")
    if "HF_ENDPOINT" in env:
        monkeypatch.setattr(hf_constants, "ENDPOINT", env["HF_ENDPOINT"])
    out = previous_artifact(tmp_path / "artifacts" / "model")
    cfg = ModelConfig(name="x", source="hub", repo_id="nobody/no-such-model", revision="0" * 40)
    with pytest.raises(StageError) as exc:
        download.run(cfg, out)
    message = str(exc.value)
    assert "\n" not in message and "model=tiny" in message and "HF_ENDPOINT" in message
    assert_untouched(out)


def test_folder_without_tokenizer_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy2(TINY_DIR / name, src / name)
    out = previous_artifact(tmp_path / "artifacts" / "model")
    with pytest.raises(StageError, match="no tokenizer"):
        download.run(ModelConfig(source="local", local_path=str(src)), out)
    assert_untouched(out)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(TINY_DIR, src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    out = tmp_path / "artifacts" / "model"
    with pytest.raises(StageError, match="safetensors"):
        download.run(ModelConfig(source="local", local_path=str(src)), out)
    assert not out.exists()


def test_non_phi3_model_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(TINY_DIR, src)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "llama"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(StageError, match="not 'phi3'"):
        download.run(ModelConfig(source="local", local_path=str(src)), tmp_path / "out")


def test_token_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    secret = "hf_" + "s3cr3t" * 6
    monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "model"
    download.run(ModelConfig(source="tiny"), out)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert secret not in (out / "manifest.json").read_text()
