"""A checkpoint's own code, refused wherever it is named, and flags that do not fit the model (a generator's flags on a
classifier, an encoder's on a generator, k-quant blocks wider than a layer, a recipe's --set): one line naming the fix
(from issue 77: what a new user tried, as they tried it)."""

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
    from tests.builders.lm import genai_builder_missing, tiny_causal_lm

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


# -- a checkpoint's own code, named anywhere in its folder -----------------------------------------------------------

def _with_own_code(ckpt, where: str, marker) -> None:
    """Make the checkpoint folder ``ckpt`` name its own Python code in ``where`` (a module that writes ``marker``
    when imported): an ``auto_map`` in a tokenizer's or processor's config, or a ``custom_generate/`` folder."""
    import json

    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    if where == "custom_generate":
        (ckpt / "custom_generate").mkdir()
        (ckpt / "custom_generate" / "generate.py").write_text(code + "def generate(model, **kw):\n    pass\n")
        return
    (ckpt / "evil.py").write_text(code + "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    path = ckpt / where
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]} \
        if where == "tokenizer_config.json" else {"AutoProcessor": "evil.EvilTokenizer"}
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json", "processor_config.json", "custom_generate"])
def test_own_code_is_found_in_every_file_that_can_name_it(tmp_path, where):
    import json

    from compress.errors import ModelLoadError
    from compress.teachers.checkpoints import refuse_remote_code, remote_code

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    assert remote_code(ckpt) is None
    if where == "config.json":
        (ckpt / where).write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoConfig": "evil.C"}}))
    else:
        _with_own_code(ckpt, where, tmp_path / "marker")
    assert where.split(".")[0] in remote_code(ckpt)
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        refuse_remote_code(ckpt, None, trusted=False)
    refuse_remote_code(ckpt, None, trusted=True)  # trusted: the loader may run it


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """A tiny Llama checkpoint, its FP32 ONNX export, a profile and a text: what validate and search need."""
    pytest.importorskip("torch")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from tests.builders.lm import STORY, genai_builder_missing, tiny_causal_lm
    from tests.validation.test_validate_generation import gen_profile

    if genai_builder_missing():
        pytest.skip(genai_builder_missing())
    root = tmp_path_factory.mktemp("gen77")
    ckpt = tiny_causal_lm(root / "ckpt", layers=1)
    art = export(ckpt, root / "onnx", ExportConfig(format="onnx"))
    (root / "story.txt").write_text("\n\n".join([STORY] * 3), encoding="utf-8")
    return {"ckpt": ckpt, "onnx": art.path, "profile": gen_profile(root / "profiles", "g77"),
            "text": root / "story.txt"}


def _copy_with_own_code(generator, tmp_path, where):
    import shutil

    ckpt = tmp_path / "own-code"
    shutil.copytree(generator["ckpt"], ckpt)
    _with_own_code(ckpt, where, tmp_path / "it-ran")
    return ckpt


@pytest.mark.parametrize("fmt", ["onnx", "gguf"])
def test_export_refuses_a_tokenizer_s_own_code_before_any_loader_or_converter_runs_it(capfd, generator, tmp_path, fmt):
    """tokenizer_config.json's auto_map, config.json without one: llama.cpp's converter loads tokenizers trusting
    remote code, transformers refused it with exit 3; now one line before either runs."""
    from tests.builders.cli import assert_one_line_error, in_process

    ckpt = _copy_with_own_code(generator, tmp_path, "tokenizer_config.json")
    proc = in_process(capfd, "export", ckpt, "--format", fmt, "-o", tmp_path / "out")
    assert_one_line_error(proc, "auto_map in tokenizer_config.json", "--trust-remote-code")
    assert not (tmp_path / "it-ran").exists() and not (tmp_path / "out").exists()


def test_validate_refuses_a_teacher_s_own_code_before_saying_its_plan(capfd, generator, tmp_path):
    from tests.builders.cli import assert_one_line_error, in_process

    ckpt = _copy_with_own_code(generator, tmp_path, "processor_config.json")
    proc = in_process(capfd, "validate", generator["onnx"], "-p", generator["profile"], "--data", generator["text"],
                      "--teacher", ckpt, "--no-cold-start", "--report-dir", tmp_path / "r")
    assert_one_line_error(proc, "auto_map in processor_config.json", "--trust-remote-code")
    assert "perplexity on" not in proc.stdout + proc.stderr  # checked first, then announced
    assert not (tmp_path / "it-ran").exists() and not (tmp_path / "r").exists()


