"""The checks the Hub's ``/api/validate-yaml`` makes on a README's metadata, offline.

``huggingface_hub`` 1.21 cannot make them without the network (``RepoCard.validate`` asks the Hub):
a known licence id, a ``pipeline_tag``, a well-formed ``base_model`` and ``base_model_relation``. The model
cards (:mod:`pipeline.hub.model_card`) and the local Hub server (:mod:`pipeline.hub.endpoints`) use them;
``HfApi.create_commit`` still sends a card to the real Hub's validator before any upload.
"""

from __future__ import annotations

import re

# https://huggingface.co/docs/hub/repositories-licenses (license identifiers the Hub accepts)
HUB_LICENSES = frozenset(
    """
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++
osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2
llama3.3 llama4 gemma unknown other
""".split()
)
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
REPO_ID_RE = re.compile(r"^[\w.-]{1,96}/[\w.-]{1,96}$")


def metadata_problems(content: str) -> list[str]:
    """What the Hub's metadata validation would reject in a README's YAML header (empty list: valid)."""
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(content).data.to_dict()
    except (ValueError, TypeError) as err:  # YAML that is not a mapping, a malformed model-index
        return [str(err).splitlines()[0]]
    problems = []
    licence = data.get("license")
    if licence not in HUB_LICENSES:
        problems.append(
            f"license '{licence}' is not a Hub licence identifier (use 'other' with license_name/license_link)"
        )
    if licence == "other" and not (data.get("license_name") and data.get("license_link")):
        problems.append("license 'other' needs license_name and license_link")
    if not isinstance(data.get("tags", []), list) or not all(isinstance(t, str) for t in data.get("tags", [])):
        problems.append("tags must be a list of strings")
    if data.get("pipeline_tag") is None:
        problems.append("pipeline_tag is missing")
    bases = data.get("base_model")
    bases = [bases] if isinstance(bases, str) else (bases or [])
    problems += [f"base_model '{b}' is not a repo id (namespace/name)" for b in bases if not REPO_ID_RE.match(str(b))]
    relation = data.get("base_model_relation")
    if relation is not None and (relation not in BASE_MODEL_RELATIONS or not bases):
        problems.append(
            f"base_model_relation '{relation}' needs a base_model and one of {', '.join(BASE_MODEL_RELATIONS)}"
        )
    return problems
