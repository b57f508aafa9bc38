"""Distilling a causal LM (task text-generation): a half-depth student from a tiny random Llama (test material: random
weights say nothing of quality, only that distillation moves the student towards its teacher), forward and reverse
KL on the teacher's cached top-k targets, on-policy batches, resume, and the refusals."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from tests.builders.cli import main_error
from tests.builders.lm import TINYSTORIES, tiny_causal_lm
from tests.builders.shared import shared_file

pytestmark = pytest.mark.slow

#: the settings every run here shares: 32-token windows, 8 per batch, soft targets only at T=1 (agreement with a
#: random teacher is what moves, not perplexity on the text)
BASE = dict(layers=2, max_length=32, batch_size=8, lr=3e-3, temperature=1.0, soft_weight=1.0, hard_weight=0.0,
            top_k=16, eval_every=100)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from click.testing import CliRunner

    from compress.artifact import load_artifact
    from compress.cli import cli

    text = shared_file(TINYSTORIES).read_text(encoding="utf-8")
    root = tmp_path_factory.mktemp("distill-lm")
    teacher = tiny_causal_lm(root / "teacher", layers=4)
    (root / "train.txt").write_text(text[:12000], encoding="utf-8")  # real text (TinyStories), ~3,900 tokens
    (root / "eval.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in text[-4000:].split("\n\n")) + "\n")
    # the command, with a causal LM's loss defaults (KL alone at T=1: BASE's); the other runs call the library
    result = CliRunner().invoke(cli, [
        "-q", "distill", "-t", str(teacher), "--train", str(root / "train.txt"), "--eval", str(root / "eval.jsonl"),
        "-o", str(root / "student"), "--layers", "2", "--max-length", "32", "--batch-size", "8", "--lr", "3e-3",
        "--top-k", "16", "--eval-every", "100", "--max-steps", "24", "--teacher-cache", str(root / "cache")],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = load_artifact(root / "student").manifest.steps[-1].metrics
    return {"root": root, "teacher": teacher, "metrics": metrics, "output": " ".join(result.output.split())}


def test_a_half_depth_student_moves_towards_its_teacher_and_is_written_as_a_causal_lm(lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.artifact import load_artifact

    m = lm["metrics"]
    assert m["student"]["kept_teacher_layers"] == [1, 3] and m["student"]["layer_choice"] == "evenly"
    assert m["student_parameters"] < m["teacher_parameters"]
    before, after = m["before"], m["after"]
    assert after["kl_mean"] < 0.8 * before["kl_mean"], (before, after)
    assert after["top1_agreement"] > before["top1_agreement"] + 0.05, (before, after)
    assert before["teacher_perplexity"] == after["teacher_perplexity"]  # the same eval windows, the same teacher
    out = lm["root"] / "student"
    art = load_artifact(out)
    assert str(art.manifest.task) == "text-generation"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("Once upon a time")["input_ids"][0] == 1  # BOS, as the teacher's tokenizer adds it
    assert not (lm["root"] / "student.run").exists()  # the run directory goes after success
    said = lm["output"]
    assert said.startswith(f"wrote {out}:") and "24 steps" in said
    assert f"top-1 agreement {before['top1_agreement']:.3f} -> {after['top1_agreement']:.3f}" in said, said


def test_the_teacher_cache_holds_top_k_per_position_and_is_reused(lm):
    from safetensors.torch import load_file

    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig

    cache = lm["root"] / "cache"
    index = np.load(cache / "topk_index.npy", mmap_mode="r")
    logp = np.load(cache / "topk_logp.npy", mmap_mode="r")
    tail = np.load(cache / "tail_logp.npy", mmap_mode="r")
    assert index.shape[1:] == (32, 16) and logp.shape == index.shape and tail.shape == index.shape[:2]
    labelled = np.load(cache / "labelled.npy")
    assert labelled.sum() == min(len(labelled), 24 * 8)  # only the windows 24 steps of 8 draw
    row = int(np.flatnonzero(labelled)[0])
    total = np.exp(logp[row]).sum(-1) + np.exp(tail[row])  # top k + the tail bucket: a distribution
    np.testing.assert_allclose(total, 1.0, atol=1e-4)
    assert (np.diff(logp[row], axis=-1) <= 0).all()  # most likely first
    # reverse KL, same targets: the teacher does not run again; a hook after every step (prune's sparsity masks)
    steps = []

    def mask(student, step, total):
        steps.append((step, total))
        student.model.layers[0].mlp.down_proj.weight[:, :16] = 0.0

    r = distill(lm["teacher"], lm["root"] / "train.txt", lm["root"] / "reverse",
                DistillConfig.from_flat(**BASE, max_steps=6, divergence="reverse"), eval_data=lm["root"] / "eval.jsonl",
                teacher_cache=cache, on_step=mask)
    assert r.metrics["teacher_labelled_rows"] == 0 and r.metrics["divergence"] == "reverse"
    assert r.metrics["after"]["kl_mean"] < r.metrics["before"]["kl_mean"]
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6] and {t for _, t in steps} == {6}  # (6: on the weights written)
    written = load_file(lm["root"] / "reverse" / "model.safetensors")
    assert not written["model.layers.0.mlp.down_proj.weight"][:, :16].any()


def test_topk_divergence_is_the_kl_of_the_coarsened_distributions():
    import torch

    from compress.stages.distill.losses import teacher_topk, topk_divergence

    torch.manual_seed(0)
    t, s = torch.randn(2, 5, 40) * 3, torch.randn(2, 5, 40) * 3
    mask = torch.ones(2, 5)
    full = teacher_topk(t, 40, 1.0)  # k = V: the exact KL
    lt, ls = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    exact = (lt.exp() * (lt - ls)).sum(-1).mean()
    assert torch.allclose(topk_divergence(s, full, mask, 1.0), exact, atol=1e-4)
    exact_rev = (ls.exp() * (ls - lt)).sum(-1).mean()
    assert torch.allclose(topk_divergence(s, full, mask, 1.0, reverse=True), exact_rev, atol=1e-4)
    top = teacher_topk(t, 8, 2.0)
    assert float(topk_divergence(t, top, mask, 2.0)) == pytest.approx(0.0, abs=1e-5)  # the teacher itself
    assert 0 < float(topk_divergence(s, top, mask, 2.0)) < 4 * float(exact)  # coarser: a lower bound, same scale
    half = torch.tensor([[1.0] * 5, [0.0] * 5])  # masked positions do not count
    assert torch.allclose(topk_divergence(s, full, half, 1.0), (lt.exp() * (lt - ls)).sum(-1)[0].mean(), atol=1e-4)


def test_on_policy_batches_train_on_the_students_samples_without_a_cache(lm):
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig

    r = distill(lm["teacher"], lm["root"] / "train.txt", lm["root"] / "on-policy",
                DistillConfig.from_flat(**BASE, max_steps=6, on_policy=1.0, on_policy_tokens=8),
                eval_data=lm["root"] / "eval.jsonl")
    m = r.metrics
    assert m["on_policy"] == 1.0 and m["teacher_cache_bytes"] == 0 and m["steps"] == 6
    assert m["after"]["kl_mean"] < m["before"]["kl_mean"]


def test_teacher_samples_add_windows_the_teacher_wrote_and_are_kept_for_resume(lm, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from compress.errors import ConfigError
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig
    from compress.stages.distill.lm import SAMPLES, sample_windows
    from compress.stages.training import Interrupted

    teacher = AutoModelForCausalLM.from_pretrained(lm["teacher"])
    windows = np.random.default_rng(0).integers(3, 512, (3, 32))
    state = torch.random.get_rng_state()
    a = sample_windows(teacher, windows, 5, seed=7, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone
    assert a.shape == (5, 32) and (a[:, :4] == windows[[0, 1, 2, 0, 1], :4]).all()  # an eighth of each as the prompt
    assert (a == sample_windows(teacher, windows, 5, seed=7, device="cpu")).all()  # seeded
    assert (a[:, 4:] != sample_windows(teacher, windows, 5, seed=8, device="cpu")[:, 4:]).any()
    eos = teacher.generation_config.eos_token_id
    assert eos is None or not np.isin(a[:, 4:], eos).any()  # a window runs on to its end

    def interrupt(event):
        if event.get("phase") == "train" and event["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    phases = []
    args = (lm["teacher"], lm["root"] / "train.txt", tmp_path / "student",
            DistillConfig.from_flat(**BASE, max_steps=6, teacher_samples=40))
    with pytest.raises(Interrupted):
        distill(*args, progress=lambda e: (phases.append(e.get("phase")), interrupt(e)))
    assert "samples" in phases and (tmp_path / "student.run" / SAMPLES).is_file()
    phases.clear()
    with pytest.raises(ConfigError, match="holds an unfinished run"):  # refused before the teacher writes again
        distill(*args, progress=lambda e: phases.append(e.get("phase")))
    assert "samples" not in phases
    m = distill(*args, resume=True, progress=lambda e: phases.append(e.get("phase"))).metrics
    assert "samples" not in phases  # the resumed run reads the samples the first one wrote
    assert m["teacher_samples"] == 40 and m["teacher_labelled_rows"] == 0 and m["steps"] == 6


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(lm, tmp_path):
    from safetensors.torch import load_file

    from compress.errors import ConfigError
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig
    from compress.stages.training import Interrupted

    def interrupt(event):
        if event.get("phase") == "train" and event["step"] == 10:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the loop checkpoints at the step boundary

    args = (lm["teacher"], lm["root"] / "train.txt", tmp_path / "student", DistillConfig.from_flat(**BASE, max_steps=24))
    with pytest.raises(Interrupted):
        distill(*args, eval_data=lm["root"] / "eval.jsonl", progress=interrupt)
    assert (tmp_path / "student.run" / "checkpoint.pt").is_file() and not (tmp_path / "student").exists()
    with pytest.raises(ConfigError, match=r"used different settings \(loss.divergence: 'forward' -> 'reverse'\)"):
        distill(*args[:3], DistillConfig.from_flat(**BASE, max_steps=24, divergence="reverse"), resume=True,
                eval_data=lm["root"] / "eval.jsonl")
    r = distill(*args, eval_data=lm["root"] / "eval.jsonl", resume=True)
    assert r.metrics["teacher_labelled_rows"] == 0  # the cached targets carried over
    resumed = load_file(tmp_path / "student" / "model.safetensors")
    whole = load_file(lm["root"] / "student" / "model.safetensors")
    for name, w in whole.items():
        assert np.allclose(resumed[name].numpy(), w.numpy(), atol=1e-5), name


def test_scored_layers_keep_the_layers_that_matter(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from compress.stages.distill.lm import score_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm(tmp_path / "t", layers=3))
    with torch.no_grad():  # layer 1 adds nothing to the residual stream: removing it changes nothing
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    scores = score_layers(model, np.random.default_rng(0).integers(3, 512, (4, 16)))
    assert scores[1] == pytest.approx(0.0, abs=1e-6) and min(scores[0], scores[2]) > 1e-3
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3  # put back


def test_bad_input_is_refused_in_one_line(lm, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    root = lm["root"]
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.")
    err = main_error(capsys, "distill", "-t", lm["teacher"], "--train", short, "-o", tmp_path / "a", "--layers", "2")
    assert "shorter than one window" in err and "--max-length" in err
    other = AutoModelForCausalLM.from_pretrained(lm["teacher"])
    other.resize_token_embeddings(640)  # another vocabulary
    other.model.layers = other.model.layers[:1]
    other.config.num_hidden_layers = 1
    other.save_pretrained(tmp_path / "other")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "other" / name).write_bytes((lm["teacher"] / name).read_bytes())
    err = main_error(capsys, "distill", "-t", lm["teacher"], "--train", root / "train.txt", "-o", tmp_path / "b",
                     "--student", tmp_path / "other", "--max-length", "32")
    assert "vocabulary" in err and "640" in err
    err = main_error(capsys, "distill", "-t", lm["teacher"], "--train", root / "train.txt", "-o", tmp_path / "c",
                     "--layers", "2", "--hidden-weight", "1")
    assert "next-token distributions only" in err
    err = main_error(capsys, "distill", "-t", lm["teacher"], "--train", root / "train.txt", "-o", tmp_path / "d",
                     "--layers", "4", "--layer-choice", "scored", "--max-length", "32")
    assert "as deep as the teacher (4 layers)" in err and "at most 3 layers" in err
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c", "d"))


def test_a_causal_lms_loss_defaults_apply_only_where_the_settings_leave_them():
    from compress.stages.distill.config import DistillConfig
    from compress.stages.distill.lm import lm_defaults

    plain = lm_defaults(DistillConfig.from_flat(layers=2)).loss
    assert (plain.temperature, plain.soft_weight, plain.hard_weight) == (1.0, 1.0, 0.0)
    given = lm_defaults(DistillConfig.from_flat(layers=2, temperature=2.0, hard_weight=0.5)).loss
    assert (given.temperature, given.soft_weight, given.hard_weight) == (2.0, 1.0, 0.5)
    assert DistillConfig.from_flat(layers=2).loss.temperature == 2.0  # an encoder's stay as measured on SST-2


def test_a_causal_lms_options_are_refused_for_an_encoder(bert_classifier, tsv_file, tmp_path, capsys):
    for flag, value in (("--divergence", "reverse"), ("--on-policy", "0.5"), ("--teacher-samples", "8"),
                        ("--layer-choice", "scored")):
        err = main_error(capsys, "distill", "-t", bert_classifier, "--train", tsv_file, "-o", tmp_path / "s",
                         "--layers", "1", flag, value)
        assert f"{flag} is for causal LM teachers" in err and f"drop {flag}" in err
    assert not (tmp_path / "s").exists()
