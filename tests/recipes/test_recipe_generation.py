"""A text generator through ``edgecompress run``: export with a KV cache (ONNX Runtime GenAI's builder), weight-only
INT4, validate against the generator budgets (the recipe's own, over a profile's), gate against the last run; options
a generator would not read refused at plan time, before any job runs. The tiny random-weight Llama of tests/builders
is test material (plumbing, not quality); the slow test runs the shipped recipe on the real stories260K."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from tests.builders.lm import STORIES, STORY, TINYSTORIES, needs_genai_builder, tiny_causal_lm
from tests.builders.shared import needs_shared
from tests.validation.test_validate_generation import gen_profile

pytestmark = [needs_genai_builder(), pytest.mark.slow]

BUDGETS = {"min_decode_tokens_per_s": 1.0, "max_time_to_first_token_ms": 60000, "max_perplexity_increase": 0.5,
           "min_top1_agreement": 0.3}


def run(capsys, *args) -> tuple[int, str, str]:
    """``edgecompress -q run ARGS`` in this process: (exit code, stdout, stderr)."""
    from compress.cli import main

    with pytest.raises(SystemExit) as e:
        main(["-q", "run", *map(str, args)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def lm(tmp_path_factory, home):
    """A recipe that names neither its teacher nor its text (given with --set, as the shipped one), a tiny Llama, the
    text and prompts, and a fast-measuring profile without budgets of its own: the recipe states them."""
    root = tmp_path_factory.mktemp("lm-recipe")
    ckpt = tiny_causal_lm(root / "ckpt")
    (root / "story.txt").write_text("\n\n".join([STORY] * 4), encoding="utf-8")
    (root / "prompts.txt").write_text("Once upon a time\nThe little dog\n", encoding="utf-8")
    gen_profile(root, "gen-fast")
    recipe = {
        "name": "lm", "steps": {"onnx": {"export": {"format": "onnx"}},
                                "int4": {"from": "onnx", "quantize": {"precision": "int4", "int4": {"algorithm": "rtn"}}},
                                "gptq": {"from": "onnx", "quantize": {"precision": "int4", "int4": {"algorithm": "gptq"}}}},
        "validate": {"profiles": ["gen-fast.yaml"], "artifacts": ["int4"], "budgets": BUDGETS,
                     "options": {"generation": {"prompts": "prompts.txt", "prompt_tokens": 48, "new_tokens": 16,
                                                "window": 32}}},
        "gate": {"baseline": "previous"},
    }
    (root / "lm.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return {"root": root, "ckpt": ckpt, "recipe": root / "lm.yaml", "text": root / "story.txt",
            "sets": ("--set", f"teacher={ckpt}", "--set", f"data.eval={root / 'story.txt'}",
                     "--set", f"data.train={root / 'story.txt'}")}


@pytest.fixture(scope="module")
def first(lm):
    """The recipe run once (module scope: the second test reuses its cache)."""
    from compress.recipes.execute import run_recipe
    from compress.recipes.schema import parse_overrides

    return run_recipe(lm["recipe"], lm["root"] / "run", html=False, overrides=parse_overrides(
        [f"teacher={lm['ckpt']}", f"data.eval={lm['text']}", f"data.train={lm['text']}"]))


def jobs(index: dict) -> dict[str, dict]:
    return {j["name"]: j for j in index["jobs"]}


def test_a_generator_recipe_exports_quantizes_validates_and_gates(lm, first):
    from compress.artifact import load_artifact

    run_dir = lm["root"] / "run"
    j = jobs(first.index)
    assert [j[n]["status"] for n in ("onnx", "int4", "gptq", "validate/int4@gen-fast")] == ["ran"] * 4
    onnx, int4 = load_artifact(run_dir / j["onnx"]["path"]), load_artifact(run_dir / j["int4"]["path"])
    assert str(onnx.manifest.task) == "text-generation" and onnx.manifest.postprocess.cache is not None
    assert str(int4.manifest.precision) == "int4" and (int4.path / "genai_config.json").is_file()
    assert int4.manifest.steps[-1].config["int4"]["algorithm"] == "rtn"  # the step's option reached the quantizer
    assert int4.manifest.steps[-1].config["calibration"]["data"] is None  # round to nearest reads no text
    gptq = load_artifact(run_dir / j["gptq"]["path"]).manifest.steps[-1].config
    assert gptq["int4"]["algorithm"] == "gptq" and gptq["calibration"]["data"] == str(lm["text"])  # data.train
    v = j["validate/int4@gen-fast"]
    assert v["verdict"] == "pass" and first.verdict == "pass" and first.exit_code == 0
    assert v["decode_tokens_per_s"] > 0 and v["time_to_first_token_ms"] > 0 and 0 <= v["top1_agreement"] <= 1
    report = json.loads((run_dir / v["report"]).read_text())
    budgets = {b["name"]: b for b in report["budgets"]}
    for name, limit in BUDGETS.items():  # the recipe's budgets judged, the profile's (none) replaced
        assert budgets[name]["limit"] == limit and budgets[name]["status"] == "pass", budgets[name]
    assert budgets["min_decode_tokens_per_s"]["measured"] == pytest.approx(v["decode_tokens_per_s"])
    assert report["metrics"]["generation"]["prompts"] == 2  # the recipe's prompts file, relative to the recipe
    assert first.index["overrides"]["teacher"] == str(lm["ckpt"])
    assert [g["verdict"] for g in first.gate] == ["new"]  # no earlier run: nothing to compare with


def test_a_failing_budget_fails_the_run_and_only_the_validation_runs_again(lm, first, capsys):
    code, out, err = run(capsys, lm["recipe"], "--run-dir", lm["root"] / "run", "--no-html", *lm["sets"],
                         "--set", "validate.budgets.min_decode_tokens_per_s=1e9")
    assert code == 1, (out, err)
    assert "budget failed: validate/int4@gen-fast" in err and "Traceback" not in err
    index = json.loads((lm["root"] / "run" / "index.json").read_text())
    j = jobs(index)
    assert j["onnx"]["status"] == j["int4"]["status"] == j["gptq"]["status"] == "cached"  # the budget keys the
    # validation only
    assert j["validate/int4@gen-fast"]["status"] == "ran" and j["validate/int4@gen-fast"]["verdict"] == "fail"
    assert index["verdict"] == "fail" and "tokens/s decode" in out
    gated = index["gate"]["results"][0]  # against the first run: the generator's own figures
    assert gated["verdict"] != "new" and {"decode ms/token", "generation collapse"} <= {m["metric"] for m in gated["metrics"]}
    assert "index.json" in err  # --no-html: the failure points at what was written


@pytest.mark.parametrize("edit, words", [
    ({"steps": {"int4": {"from": "onnx", "quantize": {"precision": "int4", "mode": "static"}}}},
     ["lm.yaml:", "steps.int4.quantize.mode: --mode would be ignored for onnx", "causal LM"]),
    ({"steps": {"onnx": {"export": {"format": "onnx", "optimize": "O2"}}}},
     ["steps.onnx.export.optimize", "would be ignored", "causal LM"]),
    ({"steps": {"int4": {"from": "onnx", "quantize": {"precision": "int4", "int4": {"algorithm": "awq"}}}}},
     ["steps.int4.quantize.int4.algorithm: --int4-algorithm awq", "OpenVINO's"]),  # the quantizer's own rule, early
    ({"steps": {"onnx": {"export": {"format": "tensorrt"}}}},
     ["steps.onnx.export.format: TensorRT takes no causal LM", "format: onnx | openvino"]),
    ({"validate": {"profiles": ["host"], "options": {"label_column": "label"}}},
     ["validate.options.label_column", "would be ignored"]),
])
def test_what_a_generator_would_not_read_is_refused_before_any_job(lm, capsys, tmp_path, edit, words):
    recipe = yaml.safe_load(lm["recipe"].read_text())
    for key, value in edit.items():
        recipe[key] = {**recipe[key], **value} if key == "steps" else value
    bad = lm["root"] / "bad" / "lm.yaml"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    code, _, err = run(capsys, bad, "--run-dir", tmp_path / "run", *lm["sets"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "run").exists()  # refused at plan time: nothing written


def test_a_generators_option_in_a_recipe_of_another_model_is_refused(bert_classifier, capsys, tmp_path):
    recipe = tmp_path / "enc.yaml"
    recipe.write_text(yaml.safe_dump({"name": "enc", "teacher": str(bert_classifier), "steps": {
        "onnx": {"export": {}}, "int4": {"from": "onnx", "quantize": {"precision": "int4", "int4": {"algorithm": "hqq"}}}}}))
    code, _, err = run(capsys, recipe, "--dry-run")
    assert code == 2 and "steps.int4.quantize.int4.algorithm: --int4-algorithm applies to text generators only" in err


def test_set_reads_yaml_values_and_takes_paths_from_the_current_directory(tmp_path, monkeypatch):
    from compress.errors import ConfigError
    from compress.recipes.schema import apply_overrides, parse_overrides

    monkeypatch.chdir(tmp_path)
    recipe = {"name": "x", "steps": {"q": {"from": "e", "quantize": {}}}, "validate": [{"profiles": ["host"]}]}
    apply_overrides(recipe, parse_overrides([
        "teacher=model", "data.eval=texts/story.txt", "steps.q.quantize.accuracy.data=eval",
        "steps.q.quantize.accuracy.max_perplexity_increase=0.02", "validate.0.budgets.min_speedup=null",
        "validate.0.options.generation.prompts=p.txt"]))
    assert recipe["teacher"] == str(tmp_path / "model") and recipe["data"]["eval"] == str(tmp_path / "texts/story.txt")
    q = recipe["steps"]["q"]["quantize"]["accuracy"]
    assert q == {"data": "eval", "max_perplexity_increase": 0.02}  # a data name stays one; numbers are numbers
    assert recipe["validate"][0]["budgets"] == {"min_speedup": None}
    assert recipe["validate"][0]["options"]["generation"]["prompts"] == str(tmp_path / "p.txt")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["teacher"])
    with pytest.raises(ConfigError, match="is a list"):
        apply_overrides(recipe, {"validate.budgets": {}})


def test_the_shipped_recipe_names_what_it_needs_in_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "builtin:lm-stories", "--dry-run")
    assert code == 2 and "teacher: required field missing" in err and "--set teacher=DIR" in err
    code, _, err = run(capsys, "builtin:no-such", "--dry-run")
    assert code == 2 and "builtin:lm-stories" in err


# about 2 minutes on 2 cores: export, accuracy-aware INT4, validation of the real model
@needs_shared(STORIES, TINYSTORIES)
def test_stories260k_through_the_shipped_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # --set paths are relative to the current directory; runs/ lands here
    # the shipped recipe as it is, but shorter timed generations (CI time): the quality figures are the recipe's own
    code, out, err = run(capsys, "builtin:lm-stories", "--no-html", "--set", f"teacher={STORIES}",
                         "--set", f"data.eval={TINYSTORIES}", "--set", "validate.options.generation.prompt_tokens=32",
                         "--set", "validate.options.generation.new_tokens=16")
    index = json.loads(Path("runs/lm-stories/index.json").read_text())
    v = jobs(index)["validate/int4@host"]
    assert code == 0, (out, err, v)
    assert v["perplexity_increase"] <= 0.03 and v["top1_agreement"] >= 0.9 and v["decode_tokens_per_s"] >= 100
    step = json.loads((Path("runs/lm-stories") / jobs(index)["int4"]["path"] / "manifest.json").read_text())["steps"][-1]
    aware = step["metrics"]["accuracy_aware"]
    assert aware and step["config"]["accuracy"]["max_perplexity_increase"] == 0.02  # layers went back to 8 bits
