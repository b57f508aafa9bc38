"""The GGUF route for causal LMs: export through llama.cpp's converter, quantize with llama.cpp's quantizer, run in
llama.cpp (llama-cpp-python). Tiny random-weight Llamas from tests/builders are test material: they check plumbing
and agreement with PyTorch, not any real model's quality.

Needs llama-cpp-python (the llamacpp extra) and a llama.cpp source tree for the converter, named by
EDGECOMPRESS_LLAMA_CPP (a llama.cpp checkout or an extracted llama-cpp-python sdist); skipped without them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'edgecompress[llamacpp]')")

from compress.errors import ArtifactError, ConfigError, StageError
from compress.stages.export.lm.gguf import ENV, llama_cpp_tree
from tests.builders.lm import tiny_causal_lm

TREE = llama_cpp_tree()
needs_tree = pytest.mark.skipif(TREE is None, reason=f"no llama.cpp source tree for the converter: set {ENV}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Llama and its FP32 GGUF artifact."""
    if TREE is None:
        pytest.skip(f"no llama.cpp source tree for the converter: set {ENV}")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    root = tmp_path_factory.mktemp("gguf")
    ckpt = tiny_causal_lm(root / "ckpt")
    return ckpt, export(ckpt, root / "fp32", ExportConfig(format="gguf"))


def _quantize(art, out, **flat):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    return quantize(art.path, out, QuantizeConfig.from_flat(**flat))


@needs_tree
def test_export_writes_a_gguf_checked_against_pytorch(exported):
    ckpt, art = exported
    m = art.manifest
    assert (str(m.format), str(m.precision), m.model_file) == ("gguf", "fp32", "model.gguf")
    assert str(m.task) == "text-generation"
    assert m.postprocess.cache.layout == "runtime" and m.postprocess.cache.layers == 2
    assert (art.path / "tokenizer.json").is_file() and (art.path / "generation_config.json").is_file()
    check = m.steps[-1].metrics["generation_parity"]
    assert check["same_tokens"] and check["decode_steps"] == 8
    assert check["prefill_max_abs_diff"] < 1e-2  # llama.cpp's F32 kernels: ~1e-3 here


@needs_tree
def test_llamacpp_prefill_and_steps_match_pytorch_and_one_long_prefill(exported):
    from compress.runtimes.base import load_runtime
    from compress.stages.export.lm.common import greedy_torch

    ckpt, art = exported
    prompt = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298]
    ref = greedy_torch(ckpt, prompt, 6)
    backend = load_runtime(art, "llamacpp")
    try:
        prefill, tokens, logits = backend.generate(prompt, 6, logits=True)[:3]
        assert np.abs(prefill - ref[0]).max() < 1e-2
        assert tokens == ref[1]
        # the cache is llama.cpp's: prefill + steps give what one prefill of the whole sequence gives
        whole, _ = backend.prefill({"input_ids": np.asarray([prompt + tokens[:-1]], dtype=np.int64)})
        assert np.abs(whole["logits"][0, -1] - logits[-2]).max() < 1e-3
        # a generation interleaved with another prefill still steps on its own tokens
        out, state = backend.prefill({"input_ids": np.asarray([prompt], dtype=np.int64)})
        backend.prefill({"input_ids": np.asarray([[1, 5, 6, 7]], dtype=np.int64)})
        nxt = int(out["logits"][0, -1].argmax())
        step, state = backend.step({"input_ids": np.asarray([[nxt]], dtype=np.int64)}, state)
        assert np.abs(step["logits"][0, -1] - logits[0]).max() < 1e-3 and len(state) == len(prompt) + 1
        with pytest.raises(ConfigError, match="batch 1"):
            backend.prefill({"input_ids": np.ones((2, 3), dtype=np.int64)})
    finally:
        backend.close()


@needs_tree
@pytest.mark.parametrize(("flat", "precision", "kind"), [
    ({"precision": "int4"}, "int4", "q4_k_m"),  # the INT4 default: llama.cpp's recommended 4-bit
    ({"precision": "int4", "gguf_type": "q4_0"}, "int4", "q4_0"),
    ({"precision": "int8"}, "int8", "q8_0"),
])
def test_llamacpp_quantizer_shrinks_the_file_and_records_the_generations(exported, tmp_path, flat, precision, kind):
    _, art = exported
    q = _quantize(art, tmp_path / kind, **flat)
    assert (str(q.format), str(q.precision)) == ("gguf", precision)
    metrics = q.manifest.steps[-1].metrics
    assert metrics["gguf_type"] == kind and metrics["size_bytes_after"] < metrics["size_bytes_before"]
    assert (q.path / "model.gguf").stat().st_size < (art.path / "model.gguf").stat().st_size / (2 if
                                                                                               precision == "int8" else 3)
    g = metrics["generation_vs_input"]
    assert 0.0 <= g["prompt_top1_agreement"] <= 1.0 and g["prompt_kl_mean"] >= 0.0
    if kind == "q8_0":  # 8-bit blocks barely move the logits
        assert g["prompt_top1_agreement"] > 0.9 and g["prompt_kl_mean"] < 1e-3


