"""`aipc export FAMILY VARIANT` / `aipc validate FAMILY VARIANT`: generated from the registry, for every family.

The verbs run :func:`pipeline.core.stage.run_stage` as the DVC stage does; the per-family commands from before them
(``export-onnx``, ``validate-npu``, ...) and ``aipc validate VARIANT`` still work, as aliases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import COMMANDS, build_parser, families, main
from pipeline.core.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
# every command that ran a family's stage before the verbs, and the run_stage call it made (pipeline/cli/stages.py)
OLD_COMMANDS = {
    "export-openvino": ("openvino", "export", ["int4"]),
    "validate": ("openvino", "validate", ["int4"]),
    "export-onnx": ("onnx", "export", ["dml_int4"]),
    "validate-onnx": ("onnx", "validate", ["dml_int4"]),
    "export-npu": ("npu", "export", ["int4"]),
    "validate-npu": ("openvino", "validate", ["--npu", "int4"]),
    "export-npu-lib": ("npu_lib", "export", ["int4"]),
    "validate-npu-lib": ("npu_lib", "validate", ["int4"]),
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, list[str]]]:
    """The run_stage calls the commands make (none runs)."""
    made: list[tuple[str, str, list[str]]] = []
    monkeypatch.setattr(families, "run_stage", lambda family, which, argv: made.append((family, which, argv)))
    return made


@pytest.mark.parametrize("which", families.VERBS)
def test_every_family_has_both_verbs(which: str, calls: list) -> None:
    """Windows ML included: no family needs a command of its own."""
    assert "winml" in FAMILIES
    for name in FAMILIES:
        main([which, name, "v1"])
    assert calls == [(name, which, ["v1"]) for name in FAMILIES]


def test_validate_keeps_its_one_argument_form(calls: list) -> None:
    """`aipc validate int4` is the OpenVINO IR validation it always was; `aipc validate npu int4` the NPU family's."""
    main(["validate", "int4"])
    main(["validate", "npu", "int4"])
    main(["validate", "openvino", "int4"])
    assert calls == [("openvino", "validate", ["int4"]), ("npu", "validate", ["int4"]), ("openvino", "validate", ["int4"])]


def test_old_commands_are_aliases_of_the_verbs(calls: list) -> None:
    for name, (_, _, argv) in OLD_COMMANDS.items():
        assert name in COMMANDS, name
        main([name, argv[-1]])
    aliased = {n: (f, w) for n, (w, f) in families.ALIASES.items()} | {"validate": ("openvino", "validate")}
    assert calls == [(*aliased[name], argv[-1:]) for name, (_, _, argv) in OLD_COMMANDS.items()]


@pytest.mark.parametrize("name", OLD_COMMANDS)
def test_each_old_command_reaches_the_entry_point_it_reached_before(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old run_stage call and the verb's pick the same family, variant and entry point (``validate-npu`` ran the
    OpenVINO module with ``--npu``; the verb names the ``npu`` family). Nothing is loaded: the entry point is stubbed."""
    from pipeline.core import stage

    monkeypatch.chdir(ROOT)  # params.yaml
    reached: list[tuple[str, str, str]] = []
    monkeypatch.setattr(stage, "sweep_leftovers", lambda: None)
    monkeypatch.setattr("pipeline.core.verify.verify_for_use", lambda *a, **k: {})
    monkeypatch.setattr(stage, "entry", lambda fam, which: lambda n, *a, **k: reached.append((fam, which, n)))
    family, which, argv = OLD_COMMANDS[name]
    stage.run_stage(family, which, argv)
    verb, verb_family = families.ALIASES.get(name, ("validate", "openvino"))
    main([verb, verb_family, argv[-1]])
    assert len(reached) == 2 and reached[0] == reached[1], reached
    assert reached[0][0] == (verb_family if name != "validate-npu" else "npu")


def test_unknown_family_or_variant_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        main(["export", "nope", "int4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err == [f"error: unknown family 'nope': configured ones are {', '.join(FAMILIES)}"]
    with pytest.raises(SystemExit) as exc:
        main(["validate", "npu", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: unknown NPU variant 'nope': configured ones are int4")


def test_help_lists_every_family_from_the_registry() -> None:
    for which in families.VERBS:
        text = families.verb_parser(which).format_help()
        for family in FAMILIES.values():
            assert family.kind in text and getattr(family, f"{which}_stage") + "@<variant>" in text, family.name
    assert build_parser().parse_args(["export", "--help"]).argv == ["--help"]  # the verb's own --help, not aipc's


def test_exports_use_huge_pages_where_their_stage_does() -> None:
    """The families whose export stage restarts with huge pages are the ones the old EXPORTS set named."""
    assert {name for name in FAMILIES if families.huge_pages(name)} == {"openvino", "onnx", "npu"}
    values: dict[str, Any] = {"argv": ["onnx", "dml_int4"]}
    assert families.export_family("export", values) == "onnx"
    assert families.export_family("export-npu", {"variant": "int4"}) == "npu"
    assert families.export_family("validate", {"argv": ["onnx", "dml_int4"]}) is None
    assert families.export_family("validate-npu", {"variant": "int4"}) is None
