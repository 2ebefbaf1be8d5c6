"""export_openvino: early refusal of bad requests, and the IR/request consistency check."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, ModelConfig
from pipeline.core.workspace import Workspace
from pipeline.hub import download
from pipeline.openvino import export as export_openvino
from pipeline.openvino.config import OpenVinoVariantConfig
from pipeline.openvino.ir_inspect import check_matches_request, check_rotary


def test_group_size_100_on_hidden_256_fails_before_writing_anything(tmp_path: Path) -> None:
    model_dir = tmp_path / "artifacts" / "model"
    download.run(ModelConfig.preset("tiny"), model_dir)
    out_root = tmp_path / "artifacts" / "openvino"
    with pytest.raises(ConfigError) as exc:
        export_openvino.run("int4", OpenVinoVariantConfig.from_conf(group_size=100, ratio=1.0), Workspace(model=model_dir, out=out_root))
    assert "does not divide hidden_size 256" in str(exc.value) and "\n" not in str(exc.value)
    assert not out_root.exists() or not any(out_root.iterdir())


def _summary(int4: int, int8: int, fp: int, nncf: dict | None = None) -> dict:
    return {"weight_layers": {"int4": int4, "int8": int8, "float": fp, "total": int4 + int8 + fp},
            "nncf": nncf or {}}


def test_request_check_catches_skipped_quantization() -> None:
    assert check_matches_request(_summary(0, 0, 10), "int4")
    assert check_matches_request(_summary(4, 6, 0), "int4"), "int4 without NNCF rt_info must be flagged"
    assert not check_matches_request(_summary(4, 6, 0, {"weight_compression": {"mode": "int4_sym"}}), "int4")
    assert check_matches_request(_summary(2, 0, 8), "fp16")
    assert not check_matches_request(_summary(0, 0, 10), "fp16")
    assert check_matches_request(_summary(0, 5, 5), "int8")


def test_calibration_dataset_is_offline_text() -> None:
    cfg = OpenVinoVariantConfig.from_conf(awq=True, dataset="heldout", num_samples=8)
    qdict = export_openvino.quantization_dict(cfg)
    assert isinstance(qdict["dataset"], list) and len(qdict["dataset"]) == 8
    assert qdict["quant_method"] == "awq" and qdict["bits"] == 4


def _rotary(low: list[str], diff: float, angle_ops: int = 2) -> dict:
    check = {"max_abs_diff": diff, "tolerance": 1e-3}
    return {"rotary": {"angle_ops": angle_ops, "low_precision_constants": low,
                       "vs_transformers": {"positions": {"0-8191 (long factors)": check}, "max_abs_diff": diff}}}


def test_rotary_check_names_fp16_constants_and_cos_sin_drift() -> None:
    assert check_rotary(_rotary([], 1e-7)) == []
    assert check_rotary({"weight_layers": {}}) == [], "an IR summary without rotary inspection passes"
    [low] = check_rotary(_rotary(["rotary_emb/aten::to/Convert_compressed (f16)"], 1e-7))
    assert "1 fp16/bf16 constant(s) feed the rotary embedding, e.g. rotary_emb/aten::to/Convert_compressed" in low
    [drift] = check_rotary(_rotary([], 0.8))
    assert drift == "rotary cos/sin differ from transformers' by 0.8 at positions 0-8191 (long factors) (tolerance 0.001)"
    assert check_rotary(_rotary([], float("nan"))), "NaN tables fail"
    assert check_rotary(_rotary([], 0.0, angle_ops=0)) == ["no rotary embedding (Cos/Sin ops) found in the IR"]


def test_statistics_folder_appears_only_whole(tmp_path: Path) -> None:
    """A point that dies while NNCF collects statistics leaves nothing the next point would load."""
    from pipeline.openvino.export_base import statistics_once

    final = tmp_path / "nncf_statistics" / "k"
    with pytest.raises(RuntimeError), statistics_once(final) as private:
        private.mkdir()
        (private / "part.safetensors").write_bytes(b"half")
        raise RuntimeError("killed while collecting")
    assert list(final.parent.iterdir()) == []
    with statistics_once(final) as private:
        assert private != final and not private.exists()
        private.mkdir()
        (private / "statistics_metadata.json").write_text("{}", encoding="utf-8")
    assert (final / "statistics_metadata.json").is_file() and list(final.parent.iterdir()) == [final]
    with statistics_once(final) as reused:
        assert reused == final
    other = tmp_path / "nncf_statistics" / "j"
    with statistics_once(other) as private:  # two points collected at once: the first rename wins, the other drops
        private.mkdir()
        (private / "mine").write_text("late", encoding="utf-8")
        other.mkdir()
        (other / "theirs").write_text("first", encoding="utf-8")
    assert [p.name for p in other.iterdir()] == ["theirs"] and sorted(p.name for p in final.parent.iterdir()) == ["j", "k"]


@pytest.mark.parametrize("used", ["/home/ci/.cache/aipc/nncf/ab12", "C:\\Users\\O'Brien\\aipc\\nncf", "D:\\R&D <x>\\nncf"])
def test_the_statistics_folder_is_recorded_by_its_key_whatever_the_path(used: str, tmp_path: Path) -> None:
    """A point's .xml names its statistics by key, not by where this machine keeps them; a path that Python
    quotes with double quotes or that XML escapes (an apostrophe in a Windows user name, an ampersand) too."""
    from xml.sax.saxutils import escape

    from pipeline.openvino.export import stable_statistics_path

    cached = tmp_path / "0123456789abcdef"
    written = f"'statistics_path': {used!r}"
    for n, form in enumerate([written, escape(written), escape(written, {"'": "&apos;", '"': "&quot;"})]):
        xml = tmp_path / f"m{n}.xml"
        xml.write_text(f'<rt_info><weight_compression value="{{{form}, \'ratio\': 1.0}}" /></rt_info>', encoding="utf-8")
        assert stable_statistics_path(xml, used, cached), form
        text = xml.read_text(encoding="utf-8")
        assert "'statistics_path': 'nncf_statistics/0123456789abcdef', 'ratio': 1.0" in text
        assert used not in text and escape(used) not in text
    other = tmp_path / "other.xml"
    other.write_text("<rt_info />", encoding="utf-8")
    assert not stable_statistics_path(other, used, cached)
