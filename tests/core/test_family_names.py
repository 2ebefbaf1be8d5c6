"""No module outside a family's package names that family (issue 31): adding a family touches its own subpackage,
its conf group and one registry entry.

Every module under ``pipeline/`` outside the family packages and ``pipeline/core/registry.py`` (the one place that
names them) is parsed with :mod:`ast`; a string constant that is a family's name, or starts with it followed by
``-``, ``.``, ``_``, ``@``, ``/`` or a space (``"onnx"``, ``"npu."``, ``"onnx-compat"``, ``"openvino_base"``), and
an import of ``pipeline.<family>`` fail the test with ``file:line``. Docstrings and comments that mention a family
in a sentence are not names the code acts on, and are not matched (they do not start with the name). The families
come from :data:`pipeline.core.registry.FAMILIES`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pipeline.core.registry import FAMILIES

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
REGISTRY = "core/registry.py"
# Strings that start like a family's name but are not the family: (file under pipeline/, string). Each is a name
# outside this project that happens to begin with a family's word, read by code every family shares.
ALLOWED = {
    # the Python distributions whose versions every manifest records (pip names, whatever the family)
    ("core/manifest.py", "openvino"),
    ("core/manifest.py", "openvino-genai"),
    ("core/manifest.py", "openvino-tokenizers"),
    # OpenVINO's own IR weight file: the shared memory-mapping helper pages in checkpoints and IRs alike
    ("core/memory.py", "openvino_model.bin"),
    # the Hub files a pull fetches: OpenVINO's raw-tensor weights, the only .bin files that are not pickles
    ("hub/download.py", "openvino_*.bin"),
}


def family_packages() -> set[str]:
    """The subpackages that hold families: each family's entry-point modules say where it lives."""
    return {f.export.split(".")[1] for f in FAMILIES.values()} | {f.validate.split(".")[1] for f in FAMILIES.values()}


def naming(names: list[str]) -> re.Pattern[str]:
    """A string constant that names one of ``names`` (the longest first, so ``npu_lib`` is not read as ``npu``)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"^({alternatives})([-._@/ ]|$)")


def scan(source: str, where: str, names: list[str], allowed: set[tuple[str, str]] = frozenset()) -> list[str]:
    """``where:line: ...`` for every string constant or import in ``source`` that names a family of ``names``."""
    pattern, found = naming(names), []
    imported = re.compile(rf"^pipeline\.({'|'.join(re.escape(n) for n in names)})(\.|$)")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.match(node.value):
            if (where, node.value) not in allowed:
                found.append(f"{where}:{node.lineno}: the string {node.value[:60]!r}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "pipeline":  # from pipeline import onnx
                modules = [f"pipeline.{a.name}" for a in node.names]
            found += [f"{where}:{node.lineno}: imports {m}" for m in modules if imported.match(m)]
    return found


def test_no_module_outside_a_family_names_it() -> None:
    names, packages = list(FAMILIES), family_packages() | {"assets"}  # assets: models and data, not code
    found = []
    for path in sorted(PIPELINE.rglob("*.py")):
        rel = path.relative_to(PIPELINE).as_posix()
        if rel.split("/")[0] in packages or rel == REGISTRY:
            continue
        found += scan(path.read_text(encoding="utf-8"), rel, names, ALLOWED)
    assert not found, "name the family through the registry (pipeline/core/registry.py) instead:\n" + "\n".join(found)


def test_every_allowed_string_is_still_there() -> None:
    """An allow-list entry whose string went away goes too, so the list stays as short as it can be."""
    for rel, text in sorted(ALLOWED):
        tree = ast.parse((PIPELINE / rel).read_text(encoding="utf-8"))
        assert any(isinstance(n, ast.Constant) and n.value == text for n in ast.walk(tree)), (rel, text)


def test_the_scan_catches_a_planted_name() -> None:
    names = list(FAMILIES)
    planted = (
        "import pipeline.onnx.compat\nfrom pipeline.openvino import lean\nfrom pipeline import winml\n"
        'A = "npu_lib"\nB = {"npu.": 1}\nC = f"onnx-compat {A}"\nD = "npu_lib/int4"\n'
        'E = "export_npu@int4"\nF = "the onnx folder"\nG = "openvinos"\n'
    )
    found = scan(planted, "x.py", names)
    assert sorted(int(line.split(":")[1]) for line in found) == [1, 2, 3, 4, 5, 6, 7], found
    assert "x.py:4: the string 'npu_lib'" in found
    assert scan('A = "openvino_model.bin"\n', "core/memory.py", names, ALLOWED) == []
    assert scan('A = "openvino_model.bin"\n', "core/other.py", names, ALLOWED) != []
