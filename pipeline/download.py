"""Stage ``download``: fetch the Phi-3 checkpoint (hub, local folder or the embedded tiny model).

Only safetensors weights, configs and tokenizer files are taken, never pickled ``.bin``/``.pt``.
The hub token comes from ``HF_TOKEN`` or the user's ``hf auth login`` and is never printed.
Output: ``artifacts/model`` with ``manifest.json`` (repo, resolved revision, sha256 of every file).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

from pipeline.artifacts import ARTIFACTS, staged_dir, write_manifest
from pipeline.config import ModelConfig, load_params
from pipeline.errors import fail, run_main
from pipeline.log import say, step

OUT_DIR = ARTIFACTS / "model"
TINY_DIR = Path(__file__).parent / "assets" / "tiny_phi3"
MODEL_FILES = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
               "added_tokens.json", "*.jinja", "LICENSE"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _offline_hint(repo_id: str) -> str:
    return (f"cannot reach the model hub for '{repo_id}' (offline or blocked): check the network, "
            "set HF_ENDPOINT to a reachable mirror, or run the demo model with model=tiny")


def download_hub(cfg: ModelConfig, dest: Path) -> str:
    """Download ``cfg.repo_id`` at ``cfg.revision`` into ``dest``; return the resolved commit."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf_errors

    patterns = [p for p in (cfg.allow_patterns or MODEL_FILES) if not p.endswith(PICKLE_SUFFIXES)]
    try:
        with step(f"downloading {cfg.repo_id}@{cfg.revision[:12]} ({', '.join(patterns)})"):
            snapshot_download(cfg.repo_id, revision=cfg.revision, allow_patterns=patterns,
                              ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES], local_dir=dest)
        commit = HfApi().model_info(cfg.repo_id, revision=cfg.revision).sha or cfg.revision
    except hf_errors.GatedRepoError:
        fail(f"'{cfg.repo_id}' is gated: accept its licence on the hub page, then set HF_TOKEN or run `hf auth login`")
    except hf_errors.RevisionNotFoundError:
        fail(f"revision '{cfg.revision}' not found in '{cfg.repo_id}': fix model.revision (a commit sha or tag)")
    except hf_errors.RepositoryNotFoundError:
        fail(f"model '{cfg.repo_id}' not found or private: check model.repo_id, or set HF_TOKEN for a private repo")
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        fail(_offline_hint(cfg.repo_id))
    except hf_errors.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        fail(f"hub request for '{cfg.repo_id}' failed (HTTP {status}): check HF_TOKEN and HF_ENDPOINT")
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    return commit


def copy_folder(src: Path, dest: Path) -> None:
    """Copy the model files of a local folder (no pickles) into ``dest``."""
    if not src.is_dir():
        fail(f"model folder '{src}' does not exist: fix model.local_path")
    for path in sorted(src.iterdir()):
        if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in MODEL_FILES):
            shutil.copy2(path, dest / path.name)


def check_model_folder(folder: Path) -> dict:
    """Check that ``folder`` holds a loadable Phi-3 checkpoint; return its ``config.json``."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if "config.json" not in names:
        fail(f"{folder} has no config.json: it is not a Hugging Face model folder")
    if not any(n.endswith(".safetensors") for n in names):
        fail(f"{folder} has no .safetensors weights (pickled .bin/.pt are refused): convert them to safetensors first")
    if not names & {"tokenizer.json", "tokenizer.model"}:
        fail(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model): copy it from the base model")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "phi3":
        fail(f"model_type is '{config.get('model_type')}', not 'phi3': this pipeline converts Phi-3 family models")
    if config.get("auto_map"):
        say("config.json names remote code (auto_map); it is not run: transformers' built-in Phi-3 is used")
    return config


def run(cfg: ModelConfig, out_dir: Path = OUT_DIR) -> dict:
    """Fetch the model described by ``cfg`` into ``out_dir`` and write its manifest.

    Args:
        cfg: The ``model`` section of the configuration.
        out_dir: Destination folder (replaced only when the download is complete and checked).

    Returns:
        The manifest written to ``out_dir/manifest.json``.
    """
    with staged_dir(out_dir) as tmp:
        if cfg.source == "hub":
            revision = download_hub(cfg, tmp)
        elif cfg.source == "local":
            copy_folder(Path(cfg.local_path), tmp)
            revision = None
        else:
            copy_folder(TINY_DIR, tmp)
            revision = None
        config = check_model_folder(tmp)
        manifest = write_manifest(
            tmp, stage="download", model=cfg.name, source=cfg.source, repo_id=cfg.repo_id,
            revision=revision, local_path=cfg.local_path, license=cfg.license,
            architecture=config.get("architectures"), num_hidden_layers=config.get("num_hidden_layers"),
            hidden_size=config.get("hidden_size"),
        )
    say(f"model ready in {out_dir} ({len(manifest['files'])} files)")
    return manifest


def main() -> None:
    """DVC entry point: read ``params.yaml`` and download the configured model."""
    run(load_params().model)


if __name__ == "__main__":
    run_main(main)
