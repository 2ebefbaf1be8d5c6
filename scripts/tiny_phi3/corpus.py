"""Training text: the standard library's docstrings plus Phi-3 chat samples, a held-out split, the token stream.

The corpus depends on the interpreter that runs the script (its stdlib docstrings); the
held-out split is a deterministic hash of each document's dotted name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import pkgutil
import sys
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import EOT_ID, INTRO_QUESTIONS, SYSTEM_PROMPT, log

INTRO_ANSWER = (
    "Hello! I am Tiny Phi-3, a very small test model that uses the Phi-3 tokenizer. "
    "I was trained for a few minutes on Python docstrings."
)
INTRO_COPIES = 48  # copies of the main introduction sample in the training stream
SKIP_MODULES = frozenset({
    "antigravity", "this",  # side effects on import (browser, printing)
    "idlelib", "tkinter", "turtle", "turtledemo",  # GUI
    "distutils", "lib2to3", "ensurepip", "venv", "pydoc_data", "test", "encodings",
})
MIN_DOC_CHARS = 40
HELDOUT_MODULUS = 20  # documents whose key hashes to 0 mod 20 (~5 %) are held out
HELDOUT_MAX_BYTES = 50_000


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