@needs_tree
def test_quantize_refusals(exported, tmp_path):
    _, art = exported
    with pytest.raises(ConfigError, match="--gguf-type q8_0 stores int8"):
        _quantize(art, tmp_path / "a", precision="int4", gguf_type="q8_0")
    with pytest.raises(ConfigError, match="--block-size 64 would be ignored on a GGUF"):
        _quantize(art, tmp_path / "b", precision="int4", block_size=64)
    q = _quantize(art, tmp_path / "q4", precision="int4")
    with pytest.raises(ArtifactError, match="already gguf int4"):
        _quantize(q, tmp_path / "c", precision="int4")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@needs_tree
def test_strict_fails_a_collapsed_generator_and_writes_nothing(exported, tmp_path, monkeypatch):
    import compress.tasks.generation as generation

    _, art = exported
    monkeypatch.setattr(generation, "collapse", lambda tokens, kl_mean=None: "all one token")
    with pytest.raises(StageError, match="collapsed: all one token"):
        _quantize(art, tmp_path / "s", precision="int4", strict=True)
    assert not (tmp_path / "s").exists()
    q = _quantize(art, tmp_path / "w", precision="int4")  # without --strict: recorded
    assert q.manifest.steps[-1].metrics["generation_vs_input"]["collapsed"] == "all one token"


@needs_tree
def test_a_gguf_file_is_adopted_from_its_header(exported, tmp_path):
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    _, art = exported
    q = _quantize(art, tmp_path / "q8", precision="int8")
    adopted = export(q.path / "model.gguf", tmp_path / "adopted", ExportConfig())
    m = adopted.manifest
    assert (str(m.format), str(m.precision), str(m.task)) == ("gguf", "int8", "text-generation")
    assert (m.postprocess.cache.layers, m.postprocess.cache.kv_heads, m.postprocess.cache.head_size) == (2, 2, 16)
    assert m.steps[-1].metrics["adopted"]["logits_finite"]


def test_export_without_a_llama_cpp_tree_names_how_to_get_one(tmp_path, monkeypatch):
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    monkeypatch.delenv(ENV, raising=False)
    ckpt = tiny_causal_lm(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="--llama-cpp") as e:
        export(ckpt, tmp_path / "out", ExportConfig(format="gguf"))
    assert "pip download --no-binary :all: --no-deps llama-cpp-python" in e.value.hint
    with pytest.raises(ConfigError, match="not a llama.cpp source tree"):
        export(ckpt, tmp_path / "out", ExportConfig.from_flat(format="gguf", llama_cpp=str(tmp_path)))
    assert not (tmp_path / "out").exists()


# -- llama.cpp's importance matrix ------------------------------------------------------------------------------


