"""Verbs' settings (``compress.settings``): nested sections, flat CLI flags nested through ``MOVED``, a version-1 key
refused naming its new home, and an option that does not apply refused alike by the Python API, a recipe and the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from compress.stages.distill.config import DistillConfig
from compress.stages.finetune.config import FinetuneConfig
from compress.stages.prune.config import PruneConfig

ROOT = Path(__file__).resolve().parents[1]

# --- distill, prune, finetune --------------------------------------------------------------------------------------

TRAINING = (DistillConfig, PruneConfig, FinetuneConfig)


def _leaves(model, prefix: str = "") -> list[str]:
    """Every option's dotted path (a section's options, not the section)."""
    out = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            out += _leaves(sub, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


# 44: distill's causal-LM options (divergence, top_k, on_policy, on_policy_tokens, layer_choice, teacher_samples);
# 23: finetune's lora.qlora and instructions.prompt_field/response_field; prune's head_unit sits beside heads (16 top-level fields)
@pytest.mark.parametrize("model, flat, top", [(DistillConfig, 44, 15), (PruneConfig, 29, 16), (FinetuneConfig, 23, 15)])
def test_training_settings_are_nested_and_every_flag_has_a_home(model, flat, top):
    assert len(model.model_fields) <= top
    leaves = _leaves(model)
    assert len(leaves) == len(model.flat_fields()) == flat  # no option lost, none added
    nested = {p for p in leaves if "." in p}
    assert set(model.MOVED.values()) == nested  # every nested option has its flat key (its CLI flag)
    for key, path in model.MOVED.items():
        assert model.flat_key(path) == key


def _one_line_cli_error(capsys, *args) -> str:
    from compress.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["-q", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def _recipe(tmp_path: Path, verb: str, settings: dict) -> Path:
    (tmp_path / "teacher").mkdir(exist_ok=True)
    (tmp_path / "teacher" / "config.json").write_text("{}")
    if verb == "finetune":
        body = {"teacher": {"finetune": {"base": "teacher", **settings}}, "steps": {"onnx": {"export": {}}}}
    else:
        body = {"teacher": "teacher", "steps": {"step": {verb: settings}}}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "r", "data": {"train": "t.tsv"}, **body}, sort_keys=False))
    return p


NOT_APPLICABLE = [
    # (verb, its settings as the Python API and a recipe write them, the CLI's flags, the one-line message)
    ("prune", {"ffn": 0.3, "recovery": {"augment": 1}}, ["prune", "SRC", "--out", "OUT", "--ffn", "0.3",
                                                         "--recover-augment", "1"],
     "recovery.augment (--recover-augment) is a setting of the recovery, and there is no recovery"),
    ("prune", {"ffn": 0.3, "recovery": {"average": True}}, ["prune", "SRC", "--out", "OUT", "--ffn", "0.3",
                                                            "--recover-average"],
     "recovery.average (--recover-average) is a setting of the recovery, and there is no recovery"),
    ("distill", {"student": {"checkpoint": "s", "layers": 2}},
     ["distill", "--teacher", "T", "--train", "D", "--out", "OUT", "--student", "s", "--layers", "2"],
     "--student and --layers/--keep-layers/--student-config (student.checkpoint and student.layers/keep_layers/config) "
     "both given"),
    ("finetune", {"lora": {"alpha": 8}}, ["finetune", "BASE", "--train", "D", "--out", "OUT", "--lora-alpha", "8"],
     "lora.alpha (--lora-alpha) applies to LoRA only; set lora.rank (--lora-rank), or leave it out"),
]


@pytest.mark.parametrize("verb, settings, args, message", NOT_APPLICABLE)
def test_an_option_that_does_not_apply_is_refused_alike_everywhere(capsys, tmp_path, verb, settings, args, message):
    from compress.recipes.verbs import VERBS

    model = VERBS[verb].config_model()
    with pytest.raises(ValidationError) as e:  # the Python API
        model(**settings)
    assert message in str(e.value)
    recipe = _recipe(tmp_path, verb, settings)
    line = _one_line_cli_error(capsys, "run", recipe, "--dry-run")  # a recipe: file:line, the step, the message
    assert line.startswith(f"error: {recipe}:") and message in line, line
    line = _one_line_cli_error(capsys, *[str(tmp_path / a) if a.isupper() else a for a in args])  # the CLI
    assert message in line, line
    assert not (tmp_path / "OUT").exists()


@pytest.mark.parametrize("verb, old, home", [
    ("distill", {"layers": 3}, "`layers` is now `student.layers` (settings version 2): write student: {layers: ...}"),
    ("distill", {"student": "small/"}, "`student` is now `student.checkpoint`"),
    ("distill", {"eval_every": 100}, "`eval_every` is now `evaluation.every`"),
    ("prune", {"recover_steps": 800}, "`recover_steps` is now `recovery.steps` (settings version 2): write "
                                      "recovery: {steps: ...}"),
    ("prune", {"vocab_corpus": "train"}, "`vocab_corpus` is now `vocab.corpus`"),
    ("finetune", {"max_steps": 800}, "`max_steps` is now `training.max_steps`"),
])
def test_a_version_1_key_names_its_new_home(capsys, tmp_path, verb, old, home):
    from compress.recipes.schema import RecipeError, read_recipe

    recipe = _recipe(tmp_path, verb, old)
    with pytest.raises(RecipeError) as e:
        read_recipe(recipe)
    assert home in str(e.value) and str(e.value).startswith(f"{recipe}:"), str(e.value)
    assert home in _one_line_cli_error(capsys, "run", recipe, "--dry-run")


def test_the_cli_nests_its_flat_flags():
    cfg = DistillConfig.from_flat(layers=3, epochs=1.0, eval_every=300, augment=1, lr=None)  # None: not given
    assert (cfg.student.layers, cfg.training.epochs, cfg.evaluation.every, cfg.augmentation.copies) == (3, 1.0, 300, 1)
    assert cfg.given() == ["student.layers", "augmentation.copies", "training.epochs", "evaluation.every"]
    assert DistillConfig.from_flat(student="s").student.checkpoint == "s"
    assert PruneConfig.from_flat(recover_steps=5, teacher="t", profile="p").model_dump()["recovery"]["teacher"] == "t"


#: the settings of every distill, prune and finetune job of benchmarks/recipes and the demo as version 1 wrote them
#: (flat, before settings version 2): the nested recipes must plan the same options
V1 = {
    "benchmarks/recipes/sst2.yaml": {
        "student": {"layers": 3, "epochs": 1, "eval_every": 300},
        "pruned": {"heads": 0.3, "ffn": 0.3, "vocab_corpus": "train", "recover_steps": 800}},
    "benchmarks/recipes/finetune-conll.yaml": {
        "teacher": {"task": "token-classification", "epochs": 2, "lr": 1.0e-4, "batch_size": 16, "eval_every": 400},
        "student": {"layers": 3, "epochs": 1, "lr": 1.0e-4, "eval_every": 200, "eval_samples": 1000}},
    "benchmarks/recipes/finetune-digits.yaml": {
        "teacher": {"max_steps": 300},
        "pruned": {"channels": 0.3, "recover_steps": 300}},
    "benchmarks/recipes/finetune-sst2.yaml": {
        "teacher": {"labels": ["negative", "positive"], "max_steps": 800, "max_length": 64, "eval_every": 200},
        "student": {"layers": 3, "max_steps": 600, "eval_every": 300, "max_length": 64}},
    "compress/recipes/demo.yaml": {
        "student": {"layers": 3, "epochs": 16, "augment": 3, "lr": 0.0003, "eval_every": 100},
        "pruned": {"ffn": 0.3, "vocab_corpus": "train", "recover_steps": 200}},
}


@pytest.mark.parametrize("path", sorted(V1))
def test_the_shipped_recipes_say_what_version_1_said(path):
    from compress.recipes.schema import FinetuneSpec, read_recipe
    from compress.recipes.verbs import VERBS

    r = read_recipe(ROOT / path)
    jobs = {name: (step.verb, step.settings) for name, step in r.steps.items() if step.verb in ("distill", "prune")}
    if isinstance(r.teacher, FinetuneSpec):
        jobs["teacher"] = ("finetune", r.teacher.settings)
    assert set(jobs) == set(V1[path])
    for name, (verb, settings) in jobs.items():
        model = VERBS[verb].config_model()
        assert model.model_validate(settings) == model.from_flat(**V1[path][name]), (path, name)


# --- export --------------------------------------------------------------------------------------------------------


def test_export_settings_are_nested_and_every_flag_has_a_home():
    from compress.stages.export.config import ExportConfig

    assert len(ExportConfig.model_fields) <= 15
    leaves = _leaves(ExportConfig)
    assert len(leaves) == len(ExportConfig.flat_fields()) == 26  # no option lost; 26: generator.llama_cpp (GGUF
    # converter tree) and generator.max_context
    assert set(ExportConfig.MOVED.values()) == {p for p in leaves if "." in p}
    for key, path in ExportConfig.MOVED.items():
        assert ExportConfig.flat_key(path) == key


EXPORT_NOT_APPLICABLE = [
    # (settings as the Python API and a recipe write them, the CLI's flags, the one-line message)
    ({"format": "onnx", "precision": "int8"}, ["--precision", "int8"],
     "--precision applies to --format tensorrt, executorch or coreml; onnx exports are FP32"),
    ({"format": "openvino", "tensorrt": {"dry_run": True}}, ["--format", "openvino", "--dry-run"],
     "--dry-run applies to --format tensorrt only; add --format tensorrt or drop it (in a recipe: tensorrt.dry_run)"),
    ({"format": "tensorrt", "executorch": {"calibration_method": "minmax"}},
     ["--format", "tensorrt", "--calibration-method", "minmax"],
     "--calibration-method applies to --format executorch (quantize has its own for ONNX Runtime)"),
    ({"format": "executorch", "executorch": {"int8_mode": "static"}}, ["--format", "executorch", "--int8-mode", "static"],
     "--int8-mode applies to --precision int8; add --precision int8 or drop it (in a recipe: executorch.int8_mode)"),
    ({"format": "coreml", "precision": "int8", "calibration": {"data": "c.tsv"}},
     ["--format", "coreml", "--precision", "int8", "--calibration", "c.tsv"],
     "--calibration does not apply to Core ML"),
    ({"format": "executorch", "precision": "fp16"}, ["--format", "executorch", "--precision", "fp16"],
     "--precision fp16 is not made for ExecuTorch here"),
]


@pytest.mark.parametrize("settings, flags, message", EXPORT_NOT_APPLICABLE)
def test_an_export_option_that_does_not_apply_is_refused_alike_everywhere(capsys, tmp_path, settings, flags, message):
    from compress.stages.export.config import ExportConfig

    with pytest.raises(ValidationError) as e:  # the Python API
        ExportConfig(**settings)
    assert message in str(e.value)
    recipe = _recipe(tmp_path, "export", settings)
    line = _one_line_cli_error(capsys, "run", recipe, "--dry-run")  # a recipe: exit 2, one line, file:line
    assert line.startswith(f"error: {recipe}:") and message in line, line
    line = _one_line_cli_error(capsys, "export", tmp_path / "teacher", "--out", tmp_path / "OUT", *flags)  # the CLI
    assert message in line, line
    assert not (tmp_path / "OUT").exists()


@pytest.mark.parametrize("old, home", [
    ({"format": "tensorrt", "dry_run": True}, "`dry_run` is now `tensorrt.dry_run` (settings version 2): write "
                                              "tensorrt: {dry_run: ...}"),
    ({"format": "tensorrt", "calibration": "c.tsv"}, "`calibration` is now `calibration.data`"),
    ({"format": "executorch", "int8_mode": "static"}, "`int8_mode` is now `executorch.int8_mode`"),
])
def test_a_version_1_export_key_names_its_new_home(capsys, tmp_path, old, home):
    from compress.recipes.schema import RecipeError, read_recipe

    recipe = _recipe(tmp_path, "export", old)
    with pytest.raises(RecipeError) as e:
        read_recipe(recipe)
    assert home in str(e.value) and str(e.value).startswith(f"{recipe}:"), str(e.value)
    assert home in _one_line_cli_error(capsys, "run", recipe, "--dry-run")


def test_recorded_export_settings_read_back():
    """A step's record dumps every option, defaults included: read back (a replay, QAD's re-export) it is not
    refused for the options it did not set; a version-1 record's flat keys nest."""
    from compress.stages.export.config import ExportConfig

    cfg = ExportConfig.from_flat(format="tensorrt", precision="int8", calibration="c.tsv", dry_run=True, shape="1x8")
    assert (cfg.calibration.data, cfg.tensorrt.dry_run, cfg.tensorrt.shape) == ("c.tsv", True, "1x8")
    assert ExportConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert ExportConfig.model_validate(ExportConfig().model_dump(mode="json")) == ExportConfig()
    v1 = {"format": "onnx", "precision": None, "calibration": None, "calibration_samples": 128, "dry_run": False,
          "via": "onnx", "int8_mode": None, "opset": 17}
    assert ExportConfig.model_validate(ExportConfig.nest(v1)) == ExportConfig(opset=17)


