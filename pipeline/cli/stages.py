"""``aipc`` commands that run one stage, or one tool of a family, on one artifact (see ``aipc --help``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.config import load_params


def cmd_download() -> None:
    """Download the configured model into artifacts/model (hub, local folder or tiny)."""
    from pipeline.hub import download

    download.run(load_params().model)


def cmd_reference() -> None:
    """Run the original PyTorch model once and record the reference outputs."""
    from pipeline.validation import reference

    reference.run(load_params().validate)


def cmd_devices() -> None:
    """List CPU/GPU/NPU as OpenVINO sees them here, with versions or the reason a device is absent."""
    from pipeline.validation import devices

    for name, status in devices.detect().items():
        detail = status.full_name if status.available else status.reason
        print(f"{name:4} {'yes' if status.available else 'no ':3} {detail}")


def cmd_chat(artifact: str, device: str = "CPU", prompt: str | None = None) -> None:
    """Chat with an exported IR (Phi-3 chat template, streamed); one-shot with --prompt.

    Args:
        artifact: An exported IR or ONNX folder, e.g. artifacts/openvino/int4.
        device: Device to run on (CPU, GPU, NPU; DML for an ONNX folder).
        prompt: Answer this one prompt and exit, instead of chatting.
    """
    from pipeline import chat

    chat.chat(Path(artifact), device, prompt)


def cmd_verify(artifact: str) -> None:
    """Check an artifact folder's files against its manifest and dvc.lock, as validate/chat/publish do first.

    Args:
        artifact: The artifact folder, e.g. artifacts/openvino/int4.
    """
    from pipeline.core.verify import stage_of, verify_folder

    manifest = verify_folder(Path(artifact))
    stage = stage_of(Path(artifact))
    print(
        f"ok: {artifact}: {len(manifest['files'])} files match {Path(artifact) / 'manifest.json'}"
        + (f" and dvc.lock's record of {stage}" if stage else "")
    )


def cmd_repair(stage: str) -> None:
    """Rebuild a stage's tampered output and every output linking the same bytes (bad cache entries dropped), verify.

    Args:
        stage: The DVC stage whose output was tampered with, e.g. export_openvino@int4.
    """
    from pipeline.core.repair import repair

    for folder in repair(stage):
        print(f"repaired: {folder} matches its manifest and dvc.lock")


def cmd_publish(argv: list[str]) -> None:
    """Publish validated artifacts (with a model card) to the Hugging Face Hub or a git remote; see `aipc publish --help`.

    Args:
        argv: ``aipc publish``'s own arguments (``aipc publish --help``).
    """
    from pipeline.hub import publish

    publish.main(argv)


def cmd_pull(repo: str, revision: str, dest: str, endpoint: str | None = None) -> None:
    """Download a published artifact at a pinned revision (tag, branch or commit) and check it against its manifest.

    Args:
        repo: The published repository, e.g. someone/phi3-int4.
        revision: The tag, branch or commit to pull.
        dest: Folder to download into.
        endpoint: Hub endpoint (default: HF_ENDPOINT or https://huggingface.co).
    """
    from pipeline.hub import publish

    manifest = publish.pull(repo, revision, Path(dest), endpoint=endpoint)
    print(f"{repo}@{manifest['commit']}: {len(manifest['files'])} files in {dest}, every sha256 matches the manifest")
