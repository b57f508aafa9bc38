"""The shipped ``builtin:lm-smaller`` recipe: a causal LM from its pretrained base through a LoRA fine-tune, a
half-depth student distilled, pruning, the FP32 export and INT4, validated here and estimated on a phone, gated. The
plan is checked (no training: CI time); the chain itself runs in benchmarks/generators/lm_smaller.py on a pretrained LM.
Material: the tiny random-weight Llama of tests/builders (8 layers, as the recipe expects), STORY's sentences as
the task's text."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.builders.lm import STORY, tiny_causal_lm


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm-smaller")
    tiny_causal_lm(root / "base", layers=8)
    (root / "task.txt").write_text("\n\n".join([STORY] * 4), encoding="utf-8")
    (root / "held.txt").write_text(STORY, encoding="utf-8")
    return root


def plan_of(root: Path, *sets: str):
    from compress.recipes.plan import make_plan
    from compress.recipes.schema import parse_overrides, read_recipe, recipe_file

    path = recipe_file("builtin:lm-smaller")
    recipe = read_recipe(path, parse_overrides([f"teacher.finetune.base={root / 'base'}",
                                                f"data.train={root / 'task.txt'}", f"data.eval={root / 'held.txt'}",
                                                *sets]))
    return make_plan(recipe, path.parent, root / "run")


def test_the_chain_goes_from_the_base_through_finetune_distill_prune_int4_to_a_phone(base):
    plan = plan_of(base)
    jobs = {j.name: j for j in plan.jobs}
    chain = [(n, jobs[n].verb, jobs[n].parent) for n in ("teacher", "student", "pruned", "onnx", "int4")]
    assert chain == [("teacher", "finetune", None), ("student", "distill", None), ("pruned", "prune", "student"),
                     ("onnx", "export", "pruned"), ("int4", "quantize", "onnx")]
    assert jobs["teacher"].data["base"] == str(base / "base")  # fine-tuned from the base the --set names
    assert jobs["teacher"].settings["lora"] == {"rank": 32, "alpha": 64}
    assert jobs["student"].settings["student"]["layers"] == 8 // 2  # half the base's depth
    # validated against the fine-tuned teacher the run makes, here and on the phone (ONNX Runtime on a Pixel 8)
    validations = {n: j for n, j in jobs.items() if j.verb == "validate"}
    assert set(validations) == {"validate/onnx@host", "validate/int4@host", "validate/int4@lm-pixel-8"}
    assert {j.settings["teacher"] for j in validations.values()} == {plan.teacher}
    assert Path(plan.teacher).parent == base / "run" / "steps"
    # the teacher is a causal LM (its base is): its INT4 reads no parity sample an encoder's quantize would take
    assert "sample_data" not in jobs["int4"].settings and jobs["int4"].settings["int4"]["algorithm"] == "rtn"


def test_the_phone_profile_is_a_pixel_8_running_onnx_runtime():
    from compress.profiles.load import load_profile
    from compress.recipes.schema import recipe_file

    phone = load_profile(str(recipe_file("builtin:lm-smaller").parent / "lm-pixel-8.yaml"))
    pixel = load_profile("pixel-8")
    assert phone.runtime.name == "onnxruntime" and phone.hardware == pixel.hardware


def test_a_base_that_is_not_a_causal_lm_keeps_the_encoder_rules(base, bert_classifier):
    from compress.recipes.schema import RecipeError

    with pytest.raises(RecipeError) as e:  # the recipe's INT4 options are a generator's
        plan_of(base, f"teacher.finetune.base={bert_classifier}")
    assert "applies to text generators only" in str(e.value) and "\n" not in str(e.value)