def test_the_shipped_recipes_export_what_version_1_exported():
    from compress.recipes.schema import read_recipe
    from compress.stages.export.config import ExportConfig

    v1 = {"benchmarks/recipes/sst2.yaml": {"teacher-onnx": {}, "openvino": {"format": "openvino"}, "pruned-onnx": {}},
          "compress/recipes/demo.yaml": {"teacher-onnx": {}, "onnx": {}}}
    for path, steps in v1.items():
        r = read_recipe(ROOT / path)
        exports = {name: step.settings for name, step in r.steps.items() if step.verb == "export"}
        assert set(exports) == set(steps), path
        for name, settings in exports.items():
            assert ExportConfig.model_validate(settings) == ExportConfig.from_flat(**steps[name]), (path, name)


# --- search --------------------------------------------------------------------------------------------------------


def test_search_settings_are_nested_and_every_flag_has_a_home():
    from compress.search.config import SearchConfig

    assert len(SearchConfig.model_fields) <= 15
    leaves = _leaves(SearchConfig)
    assert len(leaves) == len(SearchConfig.flat_fields()) == 31  # no option lost; generation.limit, prompt_tokens, new_tokens, calibration_samples (generators); study.artifact_store, study.heartbeat (several workers)
    assert set(SearchConfig.MOVED.values()) == {p for p in leaves if "." in p}
    for key, path in SearchConfig.MOVED.items():
        assert SearchConfig.flat_key(path) == key
    base = dict(teacher="t", profile="p", train="d", eval="e")
    cfg = SearchConfig.from_flat(**base, short_steps=3, full_recover_steps=5, promote=1, seed=7, qat_steps=2)
    assert (cfg.short.steps, cfg.full.recover_steps, cfg.full.promote, cfg.study.seed, cfg.full.qat_steps) == \
        (3, 5, 1, 7, 2)
    with pytest.raises(ValidationError, match="`short_steps` is now `short.steps`"):
        SearchConfig(**base, short_steps=3)


