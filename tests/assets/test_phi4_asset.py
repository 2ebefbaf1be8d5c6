"""The embedded Phi-4-mini-shaped model (pipeline/assets/tiny_phi4): its shapes, its tokenizer, its README's hashes."""

from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.core.config import ASSETS_DIR

ASSET = ASSETS_DIR / "tiny_phi4"


def test_shapes_are_phi4_minis_where_kernels_care() -> None:
    config = json.loads((ASSET / "config.json").read_text(encoding="utf-8"))
    rope = config["rope_parameters"]
    head = config["hidden_size"] // config["num_attention_heads"]
    rotary = int(head * rope["partial_rotary_factor"])
    assert (head, rotary, rotary // 2) == (128, 96, 48)  # Phi-4-mini: 3072 / 24 heads, factor 0.75
    assert config["num_attention_heads"] > config["num_key_value_heads"]  # GQA
    assert rope["rope_type"] == "longrope" and len(rope["short_factor"]) == len(rope["long_factor"]) == rotary // 2
    assert (rope["original_max_position_embeddings"], config["max_position_embeddings"]) == (4096, 131072)
    assert config["tie_word_embeddings"] is True


def test_tokenizer_is_the_verified_phi3_one_not_a_claimed_phi4_one() -> None:
    assert (ASSET / "tokenizer.json").read_bytes() == (ASSETS_DIR / "tiny_phi3" / "tokenizer.json").read_bytes()
    assert "Tokenizer: the Phi-3 one, not Phi-4's" in (ASSET / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
def test_readme_lists_each_files_sha256(name: str) -> None:
    digest = hashlib.sha256((ASSET / name).read_bytes()).hexdigest()
    assert f"| `{name}` | {(ASSET / name).stat().st_size} | `{digest}` |" in (ASSET / "README.md").read_text(
        encoding="utf-8"
    )
