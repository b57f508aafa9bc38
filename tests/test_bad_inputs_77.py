"""Issue 77: bad input on the newest surfaces gets one line naming the fix (what a new user tried, as they tried it)."""

from __future__ import annotations

import pytest

from compress.errors import ConfigError
from compress.stages.quantize.config import QuantizeConfig, refuse_ignored


@pytest.mark.parametrize("backend", ["onnx-causal-lm", "openvino-causal-lm", "executorch-causal-lm"])
def test_an_encoder_s_embedding_flag_on_a_generator_names_the_generator_s_own_flag(backend):
    with pytest.raises(ConfigError) as e:
        refuse_ignored(QuantizeConfig.from_flat(embedding_precision="int4"), backend)
    said = str(e.value)
    assert "--embedding-precision int4 would be ignored" in said and "--embeddings-bits 8|4|32" in said
    # an option no other flag stands for keeps the plain fix
    with pytest.raises(ConfigError, match="drop it"):
        refuse_ignored(QuantizeConfig.from_flat(weight_type="uint8"), backend)


def test_k_quant_with_blocks_wider_than_a_layer_is_refused_naming_a_block_size_that_fits(tmp_path):
    pytest.importorskip("torch")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from tests.builders.causal_lm import genai_builder_missing, tiny_causal_lm

    if genai_builder_missing():
        pytest.skip(genai_builder_missing())
    art = export(tiny_causal_lm(tmp_path / "ckpt", layers=1), tmp_path / "fp32", ExportConfig(format="onnx"))
    for block in (128, 64):  # one 64-wide block: ONNX Runtime's k-quant packs zero points in pairs
        with pytest.raises(ConfigError, match=rf"even number of --block-size {block} blocks: .* are 64 wide .*"
                                              r"use --block-size 32"):
            quantize(art, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", int4_algorithm="k_quant",
                                                                   block_size=block))
        assert not (tmp_path / "q").exists()
    made = quantize(art, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", int4_algorithm="k_quant",
                                                                  block_size=32))
    assert made.precision == "int4"  # the block size the refusal names works
