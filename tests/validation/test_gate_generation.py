"""The gate on text generators: a release whose generations collapse fails (the reason printed), and one whose
decode tokens/s regressed beyond noise fails. The models are tiny random-weight Llamas (tests/builders): the collapsed
one really collapses (its LM head is zero, so every next token is the same), the slow one really is slower (four
times the layers); neither says anything of a real model."""

from __future__ import annotations

import copy
import json

import pytest

pytest.importorskip("scipy")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
pytest.importorskip("compress.tasks.generation")
pytest.importorskip("compress.data.text")  # CORE: text data and the causal LM teacher
pytest.importorskip("compress.teachers.lm")

from tests.builders.lm import STORY, needs_genai_builder, tiny_causal_lm
from tests.validation.test_validate_generation import gen_profile

pytestmark = needs_genai_builder()


def _zero_head(ckpt):
    """The checkpoint with its (untied) LM head zeroed: every logit is 0, greedy decoding repeats token 0."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(str(ckpt))
    return ckpt


@pytest.fixture(scope="module")
def releases(tmp_path_factory, home):
    """Three FP32 ONNX "releases" validated against one teacher (a tiny untied Llama): the teacher's own export, a
    collapsed one (LM head zeroed) and a slow one (8 layers instead of 2); their validation reports."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    root = tmp_path_factory.mktemp("gate-gen")
    teacher = tiny_causal_lm(root / "teacher", tied=False)
    collapsed = _zero_head(tiny_causal_lm(root / "collapsed", tied=False))
    slow = tiny_causal_lm(root / "slow", tied=False, layers=8)
    text = root / "story.txt"
    text.write_text("\n\n".join([STORY] * 3), encoding="utf-8")
    profile = gen_profile(root / "profiles", "gate-gen")
    reports = {}
    for name, ckpt in (("good", teacher), ("collapsed", collapsed), ("slow", slow)):
        art = export(ckpt, root / f"{name}-onnx", ExportConfig(format="onnx"))
        cfg = ValidateConfig.from_flat(profile=str(profile), data=str(text), teacher=str(teacher), prompt_tokens=32,
                                       new_tokens=16, window=32, cold_start=False)
        reports[name] = validate(art.path, cfg).model_dump(mode="json")
        (root / f"{name}.json").write_text(json.dumps(reports[name]), encoding="utf-8")
    reports["dir"] = root
    return reports


def test_a_release_whose_generations_collapse_fails_with_the_reason(releases):
    from compress.validation.gate import gate

    bad = releases["collapsed"]
    gen = bad["metrics"]["generation"]
    assert gen["collapse"] and ("one token repeated" in gen["collapse"] or "KL" in gen["collapse"])
    assert bad["verdict"] == "fail" and any(b["name"] == "no_collapse" and b["status"] == "fail"
                                            for b in bad["budgets"])
    result = gate(bad, releases["good"])
    c = next(m for m in result.metrics if m.metric == "generation collapse")
    assert result.verdict == "regressed" and result.exit_code == 1
    assert c.verdict == "regressed" and gen["collapse"] in c.note
    good = releases["good"]
    assert good["metrics"]["generation"]["collapse"] is None
    assert good["metrics"]["generation"]["top1_agreement"] == pytest.approx(1.0)  # the teacher's own export
    other = copy.deepcopy(bad)
    other["profile"]["name"] = "elsewhere"  # not comparable, but a collapse is the release's own failure
    assert gate(other, good).verdict == "regressed"


def test_the_cli_prints_the_collapse_reason(releases, capfd):
    from tests.builders.cli import in_process

    d = releases["dir"]
    proc = in_process(capfd, "gate", d / "collapsed.json", "--baseline", d / "good.json")
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, out
    reason = releases["collapsed"]["metrics"]["generation"]["collapse"]
    assert "generation collapse: REGRESSED" in out and reason in out


def test_a_release_whose_decode_is_slower_beyond_noise_fails(releases):
    from compress.validation.gate import GateConfig, gate

    slow, good = releases["slow"], releases["good"]
    assert slow["metrics"]["generation"]["decode_tokens_per_s"] < good["metrics"]["generation"]["decode_tokens_per_s"]
    assert "baseline" in slow["metrics"]["latency_samples_ms"]  # another model than the teacher: its FP32 timed
    assert "baseline" not in good["metrics"]["latency_samples_ms"]  # the teacher's own export: no second copy
    result = gate(slow, good)
    dec = result.metrics[0]
    assert dec.metric == "decode ms/token" and dec.verdict == "regressed" and result.verdict == "regressed"
    # the slowdown the gate reports is its threshold's side of the line, confirmed by the rank test; how far past the
    # line depends on how much of a tiny model's decode step is per-node overhead (0.24 to 0.6 measured on 2 cores)
    assert dec.change > GateConfig().latency_threshold and dec.p_value < 1e-3
    assert gate(good, slow).metrics[0].verdict == "improved"
