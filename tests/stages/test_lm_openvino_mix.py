"""The OpenVINO route's INT4 default (``--int4-algorithm auto``): each body MatMul's candidate (4-bit HQQ groups or 8
bits per channel) chosen by measurement (:mod:`compress.stages.quantize.lm.openvino_mix`), written by NNCF as planned.
A tiny random-weight Llama from tests/builders is test material: it checks the plumbing, not any real model's
quality (its flat logits miss the check's top-1 bar at any 4-bit mix, so one test lowers the bar to get a mix)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("torch")

import compress  # noqa: F401 - the torchvision shim before transformers
from compress.errors import ConfigError
from tests.builders.lm import tiny_causal_lm

pytestmark = pytest.mark.slow

BODY = 2 * 7  #: q, k, v, o, gate, up, down in each of the tiny Llama's 2 layers


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Llama's FP32 stateful OpenVINO artifact."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    root = tmp_path_factory.mktemp("ovmix")
    return export(tiny_causal_lm(root / "ckpt"), root / "fp32", ExportConfig(format="openvino"))


def _types_of(model, names) -> dict[str, str]:
    from compress.stages.quantize.lm.openvino import weight_type

    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    return {n: weight_type(ops[n].input(1).get_source_output().get_node()) for n in names}


def test_nncf_groups_and_llama_cpp_roles_of_openvino_names():
    from compress.stages.quantize.lm.bit_allocation import q4_k_m_bytes, role_of
    from compress.stages.quantize.lm.openvino_mix import _builder_name, nncf_group

    assert nncf_group(576, 32) == 32 and nncf_group(1536, 128) == 128
    assert nncf_group(80, 32) == 16  # NNCF's ADJUST: the largest power of two dividing the width, at least 16
    assert nncf_group(172, 32) is None  # none fits: NNCF's backup, 8 bits
    v = "__module.model.model.layers.3.self_attn.v_proj/aten::linear/MatMul"
    assert role_of(_builder_name(v)) == (3, "v")
    assert role_of(_builder_name("__module.model.model.layers.0.mlp.down_proj/aten::linear/MatMul")) == (0, "down")
    assert _builder_name("__module.model.lm_head/aten::linear/MatMul") == "__module.model.lm_head/aten::linear/MatMul"
    # the first layer's attn_v at Q6_K's bytes, another layer's q at Q4_K's: the roles are read
    costs = q4_k_m_bytes({_builder_name(v.replace("3", str(i)).replace("v_proj", p)): (512, 512)
                          for i in range(8) for p in ("v_proj", "q_proj")})
    assert costs["/model/layers.0/self_attn/v_proj/MatMul"] > costs["/model/layers.1/self_attn/q_proj/MatMul"]


def test_plan_measures_each_matrix_and_leaves_the_model_as_it_was(exported):
    import openvino as ov

    from compress.stages.quantize.lm import bit_allocation, openvino_mix

    model = ov.Core().read_model(str(exported.model_path))
    body = openvino_mix.body_matmuls(model)
    assert len(body) == BODY and not any("lm_head" in n for n in body)
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    before = {n: ops[n].input(1).get_source_output().get_node() for n in body}
    data = {n: np.array(c.get_data()) for n, c in before.items()}
    ids = bit_allocation.importance_ids(exported)
    # BOS first, then the built-in text, cut to the model's context (256 here, under IMPORTANCE_TOKENS)
    assert ids[0, 0] == 1 and ids.shape[1] == min(bit_allocation.IMPORTANCE_TOKENS, 256)
    probe = openvino_mix.Probe(model, body, ids)
    try:
        importance, ref = probe.reference()
    finally:
        probe.close()
    assert ref.shape == (ids.shape[1], 512) and all(importance[n].shape == (data[n].shape[1],) for n in body)
    assert len(model.outputs) == 1  # the extra outputs went on a copy
    events = []
    choice, record = openvino_mix.plan(model, body, block=32, ids=ids, kv_width=32, progress=events.append)
    assert set(choice) == set(body) and set(choice.values()) <= {"int4-hqq", "int8"}
    for row in record["matrices"].values():
        assert set(row["output_error"]) == {"int4-hqq", "int8"}
        assert 0 < row["output_error"]["int8"] < row["output_error"]["int4-hqq"]  # Gaussian weights: 8 bits err less
    assert record["tried"][0]["budget_bytes"] == record["q4_k_m_bytes"] and record["runtime"].startswith("openvino")
    assert any(e.get("done") == BODY for e in events) and any("built-in text" in e.get("note", "") for e in events)
    # the checks replaced and restored each weight: the same constants, the same values
    after = {n: ops[n].input(1).get_source_output().get_node() for n in body}
    assert all(after[n] is before[n] or after[n].get_friendly_name() == before[n].get_friendly_name() for n in body)
    assert all(np.array_equal(np.array(after[n].get_data()), data[n]) for n in body)


def test_the_probe_feeds_candidates_through_one_compiled_copy_and_puts_originals_back(exported):
    """The probe's check: each body weight an input fed from one FP32 buffer; a 4-bit candidate's codes and an 8-bit
    candidate decode into it, and an empty choice puts every original back, bit for bit, with the FP32 logits."""
    import openvino as ov

    from compress.stages.quantize.lm import bit_allocation as ba
    from compress.stages.quantize.lm import openvino_mix

    model = ov.Core().read_model(str(exported.model_path))
    body = openvino_mix.body_matmuls(model)
    probe = openvino_mix.Probe(model, body, ba.importance_ids(exported), exported.model_path)
    try:
        _, ref = probe.reference()
        originals = {n: probe.original(n).copy() for n in body}
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        for n in body:  # read from the .bin, as the model's constants hold them
            const, transposed = openvino_mix._weight(ops[n])
            assert np.array_equal(originals[n], const.get_data().T if transposed else const.get_data())
        hqq, int8 = openvino_mix.CANDIDATES
        coded = ba.coded(originals[body[0]], hqq, 32)
        moved = probe.logits({body[0]: coded, body[1]: int8})
        assert np.array_equal(probe.original(body[2]), originals[body[2]])  # untouched
        held = probe.buffers[body[0]]
        assert np.array_equal(held.T if openvino_mix._weight(ops[body[0]])[1] else held, coded.decode())  # the codes, decoded in place
        assert 0 < np.abs(moved - ref).max()
        assert np.array_equal(probe.logits({}), ref)  # the originals back: the same logits, bit for bit
        assert all(np.array_equal(probe.original(n), originals[n]) for n in body)
    finally:
        probe.close()


def test_the_int4_default_is_the_measured_mix_written_as_planned(exported, tmp_path, monkeypatch):
    """The default INT4 of an OpenVINO generator (no --int4-algorithm): the plan's record in the step, each planned
    MatMul's element type in the IR as the plan says (u4 for 4-bit HQQ groups, u8 for 8 bits), the counts those of
    the IR's weight types (beside the LM head and the embedding, u8), HQQ's values in every u4 group. The check's
    top-1 bar is lowered: the tiny model's flat logits would send every matrix to 8 bits."""
    import openvino as ov

    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.lm import bit_allocation
    from compress.stages.quantize.lm.bit_allocation import summary

    monkeypatch.setattr(bit_allocation, "TARGET_TOP1", 0.0)
    events = []
    q = quantize(exported.path, tmp_path / "int4", QuantizeConfig.from_flat(precision="int4"), progress=events.append)
    step = q.manifest.steps[-1]
    assert step.config["int4"]["algorithm"] == "auto"
    mix = step.metrics["int4_mix"]
    assert len(mix["matrices"]) == BODY and mix["held"] and mix["tried"][0]["held"]  # it holds at Q4_K_M's budget
    counts = mix["counts"]
    assert set(counts) == {"int4-hqq", "int8"} and sum(counts.values()) == BODY  # a mix of both
    assert mix["body_bytes"] <= mix["q4_k_m_bytes"]
    assert mix["written"] == {"u4": counts["int4-hqq"], "u8": counts["int8"]}
    model = ov.Core().read_model(str(q.model_path))
    types = _types_of(model, mix["matrices"])
    assert all(types[n] == {"int4-hqq": "u4", "int8": "u8"}[row["chose"]] for n, row in mix["matrices"].items())
    w = step.metrics["weights"]
    assert (w["lm_head"], w["embeddings"]) == ("u8", "u8")
    assert w["matmul_and_gather_weights"] == {"u4": counts["int4-hqq"], "u8": counts["int8"] + 2}
    nncf = step.config["nncf"]
    assert (nncf["algorithm"], nncf["hqq_groups"], nncf["zero_points"]) == ("auto", counts["int4-hqq"], "float16")
    assert nncf["int8_pass"] == {"mode": "int8_asym", "matmuls": counts["int8"]}
    assert summary(mix).startswith(f"mixed by measurement: {counts['int4-hqq']} int4-hqq, {counts['int8']} int8")
    assert any(e.get("phase", "").startswith("INT4 mix") and e.get("done") == BODY for e in events)
    assert step.metrics["generation_vs_input"]["collapsed"] is None


def test_an_explicit_hqq_still_writes_every_body_weight_in_u4(exported, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    q = quantize(exported.path, tmp_path / "hqq", QuantizeConfig.from_flat(precision="int4", int4_algorithm="hqq"))
    step = q.manifest.steps[-1]
    assert "int4_mix" not in step.metrics and step.config["int4"]["algorithm"] == "hqq"
    assert step.metrics["weights"]["matmul_and_gather_weights"] == {"u4": BODY, "u8": 2}  # the head, the embedding
    assert (step.config["nncf"]["algorithm"], step.config["nncf"]["hqq_groups"]) == ("hqq", BODY)
    assert "int8_pass" not in step.config["nncf"]


def test_auto_refuses_symmetric_and_int8_in_one_line(exported, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    with pytest.raises(ConfigError, match="--symmetric does not apply to --int4-algorithm auto"):
        quantize(exported.path, tmp_path / "s", QuantizeConfig.from_flat(precision="int4", symmetric=True))
    with pytest.raises(ConfigError, match="applies to --precision int4"):
        quantize(exported.path, tmp_path / "e", QuantizeConfig.from_flat(precision="int8", int4_algorithm="auto"))
    assert not (tmp_path / "s").exists() and not (tmp_path / "e").exists()