def test_a_search_option_is_marked_with_the_kinds_of_model_that_read_it(tmp_path):
    """The settings' For marks say which kind of teacher's search reads an option; one set away from its default
    for another kind is refused in one line naming its flag, before anything is read."""
    from compress.errors import ConfigError
    from compress.search.config import SearchConfig
    from compress.search.directory import Search
    from compress.search.generation import GeneratorSpace

    base = dict(teacher="t", profile="host", train="d", eval="e")
    cfg = SearchConfig.from_flat(**base, short_steps=10, limit=3, distill={"a": 1}, short_recover_steps=5)
    assert cfg.set_for_others("generation") == ["distill", "short_steps"]  # a shape's recovery steps: both kinds
    assert cfg.set_for_others("forward") == ["limit"]
    assert SearchConfig.from_flat(**base, short_steps=300, limit=16).set_for_others("forward") == []  # the defaults
    with pytest.raises(ConfigError, match="--limit: this teacher's search generates no text"):
        Search(SearchConfig.from_flat(**base, limit=3), tmp_path / "s")
    with pytest.raises(ConfigError, match="--full-augment: a generator search labels nothing"):
        Search(SearchConfig.from_flat(**base, full_augment=0), tmp_path / "s", kind=GeneratorSpace)
    assert not (tmp_path / "s").exists()


