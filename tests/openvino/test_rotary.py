"""Rotary-embedding constants stay f32 in every IR, and the IR's cos/sin match transformers' (pipeline/openvino/rotary.py).

The test model is a tiny LongRoPE + GQA Phi-3 stored in bf16 (like Phi-3-mini-128k), with rope factors
that fp16 cannot hold exactly (1.02, 1.03, ...) and ``original_max_position_embeddings`` 64, so that
the long factors are reached cheaply.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.workspace import Workspace
from pipeline.core.config import ASSETS_DIR, ModelConfig
from pipeline.openvino.config import NpuVariantConfig, OpenVinoVariantConfig
from pipeline.core.errors import StageError
from pipeline.hub import download
from pipeline.openvino import export as export_openvino
from pipeline.openvino import export_base as export_openvino_base
from pipeline.openvino import export_npu, rotary, rotary_graph
from pipeline.openvino.ir_inspect import check_rotary, inspect_ir
from pipeline.validation import devices

TINY_ASSET = ASSETS_DIR / "tiny_phi3"  # tokenizer files for the inline model
HEAD_DIM = 32
SHORT = [round(1.02 + 0.01 * i, 2) for i in range(HEAD_DIM // 2)]
LONG = [round(1.05 + 0.37 * i, 2) for i in range(HEAD_DIM // 2)]
VARIANTS = {
    "fp16": OpenVinoVariantConfig.from_conf(weight_format="fp16"),  # lean: bf16 trace, in-place bf16 -> fp16 rewrite
    "fp16-plain": OpenVinoVariantConfig.from_conf(weight_format="fp16"),  # optimum's own path: compress_to_fp16 on save
    "int8": OpenVinoVariantConfig.from_conf(weight_format="int8", group_size=-1),
    "int4": OpenVinoVariantConfig.from_conf(weight_format="int4", group_size=32, ratio=1.0),
}


def longrope_phi3(dest: Path) -> Path:
    """Download-stage folder of a random 2-layer LongRoPE + GQA Phi-3 in bf16."""
    import torch
    import transformers

    src = dest.parent / f"{dest.name}-src"
    config = transformers.Phi3Config(
        vocab_size=32064, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=64,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": SHORT, "long_factor": LONG},
        pad_token_id=32000, eos_token_id=32000, bos_token_id=1, sliding_window=2047, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.Phi3ForCausalLM(config).to(torch.bfloat16).save_pretrained(src)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy2(TINY_ASSET / name, src / name)
    download.run(ModelConfig.preset("local", local_path=str(src)), dest)
    return dest


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The LongRoPE model and its base, fp16 (lean and plain), int8, int4 and NPU IR folders."""
    root = tmp_path_factory.mktemp("rotary")
    model = longrope_phi3(root / "model")
    export_openvino_base.run(model, root / "base")
    folders = {"model": model, "base": root / "base"}
    for name, cfg in VARIANTS.items():
        base = None if name.startswith("fp16") else root / "base"
        export_openvino.run(name, cfg, Workspace(model=model, out=root / "out"), base_dir=base, lean=name != "fp16-plain")
        folders[name] = root / "out" / name

    class NoNpu:  # devices.detect on a machine without an NPU: the blob is deferred
        available_devices = ["CPU"]

    export_npu.run("int4", NpuVariantConfig.from_conf(), Workspace(model=model, out=root / "npu"), status=devices.detect(NoNpu()),
                   base_dir=root / "base")
    folders["npu"] = root / "npu" / "int4"
    return folders


def rotary_constants(xml: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Float constants of the IR's rotary subgraph: name -> (element type, values)."""
    import openvino as ov

    nodes, found = rotary.rotary_of_model(ov.Core().read_model(xml))
    return {nodes[k].get_friendly_name(): (rotary.element_type(nodes[k]), nodes[k].get_data().copy())
            for k in found.constants if rotary.element_type(nodes[k]) in rotary.FLOAT_TYPES}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["base", *VARIANTS, "npu"])
