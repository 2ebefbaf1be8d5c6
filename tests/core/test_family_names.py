"""No module outside a family's package names that family (issue 31): adding a family touches its own subpackage,
its conf group and one registry entry.

Every module under ``pipeline/`` outside the family packages and ``pipeline/core/registry.py`` (the one place that
names them) is parsed with :mod:`ast`; a string constant in which a family's name appears as a token (delimited by
anything but a letter or digit: ``"onnx"``, ``"npu."``, ``"validate_onnx"``, ``"openvino=phi4-mini"``,
``"artifacts/npu_lib/x"``), and an import of ``pipeline.<family>``, fail the test with ``file:line``. Case counts:
``"OpenVINO"`` and ``"NPU"`` are a product and a device, not the family. Docstrings (module, class, function) are
prose and are skipped; every other string counts, f-string parts included. Names from outside the project that
contain a family's word are taken out before matching (:data:`NOT_FAMILIES`); :data:`ALLOWED` lists what is left.
The families come from :data:`pipeline.core.registry.FAMILIES`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pipeline.core.registry import FAMILIES

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
REGISTRY = "core/registry.py"
# Libraries and file formats whose names contain a family's word: removed from a string before it is matched. Each
# is a name outside this project, read whatever the family (pip distributions and import names of OpenVINO's and
# ONNX Runtime's GenAI and tokenizer packages, ONNX's model and external-data files as globs).
NOT_FAMILIES = re.compile(
    r"openvino[-_](genai|tokenizers)|onnxruntime[-_]genai|\*\.onnx(\.data)?(?![A-Za-z0-9])", re.ASCII
)
# What is still left: (file under pipeline/, string). Keep it short, each with its reason.
ALLOWED = {
    # the Python distribution whose version every manifest records (the pip name, whatever the family)
    ("core/manifest.py", "openvino"),
    # OpenVINO's own IR weight file: the shared memory-mapping helper pages in checkpoints and IRs alike
    ("core/memory.py", "openvino_model.bin"),
    # the Hub files a pull fetches: OpenVINO's raw-tensor weights, the only .bin files that are not pickles
    ("hub/download.py", "openvino_*.bin"),
    # examples in help and error text, for the reader: the code acts on none of them
    (
        "cli/convert.py",
        "examples:\n  aipc convert tiny --to openvino-int4 --to npu-int4\n"
        "  aipc convert D:/models/my-phi3 --to onnx-cpu_int4 openvino.int4.ratio=0.8\n"
        "`aipc presets` lists the models, and the families and variants that make the targets.",
    ),
    ("cli/convert.py", "Hydra overrides, e.g. openvino.int4.ratio=0.8"),
    ("cli/convert.py", "pass the checkpoint folder itself, e.g. `aipc convert D:/models/my-phi3 --to openvino-int4`"),
    ("cli/convert.py", "name at least one target with --to, e.g. --to openvino-int4; valid ones: "),
    ("cli/project.py", "; leave out single variants instead, e.g. `aipc compose ~onnx.cpu_int4`"),
    ("core/config.py", "sweep.grid must list at least one parameter, e.g. openvino.int4.group_size: [64, 128]"),
    ("hub/publish.py", "e.g. openvino/int4 npu/int4 onnx/dml_int4"),
}


def family_packages() -> set[str]:
    """The subpackages that hold families: each family's entry-point modules say where it lives."""
    return {f.export.split(".")[1] for f in FAMILIES.values()} | {f.validate.split(".")[1] for f in FAMILIES.values()}


def naming(names: list[str]) -> re.Pattern[str]:
    """A family's name as a token of a string (the longest first, so ``npu_lib`` is reported as itself)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])({alternatives})(?![A-Za-z0-9])")


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the module, class and function docstrings' nodes in ``tree`` (prose, not names the code acts on)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def scan(source: str, where: str, names: list[str], allowed: set[tuple[str, str]] = frozenset()) -> list[str]:
    """``where:line: ...`` for every string constant or import in ``source`` that names a family of ``names``."""
    pattern, found, tree = naming(names), [], ast.parse(source)
    imported = re.compile(rf"^pipeline\.({'|'.join(re.escape(n) for n in names)})(\.|$)")
    prose = docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            if pattern.search(NOT_FAMILIES.sub(" ", node.value)) and (where, node.value) not in allowed:
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
        'E = "export_npu@int4"\nF = "the onnx folder"\nG = "validate_onnx"\nH = ["openvino=phi4-mini"]\n'
        'I = "artifacts/npu_lib/x"\nJ = f"{A} -> export_winml"\nK = "validate_npu_lib_whole_16bit"\n'
        'L = "openvinos"\nM = "onnxruntime"\nN = "import openvino_genai"\nO = "OpenVINO IR on the NPU"\n'
        'P = "openvino_tokenizers, onnxruntime_genai"\nQ = "*.onnx.data"\nR = "*.onnx"\n'
        'def f():\n    """Docstrings are prose: the onnx family, validate_npu."""\n    return "x"\n'
    )
    found = scan(planted, "x.py", names)
    assert sorted(int(line.split(":")[1]) for line in found) == list(range(1, 15)), found
    assert "x.py:4: the string 'npu_lib'" in found
    assert scan('A = "openvino_model.bin"\n', "core/memory.py", names, ALLOWED) == []
    assert scan('A = "openvino_model.bin"\n', "core/other.py", names, ALLOWED) != []
    assert scan('A = "openvino_genai and npu"\n', "x.py", names) != []  # a library's name hides only itself
