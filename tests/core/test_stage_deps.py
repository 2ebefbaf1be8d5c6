"""dvc.yaml's ``.py`` deps are each stage's import closure (pipeline/core/stage_deps.py, issue 31 item 3)."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.core import stage_deps
from pipeline.core.errors import StageError

ROOT = Path(__file__).resolve().parents[2]
# validate_winml's deps before issue 31: it imports validation/genai_runner.py (the speed-run rule) without listing it
OLD_VALIDATE_WINML = """\
stages:
  validate_winml:
    foreach: ${winml}
    do:
      cmd: python -m pipeline.winml.validate ${key}
      deps:
        - pipeline/winml/validate.py
        - pipeline/winml/runtime.py
        - pipeline/core/verify.py
        - pipeline/validation/evidence.py
        - pipeline/validation/matrix.py
        - pipeline/validation/records.py
        - pipeline/validation/fidelity.py
        - artifacts/winml/${key}
        - artifacts/reference
      params:
        - validate.max_new_tokens
"""


def committed() -> str:
    with open(ROOT / "dvc.yaml", encoding="utf-8", newline="") as handle:
        return handle.read()


def test_committed_dvc_yaml_is_what_write_gives() -> None:
    """`aipc stages --write` would change nothing in the committed dvc.yaml."""
    text = committed()
    wanted, new = stage_deps.generate(ROOT, text)
    differ = stage_deps.changes(yaml.safe_load(text)["stages"], wanted)
    summary = {stage: f"+{missing} -{extra}" for stage, (missing, extra) in differ.items()}
    assert new == text, f"run `aipc stages --write`: {summary or 'the order of .py deps differs'}"


def test_every_stage_lists_its_whole_closure() -> None:
    """No stage runs project code it does not depend on (a change to it would leave a stale result)."""
    stages = yaml.safe_load(committed())["stages"]
    wanted = stage_deps.wanted_deps(ROOT, stages, None)
    listed = stage_deps.listed_code(stages)
    uncovered = {name: sorted(set(files) - listed[name]) for name, files in wanted.items()}
    assert not any(uncovered.values()), {k: v for k, v in uncovered.items() if v}


def test_the_old_validate_winml_is_caught_and_fixed_by_write() -> None:
    """Before issue 31 validate_winml missed genai_runner.py, the speed-run rule: the check names it, write adds it."""
    stages = yaml.safe_load(OLD_VALIDATE_WINML)["stages"]
    wanted = stage_deps.wanted_deps(ROOT, stages, None)
    missing, extra = stage_deps.changes(stages, wanted)["validate_winml"]
    assert "pipeline/validation/genai_runner.py" in missing and not extra
    fixed = yaml.safe_load(stage_deps.rewrite(OLD_VALIDATE_WINML, wanted))["stages"]["validate_winml"]["do"]["deps"]
    assert fixed[0] == "pipeline/winml/validate.py" and "pipeline/validation/genai_runner.py" in fixed
    assert fixed[-2:] == ["artifacts/winml/${key}", "artifacts/reference"]


def test_rewrite_touches_only_code_lines() -> None:
    """Comments, data deps and their order, CRLF and compact lists stay; a kept .py line keeps its comment."""
    text = (
        "# header\r\nstages:\r\n  s:\r\n    cmd: python -m pipeline.a.b\r\n    deps:\r\n"
        "    - data/in   # first\r\n    - pipeline/a/b.py  # the stage\r\n    - pipeline/old.py\r\n"
        "    # a note\r\n    - data/more\r\n    params:\r\n    - x\r\n"
    )
    new = stage_deps.rewrite(text, {"s": ["pipeline/a/b.py", "pipeline/c.py"]})
    assert new == text.replace("    - pipeline/old.py\r\n", "    - pipeline/c.py\r\n")
    same = stage_deps.rewrite(committed(), stage_deps.wanted_deps(ROOT, yaml.safe_load(committed())["stages"], None))
    code = re.compile(r"^\s*- pipeline/\S+\.py\b")
    other_lines = [[x for x in text.splitlines() if not code.match(x)] for text in (same, committed())]
    assert other_lines[0] == other_lines[1]


def test_closure_follows_function_relative_and_package_imports(tmp_path: Path) -> None:
    """Imports inside functions, relative ones, a name from a package's __init__.py; a docstring-only __init__ is out."""
    files = {
        "pipeline/__init__.py": '"""Doc."""\n__version__ = "1"\n',
        "pipeline/a/__init__.py": '"""Doc."""\n',
        "pipeline/a/stage.py": "from . import sib\ndef f():\n    from pipeline.b import NAME\n    import pipeline.c.d\n",
        "pipeline/a/sib.py": "from ..c.d import x\n",
        "pipeline/b/__init__.py": "NAME = 1\n",
        "pipeline/c/__init__.py": "from pipeline.c import e\n",
        "pipeline/c/d.py": "",
        "pipeline/c/e.py": "",
        "pipeline/unused.py": "",
    }
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    found = stage_deps.closure(tmp_path, "pipeline/a/stage.py", {})
    assert found == set(files) - {"pipeline/__init__.py", "pipeline/a/__init__.py", "pipeline/unused.py"}