def test_rotary_constants_are_f32_and_equal_transformers(exports: dict[str, Path], variant: str) -> None:
    folder = exports[variant]
    consts = rotary_constants(folder / "openvino_model.xml")
    assert consts and {t for t, _ in consts.values()} == {"f32"}, consts
    values = [v.ravel() for _, v in consts.values()]
    for factors in (SHORT, LONG):  # bit-exact: the f32 that transformers computes with
        assert any(np.array_equal(v, np.float32(factors)) for v in values), f"{factors} not found in {variant}"
    theta_powers = 10000.0 ** (np.arange(0, HEAD_DIM, 2, dtype=np.float32) / HEAD_DIM)
    assert any(v.shape == theta_powers.shape and np.allclose(v, theta_powers, rtol=1e-6) for v in values)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    rope = manifest["rotary_embedding"]
    assert rope["low_precision_constants"] == [] and rope["angle_ops"] == 2
    checked = rope["vs_transformers"]["positions"]
    assert any("long factors" in label for label in checked) and any("short factors" in label for label in checked)
    assert rope["vs_transformers"]["max_abs_diff"] < 1e-5, checked


@pytest.mark.slow
def test_rotary_nodes_carry_keep_precision_mark(exports: dict[str, Path]) -> None:
    """The mark that made compress_to_fp16 skip them is in every IR, for the GPU/NPU plugins to read."""
    import openvino as ov

    for variant in ("base", *VARIANTS, "npu"):
        model = ov.Core().read_model(exports[variant] / "openvino_model.xml")
        nodes, found = rotary.rotary_of_model(model)
        unmarked = [nodes[k].get_friendly_name() for k in found.nodes | found.constants
                    if rotary.PRECISE_KEY not in nodes[k].get_rt_info()]
        assert found.nodes and unmarked == [], (variant, unmarked)
        layers, kinds, inputs = rotary_graph.xml_graph(ET.parse(exports[variant] / "openvino_model.xml").getroot())
        from_xml = {layers[k].get("name") for k in rotary_graph.find_rotary(kinds, inputs).constants}
        assert from_xml == {nodes[k].get_friendly_name() for k in found.constants}, "XML and ov.Model walks agree"


