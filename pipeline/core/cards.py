"""What a model card says about one family's artifacts: the record a publishable family's package fills in.

:mod:`pipeline.hub.model_card` writes every card; the facts that differ by family (library, tags, devices, where
the tie of the embeddings was read back, how to load the folder) come from the family's ``card`` registry field, a
:class:`CardFormat` in the family's package. The hub and the families may not import each other, so the snippets'
shared pieces live here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PROMPT = "<|user|>Can you introduce yourself?<|end|>\\n<|assistant|>\\n"  # the prompt every card's snippet runs
OG_GENERATE = (  # onnxruntime-genai's generation loop, the same for every ONNX Runtime GenAI folder
    "tokenizer = og.Tokenizer(model)\nparams = og.GeneratorParams(model)\n"
    "params.set_search_options(max_length=256)\ngenerator = og.Generator(model, params)\n"
    f'generator.append_tokens(tokenizer.encode("{PROMPT}"))\n'
    "while not generator.is_done():\n    generator.generate_next_token()\n"
    "print(tokenizer.decode(generator.get_sequence(0)))"
)
OG_IMPORT = "import onnxruntime_genai as og\nfrom huggingface_hub import snapshot_download\n\n"


@dataclass(frozen=True)
class CardFormat:
    """One family's part of its model cards."""

    library: str  # the card's library_name
    format_tags: tuple[str, ...]
    kind_name: str  # "<weight format> <kind_name> of <source>" in the summary
    tie_holder: str  # where the manifest's tied_embeddings was read back from
    # manifest parameters -> the card's device tags
    devices: Callable[[dict[str, Any]], list[str]]
    # (manifest, the snapshot_download line pinning the repo) -> (the pip install line, the Python snippet)
    usage: Callable[[dict[str, Any], str], tuple[str, str]]
    nncf: bool = True  # an int4/int8 artifact was compressed by NNCF (the nncf tag)
    # manifest -> more sentences for the parameters section (each starting "\n\n"), or None
    parameters_note: Callable[[dict[str, Any]], str] | None = None
