"""Quantization-aware INT4 of a causal LM's ONNX artifact (``quantize --precision int4 --qat-steps N --qat-data TEXT``):
the fake quantizer is ONNX Runtime's MatMulNBits grid, the artifact holds the weights training saw, and the run
brings the simulated INT4 closer to its FP32 teacher. A tiny random-weight Llama (tests/builders) and a few repeated
sentences written for the tests are test material: they check the mechanism, not any real model's quality
(docs/guides/lm.md has stories260K's figures)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from compress.errors import ConfigError
from tests.builders.lm import STORY, needs_genai_builder, tiny_causal_lm

torch = pytest.importorskip("torch")

pytestmark = [needs_genai_builder(), pytest.mark.slow]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny Llama, its FP32 ONNX artifact and transfer text."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    root = tmp_path_factory.mktemp("qat")
    ckpt = tiny_causal_lm(root / "ckpt", layers=1, intermediate=96)  # 96: not a multiple of the block, padded
    text = root / "story.txt"
    text.write_text(STORY * 24)
    return ckpt, export(ckpt, root / "fp32", ExportConfig(format="onnx")), text


@pytest.fixture(scope="module")
def trained(lm, tmp_path_factory):
    """A QAT run's trained FP32 re-export and its INT4 artifact (the library's two halves, so that the trained
    weights can be read before the work directory goes)."""
    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.lm.onnx import quantize_lm_onnx
    from compress.stages.quantize.lm.qat import check_request, quantization_aware_int4

    ckpt, art, text = lm
    out = tmp_path_factory.mktemp("qat-out") / "int4"
    config = QuantizeConfig.from_flat(precision="int4", qat_steps=6, qat_data=str(text), qat_batch_size=2)
    source = check_request(art, config)
    assert source == ckpt
    fp32, record = quantization_aware_int4(art, config, out, source)
    return art, fp32, record, quantize_lm_onnx(art, out, config, trained=fp32, qat=record)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_fake_quantizer_is_onnx_runtimes_round_to_nearest_bit_for_bit(bits):
    """MLAS's block quantizer (what MatMulNBitsQuantizer's round to nearest calls), symmetric and not, a padded last
    block, an all-zero block, and enough weights for ties (8 bits: rounded half away from zero, not to even)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    from compress.stages.quantize.lm.fake_quant import rtn_grid

    k, n, block = 72, 512, 32
    w = np.random.default_rng(bits).normal(size=(k, n)).astype(np.float32)
    w[:32, 0] = 0
    w[:32, 1] = np.clip(w[:32, 1], -1.9, 1.9)  # a tie: -2 sets the scale 2 / 2**(bits-1), a power of two
    w[0, 1], w[1, 1] = -2.0, (2.5 if bits == 4 else 52.5) * 2.0 / 2 ** (bits - 1)  # on x.5 steps: 3, not 2
    blocks, per = -(-k // block), 8 // bits
    for symmetric in (True, False):
        packed, scales = np.zeros((n, blocks, block * bits // 8), np.uint8), np.zeros(n * blocks, np.float32)
        zp = np.zeros((n, -(-blocks // per)), np.uint8)
        (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(packed, w, scales, zp, block, n, k, symmetric)
        if bits == 4:
            q = np.stack([packed & 15, packed >> 4], -1).reshape(n, blocks, block).astype(np.float32)
            zero = np.stack([zp & 15, zp >> 4], -1).reshape(n, -1)[:, :blocks, None]
        else:
            q, zero = packed.reshape(n, blocks, block).astype(np.float32), zp.reshape(n, blocks, 1)
        zero = 2 ** (bits - 1) if symmetric else zero.astype(np.float32)
        ort = ((q - zero) * scales.reshape(n, blocks, 1)).reshape(n, -1)[:, :k]
        ours = rtn_grid(torch.from_numpy(w.T.copy()), bits, block, symmetric).numpy()
        np.testing.assert_array_equal(ours, ort)


def test_the_int4_artifact_holds_the_weights_training_saw(trained):
    """The artifact's MatMulNBits, dequantized, compute what the trained model fake-quantized computes; the real
    kernels (int8 activations, accuracy level 4) come close."""
    import onnx
    import onnxruntime as ort

    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.lm.fake_quant import attach, dequantized_model
    from compress.stages.quantize.lm.onnx import _state_for
    from compress.stages.quantize.lm.qat import scheme_of
    from compress.teachers.lm import CausalLM

    art, fp32, _, q = trained
    student = CausalLM.load(fp32.manifest.source.path)
    attach(student.model, scheme_of(QuantizeConfig.from_flat(precision="int4")))
    ids = np.asarray([student.encode(STORY)[:40]], np.int64)
    with torch.no_grad():
        want = student.model(input_ids=torch.from_numpy(ids)).logits.numpy()
    model = onnx.load(str(q.path / "model.onnx"))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **_state_for(q)}
    got = {}
    for name, m in (("dequantized", dequantized_model(model)), ("kernel", model)):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        if "position_ids" in {i.name for i in sess.get_inputs()}:
            feed["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
        got[name] = sess.run(["logits"], feed)[0]
    np.testing.assert_allclose(got["dequantized"], want, atol=2e-4)
    assert (got["kernel"].argmax(-1) == want.argmax(-1)).mean() > 0.9
    assert "MatMulNBits" in {n.op_type for n in model.graph.node}


def test_the_run_comes_closer_to_the_teacher_and_is_recorded_in_the_artifact(trained):
    art, _, record, q = trained
    assert record["best"]["kl_mean"] < record["before"]["kl_mean"] and record["best_step"] > 0
    losses = [h["loss"] for h in record["history"] if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert record["scheme"] == {"bits": 4, "block": 32, "symmetric": True, "lm_head_bits": 8, "embeddings_bits": 8}
    assert set(record["layers_fake_quantized"].values()) == {4, 8}
    step = q.manifest.steps[-1]
    assert step.metrics["qat"]["kept"] == f"the weights of step {record['best_step']}"
    assert str(q.manifest.precision) == "int4" and step.input_digest == art.digest  # lineage: the original FP32
    assert [s.stage for s in q.manifest.steps[:-1]] == [s.stage for s in art.manifest.steps]


def test_lora_adapters_train_under_the_quantizer_and_merge():
    from compress.stages.quantize.lm.fake_quant import Scheme, attach, detach

    model = torch.nn.Sequential(torch.nn.Embedding(16, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 16))
    model.get_input_embeddings, model.get_output_embeddings = lambda: model[0], lambda: model[2]
    made = attach(model, Scheme(block=16), lora_rank=2)
    assert len(made["lora"]) == 2 and made["layers"] == {"0": 8, "1": 4, "2": 8}
    with torch.no_grad():
        made["lora"][1].normal_()  # B: the adapter now changes the weight
    base = model[1].parametrizations.weight.original.detach().clone()
    merged = base + made["lora"][1] @ made["lora"][0] * 2.0  # alpha 2R: scale 2
    from compress.stages.quantize.lm.fake_quant import rtn_grid

    torch.testing.assert_close(model[1].weight, rtn_grid(merged, 4, 16, True))
    detach(model)
    torch.testing.assert_close(model[1].weight, merged)
    assert not hasattr(model[1], "parametrizations")


def test_bad_requests_are_refused_in_one_line_before_anything_runs(lm, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig, refuse_ignored

    _, art, text = lm
    cases = [({"precision": "int8", "qat_steps": 5, "qat_data": str(text)}, "trains a causal LM for INT4"),
             ({"precision": "int4", "qat_steps": 5}, "pass --qat-data"),
             ({"precision": "int4", "qat_steps": 5, "calibration": str(text)}, "trains on --qat-data"),
             ({"precision": "int4", "qat_lora_rank": 4}, "--qat-lora-rank applies to quantization-aware INT4"),
             ({"precision": "int4", "qat_steps": 5, "qat_data": str(text), "int4_algorithm": "hqq"}, "another grid"),
             ({"precision": "int4", "qat_steps": 5, "qat_data": str(text), "max_perplexity_increase": 0.02},
              "drop one of them")]
    for flat, message in cases:
        with pytest.raises(ConfigError, match=message):
            quantize(art.path, tmp_path / "x", QuantizeConfig.from_flat(**flat))
    short = tmp_path / "short.txt"
    short.write_text(STORY)
    with pytest.raises(ConfigError, match="text shorter than one window"):
        quantize(art.path, tmp_path / "x", QuantizeConfig.from_flat(precision="int4", qat_steps=5,
                                                                   qat_data=str(short)))
    for backend in ("openvino-causal-lm", "gguf-causal-lm", "executorch-causal-lm"):  # the ONNX route only
        with pytest.raises(ConfigError, match="--qat-steps 5 would be ignored .* causal-LM artifact"):
            refuse_ignored(QuantizeConfig.from_flat(precision="int4", qat_steps=5), backend)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.qad").exists()


def test_the_cli_refuses_in_one_line_with_exit_2(lm, tmp_path, capsys):
    from compress.cli import main

    _, art, text = lm
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(art.path), "--precision", "int8", "--qat-steps", "3", "--qat-data", str(text),
              "-o", str(tmp_path / "c")])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "Traceback" not in out + err
    assert "trains a causal LM for INT4" in " ".join((out + err).split()) and not (tmp_path / "c").exists()


def test_an_interrupted_run_resumes_where_it_stopped_and_its_state_goes_with_the_artifact(lm, tmp_path, monkeypatch,
                                                                                         caplog):
    import compress.interrupt as interrupt
    from compress.errors import EdgeCompressError
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.lm.qat import STATE
    from compress.stages.quantize.qad import work_dir

    class StopAt(interrupt.StopFlag):  # as if Ctrl-C arrived during step 2
        checks = 0

        @property
        def requested(self):
            StopAt.checks += 1
            return StopAt.checks >= 2

        @requested.setter
        def requested(self, value):
            pass

    _, art, text = lm
    config = QuantizeConfig.from_flat(precision="int4", qat_steps=4, qat_data=str(text), qat_batch_size=2)
    monkeypatch.setattr(interrupt, "StopFlag", StopAt)
    out = tmp_path / "q"
    with pytest.raises(EdgeCompressError, match="stopped at step 2 of 4") as e:
        quantize(art.path, out, config)
    assert e.value.exit_code == 130 and not out.exists() and (work_dir(out) / STATE).is_file()
    monkeypatch.undo()
    caplog.set_level("INFO", logger="compress.stages.quantize")
    q = quantize(art.path, out, config)
    assert "resuming at step 2 of 4" in caplog.text
    assert [h["step"] for h in q.manifest.steps[-1].metrics["qat"]["history"]] == [0, 1, 2, 3, 4]
    assert str(q.manifest.precision) == "int4" and not work_dir(out).exists()