def test_code_run_in_other_processes_is_in_the_closure() -> None:
    """The NPU-library worker (run by path in its own venv) and its helpers; the runner the ONNX cells run."""
    npu_lib = stage_deps.closure(ROOT, "pipeline/npu_lib/validate.py", stage_deps.edges(ROOT))
    assert {"pipeline/npu_lib/worker.py", "pipeline/npu_lib/worker_measure.py"} <= npu_lib
    onnx = stage_deps.closure(ROOT, "pipeline/onnx/export.py", stage_deps.edges(ROOT))
    assert "pipeline/onnx/config.py" in onnx  # the registry imports every family's config by name


def test_a_templated_command_module_is_the_union_over_variants() -> None:
    """``python -m pipeline.${item.pkg}.export``: one module per variant of the params section."""
    spec = {"foreach": "${fam}", "do": {"cmd": "python -m pipeline.${item.pkg}.export ${key}"}}
    params = {"fam": {"a": {"pkg": "onnx"}, "b": {"pkg": "winml"}, "c": {"pkg": "onnx"}}}
    assert stage_deps.stage_modules("s", spec, params) == ["pipeline.onnx.export", "pipeline.winml.export"]
    with pytest.raises(StageError, match="stage s does not run `python -m pipeline"):
        stage_deps.stage_modules("s", {"cmd": "dvc exp show"}, None)


def test_every_import_or_launch_by_a_computed_name_is_known() -> None:
    """A new import_module / run-by-path site must be added to DYNAMIC_SITES or its family's stage_deps (and an edge, if it runs our code)."""
    sites = set()
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = node.func if isinstance(node, ast.Call) else None
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if (
                name in ("import_module", "__import__", "run_path", "run_module")
                or (isinstance(node, ast.Attribute) and node.attr == "__file__")
                or re.fullmatch(r"[\w/]+\.py|pipeline(\.\w+)+(:\w+)?", text)
            ):
                sites.add(path.relative_to(ROOT).as_posix())
    assert sites - {"pipeline/core/stage_deps.py"} == set(stage_deps.family_deps()[1])


def test_aipc_stages_check_fails_in_one_line_then_write_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a stale copy `aipc stages --check` exits 2 with one line naming the stage; --write makes it pass."""
    from pipeline.cli import main

    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    (tmp_path / "dvc.yaml").write_text(OLD_VALIDATE_WINML, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["stages", "--check"])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and "validate_winml +" in err
    main(["stages", "--write"])
    main(["stages", "--check"])
    wrote, ok = capsys.readouterr().out.splitlines()
    assert wrote.startswith("wrote dvc.yaml") and ok.startswith("ok: the .py deps of all 1 stages")
    assert "- pipeline/validation/genai_runner.py" in (tmp_path / "dvc.yaml").read_text(encoding="utf-8")
