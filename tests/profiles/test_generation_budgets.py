"""A generator's default gate: every built-in profile judges a text generator's quality (perplexity increase, top-1
agreement, KL against the teacher) by default, with limits anchored on llama.cpp's own 4-bit formats of a real model
(SmolLM2-135M on WikiText-2, benchmarks/results/lm_int4_real.json): a Q4_0-class INT4 (+25% perplexity) fails, a
Q4_K_M-class one passes; the MiniLM-sized size and memory budgets do not judge a generator; a budget a user's profile
writes holds for generators too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.profiles.budgets import judge, verdict_of
from compress.profiles.load import list_profiles, load_profile

ROOT = Path(__file__).resolve().parents[2]
QUALITY = ("max_perplexity_increase", "min_top1_agreement", "max_kl")


def _measured(name: str) -> dict[str, float]:
    """A row of the real-model INT4 table as validate's metrics name its figures."""
    rows = json.loads((ROOT / "benchmarks" / "results" / "lm_int4_real.json").read_text())["rows"]
    row = next(r for r in rows if r["name"].startswith(name))
    return {"perplexity_increase": row["increase"], "top1_agreement": row["top1_agreement"], "kl_mean": row["kl_mean"]}


@pytest.mark.parametrize("name", [p.name for p in list_profiles()])
def test_every_builtin_profile_judges_a_generators_quality_by_default(name):
    limits = load_profile(name).generator_limits()
    assert (limits.max_perplexity_increase, limits.min_top1_agreement, limits.max_kl) == (0.05, 0.80, 0.10)


@pytest.mark.parametrize("name", ["host", "raspberry-pi-5", "pixel-8", "jetson-orin-nano-gpu", "nvidia-t4"])
def test_a_classifiers_size_and_memory_budgets_do_not_judge_a_generator(name):
    profile = load_profile(name)
    assert profile.budgets.max_model_size_mb is not None  # a MiniLM's, for classifiers
    limits = profile.generator_limits()
    assert limits.max_model_size_mb is None and limits.max_peak_memory_mb is None


def test_a_q4_0_class_int4_fails_the_default_gate_and_a_q4_k_m_class_one_passes():
    limits = load_profile("host").generator_limits()
    judged = {r.name: r for r in judge(limits, _measured("llama.cpp q4_0")) if r.name in QUALITY}
    assert set(judged) == set(QUALITY) and not any(r.passed for r in judged.values())  # +24.9%: all three fail
    assert verdict_of(list(judged.values())) == "fail"
    for row in ("llama.cpp q4_k_m", "quantize's default"):  # +3.8% / +0.5%: all three hold
        judged = [r for r in judge(limits, _measured(row)) if r.name in QUALITY]
        assert len(judged) == 3 and all(r.passed for r in judged), (row, judged)


def test_without_text_a_generators_quality_is_unverified_not_passed():
    judged = {r.name: r for r in judge(load_profile("host").generator_limits(), {})}
    assert all(judged[n].status == "unverified" for n in QUALITY)


def test_a_budget_a_user_writes_holds_for_generators_too(tmp_path):
    """``budgets:`` in the user's own profile is meant for whatever it validates; its own ``generator_budgets:``
    still win for generators."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\nextends: host\nbudgets: {max_model_size_mb: 120, max_kl: 0.2}\n")
    limits = load_profile(str(mine)).generator_limits()
    assert (limits.max_model_size_mb, limits.max_kl, limits.max_perplexity_increase) == (120, 0.2, 0.05)
    both = tmp_path / "both.yaml"
    both.write_text("name: both\nextends: host\nbudgets: {max_model_size_mb: 120}\n"
                    "generator_budgets: {max_model_size_mb: 110}\n")
    assert load_profile(str(both)).generator_limits().max_model_size_mb == 110
    assert load_profile(str(both)).budgets.max_model_size_mb == 120


def test_the_budget_table_says_which_kind_of_model_each_budget_reads():
    """One table (BUDGETS) says what each budget reads: a generator's own budgets, the quality ones its held-out text
    judges, and those that read a forward pass's outputs (never judged for a generator) are its columns."""
    from compress.profiles.budgets import BUDGETS, budgets_of, judged_for, quality_of

    assert budgets_of("generation") == ("min_decode_tokens_per_s", "max_time_to_first_token_ms",
                                        "max_perplexity_increase", "min_top1_agreement", "max_kl")
    assert quality_of("generation") == QUALITY
    assert set(budgets_of("forward")) == {"min_accuracy_retention", "min_agreement", "min_output_cosine",
                                          "min_output_snr_db", "max_mae_increase"}
    assert not set(judged_for("generation")) & set(budgets_of("forward"))
    assert set(judged_for("forward")) | set(judged_for("generation")) == set(BUDGETS)
    b = load_profile("host").budgets
    assert BUDGETS["latency_p50_ms"].limit_in(b) == b.latency_ms.p50


def test_a_classifier_s_budget_under_generator_budgets_is_refused_in_one_line(tmp_path):
    """Issue 77: min_agreement under generator_budgets judges no generator (validate drops it for one): refused
    naming the generator's own quality budgets, not kept as if it held. The resolved profile shown by
    ``profiles show --yaml`` (every key, null) still reads back."""
    from compress.errors import ProfileError

    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\nextends: host\ngenerator_budgets: {min_agreement: 0.9, max_kl: 0.2}\n")
    with pytest.raises(ProfileError, match=r"mine.yaml: generator_budgets: min_agreement judge a classifier's") as e:
        load_profile(str(mine))
    assert "max_perplexity_increase, min_top1_agreement, max_kl" in e.value.hint
    mine.write_text("name: mine\nextends: host\ngenerator_budgets: {max_kl: 0.2, min_agreement: null}\n")
    assert load_profile(str(mine)).generator_limits().max_kl == 0.2