def test_a_search_candidates_executorch_step_is_written_nested():
    from compress.search.encoder_space import Candidate, Fidelity, candidate_steps
    from compress.stages.export.config import ExportConfig

    shape = type("Shape", (), {"layers": 2, "heads": 4, "hidden": 64})()  # no student: the teacher's depth
    steps, last = candidate_steps(Candidate(runtime="executorch", quant="int8-static"), shape, Fidelity("short", {}, 0))
    assert ExportConfig.model_validate(steps[last]["export"]) == ExportConfig.from_flat(
        format="executorch", precision="int8", int8_mode="static", calibration="calibration")


# --- quantize ------------------------------------------------------------------------------------------------------


def test_quantize_settings_are_nested_and_every_flag_has_a_home():
    from compress.stages.quantize.config import QuantizeConfig

    assert len(QuantizeConfig.model_fields) <= 16  # 16: gguf (llama.cpp types, generators)
    leaves = _leaves(QuantizeConfig)
    assert len(leaves) == len(QuantizeConfig.flat_fields()) == 46  # no option lost; 46: speed.refuse_slower (--allow-slower), int4.algorithm, embeddings_bits, lm_head_bits, accuracy.max_perplexity_increase, gguf.type, gguf.imatrix (generators), int8.activation_bits (LiteRT w8a16), qad.lora_rank (a causal LM's QAT)
    assert set(QuantizeConfig.MOVED.values()) == {p for p in leaves if "." in p}
    for key, path in QuantizeConfig.MOVED.items():
        assert QuantizeConfig.flat_key(path) == key
    cfg = QuantizeConfig.from_flat(calibration="c.tsv", calibration_method="entropy", qat_steps=4, block_size=64,
                                   max_drop=0.01, data="d.tsv", eval_samples=20, speed_aware=True, target_x86=True)
    assert (cfg.calibration.data, cfg.calibration.method, cfg.qad.steps, cfg.int4.block_size, cfg.accuracy.max_drop,
            cfg.accuracy.data, cfg.accuracy.samples, cfg.speed.aware, cfg.target.x86) == \
        ("c.tsv", "entropy", 4, 64, 0.01, "d.tsv", 20, True, True)
    assert cfg.given_keys() == {"calibration", "calibration_method", "qat_steps", "block_size", "max_drop", "data",
                                "eval_samples", "speed_aware", "target_x86"}