def test_validate_refuses_another_model_s_teacher_before_saying_its_plan(capfd, generator, tmp_path):
    """A teacher whose vocabulary is not the artifact's: exit 3 ("teacher logits [1, 256, 600] and the artifact's
    [1, 256, 512] differ") after the plan line and the teacher's loading; now one line before either."""
    import json
    import shutil

    from tests.builders.cli import assert_one_line_error, in_process

    other = tmp_path / "other"
    shutil.copytree(generator["ckpt"], other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"vocab_size": 600}))
    proc = in_process(capfd, "validate", generator["onnx"], "-p", generator["profile"], "--data", generator["text"],
                      "--teacher", other, "--no-cold-start", "--report-dir", tmp_path / "r")
    assert_one_line_error(proc, "vocabulary has 600 tokens and the artifact's 512", "--teacher")
    assert "perplexity on" not in proc.stdout + proc.stderr and not (tmp_path / "r").exists()


def test_search_refuses_a_teacher_s_own_code_before_the_first_trial(capfd, generator, tmp_path):
    from tests.builders.cli import assert_one_line_error, in_process

    ckpt = _copy_with_own_code(generator, tmp_path, "custom_generate")
    proc = in_process(capfd, "search", "-t", ckpt, "-p", generator["profile"], "--train", generator["text"],
                      "--eval", generator["text"], "--search-dir", tmp_path / "s")
    assert_one_line_error(proc, "custom_generate/", "never runs")
    assert not (tmp_path / "it-ran").exists() and not (tmp_path / "s" / "trials").exists()


@pytest.mark.parametrize("flags", [["--prompts", "PROMPTS", "--window", "64"], ["--new-tokens", "32"]])
def test_a_generator_s_options_on_a_classifier_are_refused_not_ignored(capfd, onnx_artifact, tmp_path, flags):
    """validate of a BERT classifier with --prompts and --window: exit 4 with both ignored; now one line naming the
    first, before any data or teacher is read (the flags' defaults, e.g. --new-tokens 128, are not 'given')."""
    from tests.builders.cli import assert_one_line_error, in_process

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n", encoding="utf-8")
    args = [str(prompts) if f == "PROMPTS" else f for f in flags]
    proc = in_process(capfd, "validate", onnx_artifact.path, "-p", "host", *args, "--report-dir", tmp_path / "r")
    assert_one_line_error(proc, f"({flags[0]}) applies to text generators", "text-classification model", "drop it")
    assert not (tmp_path / "r").exists()


def test_a_recipe_problem_set_by_set_is_named_by_its_key_not_by_a_line_of_the_file(tmp_path):
    """run --set steps.pr.prune.recover_steps=10 (a version-1 key) named r.yaml:7, the line of `prune:`, which does
    not hold the key; a problem the file itself holds keeps its line."""
    from compress.recipes.schema import RecipeError, read_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nteacher: ./ckpt\ndata:\n  train: t.txt\nsteps:\n  pr:\n    prune: {ffn: 0.3}\n")
    with pytest.raises(RecipeError) as e:
        read_recipe(recipe, {"steps.pr.prune.recover_steps": 10})
    assert str(e.value).startswith("--set steps.pr.prune.recover_steps: `recover_steps` is now `recovery.steps`")
    with pytest.raises(RecipeError, match=r"^--set steps\.pr\.prune: steps\.pr\.prune\.ffn: Input should be less"):
        read_recipe(recipe, {"steps.pr.prune": {"ffn": 3}})
    recipe.write_text(recipe.read_text().replace("ffn: 0.3", "ffn: 3"))
    with pytest.raises(RecipeError, match=r"r\.yaml:7: steps\.pr\.prune\.ffn: Input should be less"):
        read_recipe(recipe, {"data.eval": "t.txt"})


def test_quantize_help_names_the_gguf_type_quantize_uses():
    """quantize --help said --gguf-type defaults to q4_0 for int4; quantize uses q4_k_m (compress.stages.quantize.lm.gguf)."""
    from click.testing import CliRunner

    from compress.cli import cli
    from compress.stages.quantize.lm.gguf import DEFAULT_TYPE

    said = " ".join(CliRunner().invoke(cli, ["quantize", "--help"]).output.split())
    assert f"default {DEFAULT_TYPE['int4']} for int4" in said and DEFAULT_TYPE["int4"] == "q4_k_m"