@pytest.mark.slow
def test_marked_rotary_stays_f32_through_openvinos_f16_conversion(exports: dict[str, Path]) -> None:
    """What a plugin computing in f16 does to the graph (ConvertPrecision f32 -> f16) spares the marked subgraph."""
    import openvino as ov
    from openvino._pyopenvino.passes import ConvertFP32ToFP16, Manager

    config = json.loads((exports["int4"] / "config.json").read_text(encoding="utf-8"))
    sub, kinds = rotary.tables_model(ov.Core().read_model(exports["int4"] / "openvino_model.xml"))
    manager = Manager()
    manager.register_pass(ConvertFP32ToFP16())
    manager.run_passes(sub)
    assert {op.get_output_element_type(0).to_string() for op in sub.get_ordered_ops()
            if op.get_type_name() in ("Cos", "Sin", "MatMul")} == {"f32"}
    positions = list(range(128))  # long factors
    outputs = ov.Core().compile_model(sub, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(
        rotary.table_inputs(sub, positions))
    want = rotary.reference_tables(config, positions)
    diff = max(float(np.abs(np.asarray(outputs[i]).reshape(128, -1) - want[kind]).max())
               for i, kind in enumerate(kinds))
    assert diff < 1e-5, "unmarked, the same conversion puts cos/sin 0.026 off"


@pytest.mark.slow
def test_workaround_changes_only_rotary_constants(exports: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream (no mark) stores them in fp16 and fails the inspection; every other weight is bit-identical."""
    from optimum.intel import OVConfig

    from pipeline.core.hashes import sha256_file

    monkeypatch.setattr(rotary, "mark_rotary_f32", lambda model: 0)  # what bare optimum-cli does
    upstream = tmp_path / "upstream-fp16"
    export_openvino.export_float(exports["model"], upstream, OVConfig(dtype="fp16"), lean=False)
    ours_rotary = rotary_constants(exports["fp16-plain"] / "openvino_model.xml")
    theirs_rotary = rotary_constants(upstream / "openvino_model.xml")
    assert other_constants(exports["fp16-plain"], ours_rotary) == other_constants(upstream, theirs_rotary), \
        "every non-rotary constant is bit-identical"
    assert sorted(t for t, _ in theirs_rotary.values()) == ["f16"] * 4 + ["f32"] * 2, "factors (2), theta powers, -1"
    assert {t for t, _ in ours_rotary.values()} == {"f32"}
    grown = sum(v.nbytes for _, v in ours_rotary.values()) - sum(v.nbytes for _, v in theirs_rotary.values())
    assert grown == 2 * (2 * 16 + 16 + 1), "the .bin grows by the widened rotary constants only"
    assert (exports["fp16-plain"] / "openvino_model.bin").stat().st_size - \
        (upstream / "openvino_model.bin").stat().st_size == grown
    problems = check_rotary(inspect_ir(upstream / "openvino_model.xml"))
    assert any("fp16/bf16 constant(s) feed the rotary embedding" in p for p in problems)
    assert any("differ from transformers'" in p for p in problems), "the fp16 factors move cos/sin measurably"
    export_openvino_base.run(exports["model"], tmp_path / "upstream-base")  # f32 already: not one byte changes
    assert sha256_file(tmp_path / "upstream-base" / "openvino_model.bin") == \
        sha256_file(exports["base"] / "openvino_model.bin")

    def copy_upstream(model_dir: Path, out: Path, ov_config: object, lean: bool = True) -> None:
        shutil.copytree(upstream, out, dirs_exist_ok=True)

    monkeypatch.setattr(export_openvino, "export_float", copy_upstream)
    with pytest.raises(StageError) as exc:
        export_openvino.run("fp16", VARIANTS["fp16"], Workspace(model=exports["model"], out=tmp_path / "out"), base_dir=None)
    assert "feed the rotary embedding" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "out" / "fp16").exists()


def other_constants(folder: Path, rotary_consts: dict[str, tuple[str, np.ndarray]]) -> list[tuple[str, bytes]]:
    """(element type, bytes) of every constant outside the rotary subgraph, sorted (names differ per export)."""
    import openvino as ov

    model = ov.Core().read_model(folder / "openvino_model.xml")
    return sorted((rotary.element_type(op), op.get_data().tobytes()) for op in model.get_ordered_ops()
                  if op.get_type_name() == "Constant" and op.get_friendly_name() not in rotary_consts)


@pytest.mark.slow
def test_damaged_rope_factor_is_caught(exports: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(exports["fp16"], damaged)
    [name] = [n for n, (_, v) in rotary_constants(damaged / "openvino_model.xml").items()
              if np.array_equal(v.ravel(), np.float32(LONG))]
    [data] = [layer.find("data") for layer in ET.parse(damaged / "openvino_model.xml").getroot().find("layers")
              if layer.get("name") == name]
    with open(damaged / "openvino_model.bin", "r+b") as f:
        f.seek(int(data.get("offset")) + 4 * 3)
        f.write(np.float32(LONG[3] * 1.001).tobytes())  # one long factor 0.1% off, still f32
    problems = check_rotary(inspect_ir(damaged / "openvino_model.xml"))
    assert problems and all("long factors" in p for p in problems), problems
    assert not check_rotary(inspect_ir(exports["fp16"] / "openvino_model.xml"))


@pytest.mark.slow
def test_embedded_tiny_fp16_keeps_inverse_frequencies_f32(tmp_path: Path) -> None:
    """The default-rope 4k tiny model: its fp16 IR had its inverse frequencies in fp16 before."""
    model = tmp_path / "model"
    download.run(ModelConfig.preset("tiny"), model)
    manifest = export_openvino.run("fp16", VARIANTS["fp16"], Workspace(model=model, out=tmp_path / "out"), base_dir=None)
    rope = manifest["rotary_embedding"]
    assert rope["float_constants"] and set(rope["float_constants"].values()) == {"f32"}
    assert set(rope["vs_transformers"]["positions"]) == {"0-4095", "4095 (decode)"}
    assert rope["vs_transformers"]["max_abs_diff"] < 1e-4


def synthetic_rotary(depth: int) -> tuple[object, dict[str, object]]:
    """A Phi-3-like rotary block: angles from position_ids and f32 constants, cos scaled, then applied to a
    query that sits behind ``depth`` ops (a deep network: the walks must not recurse through it)."""
    import openvino as ov
    from openvino import opset13 as ops

    positions = ops.parameter([1, -1], ov.Type.i64, name="position_ids")
    hidden = ops.parameter([1, -1, 8], ov.Type.f32, name="hidden")
    inv_freq = ops.constant(np.float32([[1.0], [0.1], [0.01], [0.001]]) / np.float32(1.02), name="inv_freq")
    angles = ops.transpose(ops.matmul(inv_freq, ops.unsqueeze(ops.convert(positions, ov.Type.f32), 0), False, False),
                           ops.constant(np.int64([0, 2, 1])))
    table = ops.concat([angles, angles], -1)
    cos = ops.multiply(ops.cos(table), ops.constant(np.float32(1.19), name="attention_scaling"))
    sin = ops.sin(table)
    query = hidden
    for _ in range(depth):
        query = ops.add(query, ops.constant(np.float32(0.5)))
    rotated = ops.add(ops.multiply(query, cos), ops.multiply(query, sin))
    model = ov.Model([rotated], [positions, hidden])
    return model, {"cos_scaled": cos, "sin": sin}


def test_rotary_subgraph_found_by_structure_in_a_deep_graph(tmp_path: Path) -> None:
    import openvino as ov

    model, named = synthetic_rotary(depth=3000)
    nodes, found = rotary.rotary_of_model(model)
    names = {nodes[k].get_friendly_name() for k in found.constants if rotary.element_type(nodes[k]) == "f32"}
    assert names == {"inv_freq", "attention_scaling"}, "the 3000 constants on the query side are not rotary"
    assert sorted(found.tables.values()) == ["cos", "sin"]
    assert {nodes[k].get_friendly_name() for k in found.tables} == {n.get_friendly_name() for n in named.values()}
    ov.save_model(model, tmp_path / "upstream.xml", compress_to_fp16=True)
    upstream = ov.Core().read_model(tmp_path / "upstream.xml")
    assert rotary.low_precision_constants(upstream) == ["inv_freq_compressed (f16)"]
    assert rotary.mark_rotary_f32(model) == 2
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=True)
    saved = ov.Core().read_model(tmp_path / "m.xml")
    types = {op.get_friendly_name(): rotary.element_type(op) for op in saved.get_ordered_ops()
             if op.get_type_name() == "Constant"}
    assert types["inv_freq"] == types["attention_scaling"] == "f32"
    assert rotary.low_precision_constants(saved) == []


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["int4", "fp16", "npu"])
def test_the_stateless_pinned_pass_gives_the_stateful_logits(exports: dict[str, Path], variant: str) -> None:
    """Artifact fidelity runs the IR without its KV-cache state (3 GiB less at 4096 tokens on Phi-3-mini): at f32,
    on windows on both sides of the LongRoPE switch, the logits are the stateful run's."""
    from pipeline.openvino.teacher_forced import forced_logits

    rng = np.random.default_rng(1)
    windows = [rng.integers(0, 32000, n).tolist() for n in (40, 150)]  # original context 64, max 256
    stateless, _, ran = forced_logits(exports[variant], "CPU", windows, "f32")
    stateful, _, _ = forced_logits(exports[variant], "CPU", windows, "f32", stateful=True)
    assert ran.compute == "f32"
    for a, b in zip(stateless, stateful):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
        assert (a.argmax(-1) == b.argmax(-1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fp16", "int4", "npu"])
def test_the_pinned_pass_in_runs_of_layers_gives_the_whole_models_logits(exports: dict[str, Path], variant: str) -> None:
    """At f32 OpenVINO widens f16 weights to f32 (Phi-3-mini's fp16 IR: 14 GiB), so an IR over the budget is
    compiled one run of decoder layers at a time. The cuts are found by structure, and the logits are the whole
    model's on windows on both sides of the LongRoPE switch."""
    import openvino as ov

    from pipeline.openvino import pieces
    from pipeline.openvino.teacher_forced import forced_logits, without_state

    model = without_state(ov.Core().read_model(str(exports[variant] / "openvino_model.xml")))
    assert len(pieces.residual_stream(model)) == 1 + 2 * 2  # the embedding, two residual Adds per decoder layer
    assert pieces.piece_count(model) == 1  # a tiny IR fits the default budget whole
    assert pieces.piece_count(model, budget=1) == 2  # at most one piece per layer
    split = list(pieces.pieces(model, 2))
    assert [piece.get_friendly_name() for piece in split] == ["layers 0-0", "layers 1-1"]
    assert "hidden" in split[1].input("hidden").get_names()
    widened = [pieces.widened_bytes(piece) for piece in split]
    # no piece holds all the weights; together they may hold some twice (each recomputes what the layers share)
    assert max(widened) < pieces.widened_bytes(model) <= sum(widened)
    rng = np.random.default_rng(2)
    windows = [rng.integers(0, 32000, n).tolist() for n in (40, 150)]  # original context 64, max 256
    whole, _, _ = forced_logits(exports[variant], "CPU", windows, "f32", piece_bytes=1 << 62)
    cut, executed, ran = forced_logits(exports[variant], "CPU", windows, "f32", piece_bytes=1)
    assert executed == "CPU" and ran.compute == "f32"
    for a, b in zip(whole, cut):
        assert a.shape == b.shape == (len(a), 32064)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        assert (a.argmax(-1) == b.argmax(-1)).all()