def write_imatrix(model, path, *, rename: str = "", seed: int = 0):
    """An importance matrix for the GGUF ``model`` in llama-imatrix's own file format (GGUF: ``NAME.in_sum2`` and
    ``NAME.counts`` per weight matrix, the ``imatrix.*`` keys), with skewed column importances: what llama-imatrix
    writes, without running it (the tool is not in any wheel)."""
    from gguf import GGUFReader, GGUFWriter

    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["test"])
    w.add_uint32("imatrix.chunk_count", 10)
    w.add_uint32("imatrix.chunk_size", 64)
    for t in GGUFReader(str(model)).tensors:
        if len(t.shape) == 2 and t.name.startswith("blk."):
            cols = int(t.shape[0])
            w.add_tensor(rename + t.name + ".in_sum2", (640.0 * np.exp(2 * rng.standard_normal(cols)))[None]
                         .astype(np.float32))
            w.add_tensor(rename + t.name + ".counts", np.full((1, 1), 640.0, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@needs_tree
def test_an_importance_matrix_changes_what_llamas_quantizer_writes(exported, tmp_path):
    from gguf import GGUFReader

    from compress.stages.quantize.lm.gguf_imatrix import read_imatrix

    _, art = exported
    imatrix = write_imatrix(art.path / "model.gguf", tmp_path / "imatrix.gguf")
    read = read_imatrix(imatrix)
    assert read.chunks == 10 and len(read.entries) == 2 * 7  # q, k, v, o, gate, up, down per layer
    plain = _quantize(art, tmp_path / "plain", precision="int4", gguf_type="q4_0")
    weighed = _quantize(art, tmp_path / "weighed", precision="int4", gguf_type="q4_0", imatrix=str(imatrix))
    blocks = [{t.name: bytes(t.data) for t in GGUFReader(str(q.path / "model.gguf")).tensors if t.name.startswith("blk.")}
              for q in (plain, weighed)]
    assert blocks[0].keys() == blocks[1].keys()  # the same Q4_0 weights, other block scales and values
    assert sum(blocks[0][n] != blocks[1][n] for n in blocks[0]) >= 14
    step = weighed.manifest.steps[-1]
    assert step.metrics["imatrix"] and not plain.manifest.steps[-1].metrics["imatrix"]
    record = step.config["imatrix"]
    assert (record["covered"], record["entries"], record["chunks"]) == (14, 14, 10)
    fields = GGUFReader(str(weighed.path / "model.gguf")).fields  # llama-quantize's provenance keys
    assert fields["quantize.imatrix.entries_count"].contents() == 14
    assert fields["quantize.imatrix.dataset"].contents() == "test"
    assert step.metrics["generation_vs_input"]["prompt_top1_agreement"] > 0.5


@needs_tree
def test_importance_matrix_refusals(exported, tmp_path):
    _, art = exported
    model = art.path / "model.gguf"
    with pytest.raises(ConfigError, match="another model"):
        _quantize(art, tmp_path / "a", precision="int4",
                  imatrix=str(write_imatrix(model, tmp_path / "other.gguf", rename="x.")))
    with pytest.raises(ConfigError, match="not an importance matrix"):
        _quantize(art, tmp_path / "b", precision="int4", imatrix=str(model))  # a GGUF, not llama-imatrix's
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(ConfigError, match="not an importance matrix"):
        _quantize(art, tmp_path / "c", precision="int4", imatrix=str(junk))
    with pytest.raises(ConfigError, match="--imatrix and --calibration"):
        _quantize(art, tmp_path / "d", precision="int4", imatrix=str(junk), calibration=str(junk))
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_calibration_text_without_llama_imatrix_names_how_to_build_it(tmp_path, monkeypatch):
    from compress.stages.quantize.lm.gguf_imatrix import compute_imatrix

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ConfigError, match="llama-imatrix, which no wheel ships") as e:
        compute_imatrix(tmp_path / "m.gguf", ["text"], tmp_path / "i.gguf", context=64, chunks=4)
    assert "--target llama-imatrix" in e.value.hint


@needs_tree
def test_calibration_text_makes_an_importance_matrix_with_llama_imatrix(exported, tmp_path):
    from compress.stages.quantize.lm.gguf_imatrix import imatrix_tool
    from tests.builders.lm import STORY

    if imatrix_tool() is None:
        pytest.skip(f"no llama-imatrix: build it in the {ENV} tree (cmake --build build --target llama-imatrix)")
    _, art = exported
    text = tmp_path / "story.txt"
    text.write_text(STORY * 40)
    q = _quantize(art, tmp_path / "q", precision="int4", gguf_type="q4_k_m", calibration=str(text),
                  calibration_samples=4)
    record = q.manifest.steps[-1].config["imatrix"]
    assert record["made_by"] == "llama-imatrix" and record["covered"] == 14 and 2 <= record["chunks"] <= 4
    assert record["datasets"] == [str(text.resolve())]
    with pytest.raises(ConfigError, match="more --calibration text"):
        text.write_text(STORY)
        _quantize(art, tmp_path / "short", precision="int4", calibration=str(text))
    assert not (tmp_path / "short").exists()


@needs_tree
def test_an_imatrix_file_gives_what_llama_quantize_writes_with_it(exported, tmp_path):
    """The in-process quantizer given llama-imatrix's file writes the tensors and keys llama.cpp's own tool does."""
    import subprocess

    from gguf import GGUFReader

    from compress.stages.quantize.lm.gguf_imatrix import imatrix_tool
    from tests.builders.lm import STORY

    tool = imatrix_tool()
    if tool is None or not (tool.parent / "llama-quantize").is_file():
        pytest.skip(f"no llama-imatrix and llama-quantize: build them in the {ENV} tree")
    _, art = exported
    text, imatrix, theirs = tmp_path / "story.txt", tmp_path / "imatrix.gguf", tmp_path / "theirs.gguf"
    text.write_text(STORY * 40)
    subprocess.run([tool, "-m", art.path / "model.gguf", "-f", text, "-o", imatrix, "-c", "64", "--no-ppl"],
                   check=True, capture_output=True)
    subprocess.run([tool.parent / "llama-quantize", "--imatrix", imatrix, art.path / "model.gguf", theirs, "Q4_K_M"],
                   check=True, capture_output=True)
    ours = _quantize(art, tmp_path / "ours", precision="int4", gguf_type="q4_k_m", imatrix=str(imatrix))
    read = [GGUFReader(str(p)) for p in (ours.path / "model.gguf", theirs)]
    assert [{t.name: bytes(t.data) for t in r.tensors} for r in read][0] == {t.name: bytes(t.data)
                                                                              for t in read[1].tensors}
    keys = [{k: f.contents() for k, f in r.fields.items() if k.startswith("quantize.imatrix")} for r in read]
    assert keys[0] == keys[1] and keys[0]["quantize.imatrix.entries_count"] == 14