@pytest.mark.parametrize("old, home", [
    ({"calibration_samples": 300}, "`calibration_samples` is now `calibration.samples` (settings version 2): write "
                                   "calibration: {samples: ...}"),
    ({"calibration": "c.tsv"}, "`calibration` is now `calibration.data`"),
    ({"qat_steps": 400}, "`qat_steps` is now `qad.steps`"),
    ({"max_drop": 0.01, "data": "eval"}, "`max_drop` is now `accuracy.max_drop`"),
])
def test_a_version_1_quantize_key_names_its_new_home(capsys, tmp_path, old, home):
    from compress.recipes.schema import RecipeError, read_recipe

    recipe = _recipe(tmp_path, "quantize", old)
    with pytest.raises(RecipeError) as e:
        read_recipe(recipe)
    assert home in str(e.value) and str(e.value).startswith(f"{recipe}:"), str(e.value)
    assert home in _one_line_cli_error(capsys, "run", recipe, "--dry-run")


def test_recorded_quantize_settings_read_back():
    """A step's record (every option dumped) reads back as the settings it was; a version-1 record's flat keys
    nest; a profile's implications are nested, and settings given beside them win."""
    from compress.stages.quantize.config import QuantizeConfig

    cfg = QuantizeConfig.from_flat(mode="static", calibration="c.tsv", calibration_samples=8, per_channel=False)
    assert QuantizeConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    v1 = {"precision": "int8", "mode": "static", "calibration": "c.tsv", "calibration_samples": 8, "qat_steps": 0,
          "reduce_range": True, "target_vnni": None}
    assert QuantizeConfig.model_validate(QuantizeConfig.nest(v1)) == QuantizeConfig.from_flat(
        mode="static", calibration="c.tsv", calibration_samples=8, reduce_range=True)
    implied = QuantizeConfig.profile_settings("cpu-x86-avx2", {"speed_aware": True})
    assert implied["target"]["x86"] is True and set(implied) <= {"target", "speed", "accuracy"}
    assert QuantizeConfig.for_profile("cpu-x86-avx2", int8={"reduce_range": False}).int8.reduce_range is False


def test_the_shipped_recipes_quantize_what_version_1_quantized():
    from compress.recipes.schema import read_recipe
    from compress.stages.quantize.config import QuantizeConfig

    v1 = {"benchmarks/recipes/sst2.yaml": {"teacher-int8": {}, "openvino-int8": {"calibration_samples": 300},
                                           "pruned-int8": {}, "pruned-qad-int8": {"qat_steps": 400}}}
    for path, steps in v1.items():
        r = read_recipe(ROOT / path)
        jobs = {name: step.settings for name, step in r.steps.items() if step.verb == "quantize"}
        assert set(jobs) == set(steps), path
        for name, settings in jobs.items():
            assert QuantizeConfig.model_validate(settings) == QuantizeConfig.from_flat(**steps[name]), (path, name)
