"""Stage ``download``: fetch the Phi-3 checkpoint (hub, local folder or an embedded tiny model).

Only safetensors weights, configs and tokenizer files are taken, never pickled ``.bin``/``.pt``.
The hub token comes from ``HF_TOKEN`` or the user's ``hf auth login`` and is never printed.
Output: ``artifacts/model`` with ``manifest.json`` (repo, resolved revision, sha256 of every file).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import ARTIFACTS, remove_tree, staged_dir
from pipeline.core.config import ASSETS_DIR, ModelConfig, load_params  # ASSETS_DIR/<name>: EMBEDDED_ASSETS
from pipeline.core.errors import fail, run_main
from pipeline.core.log import say, step
from pipeline.core.manifest import CHECKPOINT_SIDE_FILES, write_manifest
from pipeline.hub.resume import resumable

OUT_DIR = ARTIFACTS / "model"
MODEL_FILES = [
    "*.safetensors",
    "*.safetensors.index.json",
    *CHECKPOINT_SIDE_FILES,
    "*.jinja",
    "LICENSE",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# A published artifact (aipc publish): OpenVINO IR / ONNX GenAI files, card and manifest. OpenVINO's
# weights are raw tensors in openvino_*.bin, not pickles; any other .bin is never fetched.
ARTIFACT_FILES = [
    "*.xml",
    "openvino_*.bin",
    "*.json",
    "*.onnx",
    "*.onnx.data",
    "*.blob",
    "*.jinja",
    "*.md",
    "tokenizer.model",
    "LICENSE",
]


def _offline_hint(repo_id: str) -> str:
    return (
        f"cannot reach the model hub for '{repo_id}' (offline or blocked): check the network, "
        "set HF_ENDPOINT to a reachable mirror, or run the demo model with model=tiny"
    )


def fetch_snapshot(
    repo_id: str,
    revision: str,
    dest: Path,
    allow_patterns: list[str],
    ignore_patterns: list[str] | None = None,
    endpoint: str | None = None,
) -> str:
    """Download ``repo_id`` at ``revision`` (only ``allow_patterns``) into ``dest``; return the resolved commit.

    Every hub failure becomes one line that says what to do (offline, gated, missing repo/revision, HTTP).
    """
    import httpx
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf_errors

    try:
        with step(f"downloading {repo_id}@{revision[:12]} ({', '.join(allow_patterns)})"):
            # first: offline, snapshot_download would hand back a kept partial folder (resume.py) as if complete
            commit = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision).sha or revision
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=allow_patterns,
                ignore_patterns=ignore_patterns,
                local_dir=dest,
                endpoint=endpoint,
            )
    except hf_errors.GatedRepoError:
        fail(f"'{repo_id}' is gated: accept its licence on the hub page, then set HF_TOKEN or run `hf auth login`")
    except hf_errors.RevisionNotFoundError:
        fail(f"revision '{revision}' not found in '{repo_id}': fix the revision (a commit sha or tag)")
    except hf_errors.RepositoryNotFoundError:
        fail(f"model '{repo_id}' not found or private: check the repo id, or set HF_TOKEN for a private repo")
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, httpx.TransportError):
        fail(_offline_hint(repo_id))
    except hf_errors.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        fail(f"hub request for '{repo_id}' failed (HTTP {status}): check HF_TOKEN and HF_ENDPOINT")
    remove_tree(dest / ".cache")  # huggingface_hub's download metadata
    return commit


def download_hub(cfg: ModelConfig, dest: Path) -> str:
    """Download ``cfg.repo_id`` at ``cfg.revision`` into ``dest`` (no pickles; resumable); return the resolved commit."""
    if not cfg.repo_id or not cfg.revision:  # ModelConfig refuses this at load; the check narrows the types
        fail("model.repo_id and model.revision must be set for source=hub")
    patterns = [p for p in (cfg.allow_patterns or MODEL_FILES) if not p.endswith(PICKLE_SUFFIXES)]
    with resumable(cfg.repo_id, cfg.revision, dest) as partial:  # an interrupted run's files are kept there
        return fetch_snapshot(cfg.repo_id, cfg.revision, partial, patterns, [f"*{s}" for s in PICKLE_SUFFIXES])


def model_files(src: Path) -> list[Path]:
    """The files of a local model folder that the stage copies (weights, configs, tokenizer; no pickles)."""
    return [p for p in sorted(src.iterdir()) if p.is_file() and any(fnmatch.fnmatch(p.name, m) for m in MODEL_FILES)]


def copy_folder(src: Path, dest: Path) -> None:
    """Copy the model files of a local folder (no pickles) into ``dest`` (keeping their times: :func:`local_changes`)."""
    if not src.is_dir():
        fail(f"model folder '{src}' does not exist: fix model.local_path")
    for path in model_files(src):
        shutil.copy2(path, dest / path.name)


def local_changes(cfg: ModelConfig, out_dir: Path = OUT_DIR) -> list[str]:
    """The files of ``model.local_path`` that differ from their copy in ``out_dir`` (by its manifest's sha256).

    dvc.yaml cannot depend on the folder (other presets have no ``local_path``), so ``aipc repro`` asks this
    first. Every file is hashed through the digest cache, which reads only files whose identity changed (and
    sees a byte flip whose time was put back, by the change time: POSIX ctime, NTFS ChangeTime).
    """
    from pipeline.core.hashes import file_digests

    src, manifest_file = Path(cfg.local_path or "."), out_dir / "manifest.json"
    if cfg.source != "local" or not cfg.local_path or not src.is_dir() or not manifest_file.is_file():
        return []
    with contextlib.suppress(ValueError):  # a damaged manifest: DVC sees the output changed, `aipc verify` says how
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        recorded = {name: entry.get("sha256") for name, entry in (manifest.get("files") or {}).items()}
        if manifest.get("local_path") == cfg.local_path:  # else DVC reruns the stage: model params changed
            files = {p.name: p for p in model_files(src)}
            suspects = [p for n, p in files.items() if n in recorded]
            digests = file_digests(suspects)
            changed = {p.name for p in suspects if digests[p][1] != recorded[p.name]}
            return sorted(changed | (set(files) ^ set(recorded)))
    return []


SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
    "C64": 8,
}
MAX_HEADER = 100 * 2**20  # the safetensors format's own limit on the JSON header


def check_safetensors(path: Path, shown: str) -> int:
    """Check a safetensors file's header and sizes without loading it; return its number of tensors.

    The format: an 8-byte little-endian header length, a JSON header (dtype, shape, data_offsets per
    tensor), then the data, exactly as long as the offsets say. ``shown`` names the file for the user.
    """
    again = "download or copy it again"
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else -1
        if not 0 < length <= min(size - 8, MAX_HEADER):
            fail(f"{shown} is truncated or not a safetensors file ({size} bytes, header length {length}): {again}")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            fail(f"{shown} is corrupt: its safetensors header is not valid JSON: {again}")
    end, tensors = 0, 0
    entries: list[tuple[str, Any]] = list(header.items()) if isinstance(header, dict) else [("?", None)]
    for name, info in entries:
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            width = SAFETENSORS_DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            fail(f"{shown} is corrupt: tensor '{name}' has no valid dtype/shape/data_offsets in its header: {again}")
        if not 0 <= begin <= stop or stop - begin != count * width:
            fail(
                f"{shown} is corrupt: tensor '{name}' spans {stop - begin} bytes, its shape needs {count * width}: {again}"
            )
        end, tensors = max(end, stop), tensors + 1
    if 8 + length + end != size:
        state = "truncated" if size < 8 + length + end else "longer than its header says"
        fail(f"{shown} is {state}: {size} bytes where its header describes {8 + length + end}: {again}")
    return tensors


def check_model_folder(folder: Path, shown: str | None = None) -> dict:
    """Check that ``folder`` holds a loadable Phi-3 checkpoint; return its ``config.json``.

    Args:
        folder: The folder to check (the stage's temporary copy).
        shown: How errors name it: the user's folder, the hub repo, or the embedded asset (default ``folder``).
    """
    shown = shown or str(folder)
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if "config.json" not in names:
        fail(f"{shown} has no config.json: it is not a Hugging Face model folder")
    if not any(n.endswith(".safetensors") for n in names):
        fail(f"{shown} has no .safetensors weights (pickled .bin/.pt are refused): convert them to safetensors first")
    if not names & {"tokenizer.json", "tokenizer.model"}:
        fail(f"{shown} has no tokenizer (tokenizer.json or tokenizer.model): copy it from the base model")
    for name in sorted(n for n in names if n.endswith(".safetensors.index.json")):
        weight_map = json.loads((folder / name).read_text(encoding="utf-8")).get("weight_map", {})
        missing = sorted(set(weight_map.values()) - names)
        if missing:
            fail(f"{shown}/{missing[0]} is missing, but {name} maps weights to it: download or copy it again")
    for name in sorted(n for n in names if n.endswith(".safetensors")):
        check_safetensors(folder / name, f"{shown}/{name}")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError:
        fail(f"{shown}/config.json is not valid JSON: download or copy it again")
    if config.get("model_type") != "phi3":
        fail(f"model_type is '{config.get('model_type')}', not 'phi3': this pipeline converts Phi-3 family models")
    if config.get("auto_map"):
        say("config.json names remote code (auto_map); it is not run: transformers' built-in Phi-3 is used")
    return config


def source_name(cfg: ModelConfig) -> str:
    """How errors name the model's source: the user's folder, the hub repo at its revision, or the embedded asset."""
    if cfg.source == "local":
        return str(cfg.local_path)
    if cfg.source == "hub":
        return f"{cfg.repo_id}@{cfg.revision}"
    return str(ASSETS_DIR / cfg.asset)


def run(cfg: ModelConfig, out_dir: Path = OUT_DIR) -> dict:
    """Fetch the model described by ``cfg`` into ``out_dir`` and write its manifest.

    Args:
        cfg: The ``model`` section of the configuration.
        out_dir: Destination folder (replaced only when the download is complete and checked).

    Returns:
        The manifest written to ``out_dir/manifest.json``.
    """
    if cfg.source == "local" and (not cfg.local_path or cfg.local_path == "???"):  # "???": Hydra's unset value
        fail(
            "model.local_path is not set for model=local: point it at your model folder, e.g. "
            "`aipc compose model=local model.local_path=/path/to/phi3` or `dvc exp run -S model.local_path=...`"
        )
    with staged_dir(out_dir) as tmp:
        if cfg.source == "hub":
            revision = download_hub(cfg, tmp)
        elif cfg.source == "local":
            assert cfg.local_path  # refused above when unset
            copy_folder(Path(cfg.local_path), tmp)

            revision = None
        else:
            copy_folder(ASSETS_DIR / cfg.asset, tmp)
            revision = None
        config = check_model_folder(tmp, source_name(cfg))
        manifest = write_manifest(
            tmp,
            stage="download",
            model=cfg.name,
            source=cfg.source,
            asset=cfg.asset if cfg.source == "tiny" else None,
            repo_id=cfg.repo_id,
            revision=revision,
            local_path=cfg.local_path,
            license=cfg.license,
            architecture=config.get("architectures"),
            num_hidden_layers=config.get("num_hidden_layers"),
            hidden_size=config.get("hidden_size"),
        )
    say(f"model ready in {out_dir} ({len(manifest['files'])} files)")
    return manifest


def main() -> None:
    """DVC entry point: read ``params.yaml`` and download the configured model."""
    run(load_params().model)


if __name__ == "__main__":
    run_main(main)
