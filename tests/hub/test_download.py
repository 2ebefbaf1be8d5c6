"""download stage: embedded (tiny, tiny-128k) and local sources, hub errors offline, refusal of incomplete folders."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import ConfigError, ModelConfig, PipelineConfig, build, compose
from pipeline.core.errors import StageError
from pipeline.core.hashes import sha256_file
from pipeline.core.manifest import read_manifest
from pipeline.hub import download

from conftest import ROOT, TINY_DIR, assert_untouched, previous_artifact

TINY_128K_DIR = ROOT / "pipeline" / "assets" / "tiny_phi3_128k"


def test_tiny_source_copies_model_and_records_hashes(tmp_path: Path) -> None:
    out = tmp_path / "model"
    manifest = download.run(ModelConfig.preset("tiny"), out)
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
    cfg = ModelConfig.from_conf(name="x", source="hub", repo_id="nobody/no-such-model", revision="0" * 40)
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
        download.run(ModelConfig.preset("local", local_path=str(src)), out)
    assert_untouched(out)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(TINY_DIR, src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    out = tmp_path / "artifacts" / "model"
    with pytest.raises(StageError, match="safetensors"):
        download.run(ModelConfig.preset("local", local_path=str(src)), out)
    assert not out.exists()


def test_non_phi3_model_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(TINY_DIR, src)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "llama"
    (src / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(StageError, match="not 'phi3'"):
        download.run(ModelConfig.preset("local", local_path=str(src)), tmp_path / "out")


def test_token_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    secret = "hf_" + "s3cr3t" * 6
    monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "model"
    download.run(ModelConfig.preset("tiny"), out)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert secret not in (out / "manifest.json").read_text(encoding="utf-8")


def test_tiny_128k_preset_copies_its_own_asset_offline(tmp_path: Path) -> None:
    cfg = build(PipelineConfig, compose(["model=tiny-128k"])).model
    manifest = download.run(cfg, tmp_path / "model")
    assert (manifest["source"], manifest["asset"]) == ("tiny", "tiny_phi3_128k")
    for name, info in manifest["files"].items():
        if name != "manifest.json":
            assert info["sha256"] == sha256_file(TINY_128K_DIR / name), name
    assert json.loads((tmp_path / "model" / "config.json").read_text(encoding="utf-8"))["num_key_value_heads"] == 2


def test_unknown_embedded_asset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.asset"):
        ModelConfig.preset("tiny", asset="tiny_phi3_1m")


def test_tiny_128k_config_is_longrope_gqa_with_factors_fp16_cannot_hold() -> None:
    config = json.loads((TINY_128K_DIR / "config.json").read_text(encoding="utf-8"))
    rope = config["rope_parameters"]
    assert config["architectures"] == ["Phi3ForCausalLM"] and "auto_map" not in config
    assert rope["rope_type"] == "longrope" and config["vocab_size"] == 32064
    assert (config["original_max_position_embeddings"], config["max_position_embeddings"]) == (4096, 131072)
    assert config["sliding_window"] >= config["max_position_embeddings"], "Phi-3-mini-128k has no effective window"
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    half_head = config["hidden_size"] // config["num_attention_heads"] // 2
    for kind in ("short_factor", "long_factor"):
        factors = np.array(rope[kind], dtype=np.float64)
        assert len(factors) == half_head
        inexact = factors != factors.astype(np.float16).astype(np.float64)
        assert inexact[1:].all(), f"{kind} has values float16 holds exactly: {factors[~inexact]}"
    assert rope["short_factor"] != rope["long_factor"]
    assert (TINY_128K_DIR / "tokenizer.json").read_bytes() == (TINY_DIR / "tokenizer.json").read_bytes()


def _rotary_cos(model, n_tokens: int):
    """The cos table the rotary embedding hands to the attention layers in a forward of ``n_tokens``."""
    import torch

    seen = []
    hook = model.model.rotary_emb.register_forward_hook(lambda _m, _i, out: seen.append(out[0][0]))
    with torch.inference_mode():
        model.model(input_ids=torch.arange(n_tokens)[None] % 30000 + 100)
    hook.remove()
    return seen[0]


def _expected_cos(config, kind: str, n_tokens: int):
    import torch

    rope = config.rope_parameters
    dim = config.hidden_size // config.num_attention_heads
    inv_freq = 1.0 / (torch.tensor(rope[kind], dtype=torch.float64)
                      * rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = torch.arange(n_tokens, dtype=torch.float64)[:, None] * inv_freq[None]
    scale = math.sqrt(1 + math.log(config.max_position_embeddings / 4096) / math.log(4096))
    return (torch.cat([freqs, freqs], dim=-1).cos() * scale).float()


def test_tiny_128k_forward_switches_to_long_factors_past_4096_tokens() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_128K_DIR, dtype=torch.float32).eval()
    for n_tokens, used, other in ((5000, "long_factor", "short_factor"), (4096, "short_factor", "long_factor")):
        cos = _rotary_cos(model, n_tokens)
        want, not_want = _expected_cos(model.config, used, n_tokens), _expected_cos(model.config, other, n_tokens)
        assert torch.allclose(cos, want, atol=2e-3), f"{n_tokens} tokens did not use the {used}"
        assert (cos - not_want).abs().max() > 0.5, f"{n_tokens} tokens: short and long tables alike"
