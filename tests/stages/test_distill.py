"""Distillation (``compress.stages.distill`` and ``edgecompress distill``): student construction from the
teacher, the losses, neighbour augmentation, the length-grouped batch order, end-to-end runs on the tiny
fixtures (classifier and sentence encoder), Ctrl-C + --resume (bit-identical to an uninterrupted run),
the CLI's one-line errors, and a real two-process ``accelerate launch`` on CPU (gloo)."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import LABELS, SENTENCES, write_tsv

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from compress.artifact import Format, load_artifact
from compress.cli import cli
from compress.cli import main as cli_main
from compress.errors import ConfigError, DataError, OutputExistsError
from compress.stages.common import layer_list
from compress.stages.distill import distill
from compress.stages.distill.config import DistillConfig
from compress.stages.distill.losses import distill_loss, join_augment, neighbour_augment
from compress.stages.distill.student import build_student, count_parameters, evenly_spaced, load_student
from compress.stages.training import Interrupted, default_run_dir
from compress.stages.transfer import OutputPlan, length_grouped_order
from compress.tasks import Task
from compress.teachers.load import load_teacher
from tests.conftest import CPU_PROCESSES, free_port

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
ENV.pop("EDGECOMPRESS_DEBUG", None)

# Small and quick: 12 rows, batches of 4 (3 batches an epoch), a handful of steps.
FAST = {"max_steps": 4, "batch_size": 4, "eval_every": 2, "max_length": 32}


def cfg(**kw) -> DistillConfig:
    return DistillConfig.from_flat(**{**FAST, **kw})


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def layer_prefix(model) -> str:
    return layer_list(model)[0]


def deep_bert(layers: int = 4, **overrides):
    """An in-memory BERT classifier deeper than the fixtures (which have 2 layers)."""
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=2, **overrides,
    )
    return transformers.BertForSequenceClassification(config).eval()


def expected_source(name: str, prefix: str, keep: list[int]) -> str:
    """The teacher tensor a student tensor is initialised from (student layer j <- teacher layer keep[j])."""
    if name.startswith(prefix + "."):
        j, _, rest = name[len(prefix) + 1 :].partition(".")
        return f"{prefix}.{keep[int(j)]}.{rest}"
    return name


def assert_initialised_from(student, teacher, keep: list[int]) -> None:
    """Every student tensor equals the leading slice of its teacher tensor (the whole tensor when same shape)."""
    prefix = layer_prefix(student)
    assert prefix == layer_prefix(teacher)
    t_sd = teacher.state_dict()
    for name, value in student.state_dict().items():
        src = t_sd[expected_source(name, prefix, keep)]
        want = src[tuple(slice(0, s) for s in value.shape)]
        assert torch.equal(value, want), name


def unlabelled_tsv(directory: Path, name: str = "unlabelled.tsv") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("sentence\n" + "".join(f"{t}\n" for _, t in SENTENCES), encoding="utf-8")
    return path


def siblings(out: Path) -> list[str]:
    """Anything edgecompress left beside ``out`` (staging directories, run directories)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((f".{out.name}.", f"{out.name}.")))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("distill-data"))


@pytest.fixture(scope="module")
def teacher(bert_classifier):
    return load_teacher(bert_classifier)


# --- student construction ----------------------------------------------------------------------------


def test_evenly_spaced_always_ends_with_the_last_layer():
    assert evenly_spaced(6, 3) == [1, 3, 5]
    assert evenly_spaced(4, 2) == [1, 3]
    assert evenly_spaced(12, 4) == [2, 5, 8, 11]
    assert evenly_spaced(5, 1) == [4]
    assert evenly_spaced(5, 5) == [0, 1, 2, 3, 4]
    for n_teacher in range(1, 13):
        for n_student in range(1, n_teacher + 1):
            keep = evenly_spaced(n_teacher, n_student)
            assert len(keep) == n_student and keep[-1] == n_teacher - 1
            assert all(0 <= a < b for a, b in itertools.pairwise(keep)), keep


def test_layers_keeps_evenly_spaced_teacher_layers_with_their_weights():
    teacher_model = deep_bert(4)
    student, desc = build_student(teacher_model, DistillConfig.from_flat(layers=2))
    assert desc["kept_teacher_layers"] == [1, 3]
    assert student.config.num_hidden_layers == 2 and len(layer_list(student)[1]) == 2
    assert desc["tensors_fresh"] == 0 and desc["tensors_sliced"] == 0
    assert_initialised_from(student, teacher_model, [1, 3])
    # spot check without the helper's name mapping: the student's last block *is* the teacher's last block
    s_block, t_block = layer_list(student)[1][-1], layer_list(teacher_model)[1][-1]
    for (sn, sp), (tn, tp) in zip(s_block.named_parameters(), t_block.named_parameters(), strict=True):
        assert sn == tn and torch.equal(sp, tp)
    assert not torch.equal(next(layer_list(student)[1][0].parameters()), next(layer_list(teacher_model)[1][0].parameters()))
    assert count_parameters(student) < count_parameters(teacher_model)
    # copies, not views: training the student must not change the teacher
    with torch.no_grad():
        next(s_block.parameters()).add_(1.0)
    assert not torch.equal(next(s_block.parameters()), next(t_block.parameters()))


def test_keep_layers_picks_exactly_those_layers():
    teacher_model = deep_bert(4)
    student, desc = build_student(teacher_model, DistillConfig.from_flat(keep_layers=[2, 0]))
    assert desc["kept_teacher_layers"] == [0, 2]
    assert student.config.num_hidden_layers == 2
    assert_initialised_from(student, teacher_model, [0, 2])


@pytest.mark.parametrize("fixture", ["bert_classifier", "distilbert_classifier", "roberta_classifier"])
def test_build_student_on_each_architecture(fixture, request):
    loaded = load_teacher(request.getfixturevalue(fixture))
    teacher_model = loaded.model
    n = teacher_model.config.num_hidden_layers
    student, desc = build_student(teacher_model, DistillConfig.from_flat(layers=1))
    assert type(student) is type(teacher_model)
    assert desc["kept_teacher_layers"] == [n - 1]
    assert len(layer_list(student)[1]) == 1
    assert_initialised_from(student, teacher_model, [n - 1])
    assert count_parameters(student) < count_parameters(teacher_model)
    enc = loaded.tokenizer([t for _, t in SENTENCES[:3]], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = student.eval()(**enc).logits
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("fixture", ["bert_classifier", "roberta_classifier"])
def test_narrower_student_config_slices_the_teacher_weights(fixture, request):
    teacher_model = load_teacher(request.getfixturevalue(fixture)).model
    config = DistillConfig.from_flat(student_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1})
    student, desc = build_student(teacher_model, config)
    assert student.config.hidden_size == 16 and student.config.intermediate_size == 32
    assert student.config.num_hidden_layers == 1 and desc["kept_teacher_layers"] == [1]
    assert desc["init"] == "teacher config overrides" and desc["tensors_sliced"] > 0 and desc["tensors_fresh"] == 0
    assert_initialised_from(student, teacher_model, [1])
    assert count_parameters(student) < count_parameters(teacher_model) / 2
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    with torch.no_grad():
        assert student.eval()(input_ids=ids).logits.shape == (1, 2)


def test_distilbert_student_config_uses_transformers_names(distilbert_classifier):
    teacher_model = load_teacher(distilbert_classifier).model
    student, _ = build_student(teacher_model, DistillConfig.from_flat(student_config={"hidden_size": 16, "hidden_dim": 32}))
    assert student.config.dim == 16 and student.config.hidden_dim == 32
    assert_initialised_from(student, teacher_model, [0, 1])
    with pytest.raises(ConfigError, match="no setting 'intermediate_size'"):
        build_student(teacher_model, DistillConfig.from_flat(student_config={"intermediate_size": 32}))


@pytest.mark.parametrize("config, words", [
    (DistillConfig.from_flat(student_config={"intermediate_size": 128}), ["larger than the teacher"]),
    (DistillConfig.from_flat(student_config={"num_hidden_layers": 3}), ["larger than the teacher"]),
    (DistillConfig.from_flat(layers=3), ["--layers 3", "deeper than the teacher (2 layers)"]),
    (DistillConfig.from_flat(keep_layers=[0, 9]), ["--keep-layers 0,9", "9 is out of range", "0..1"]),
    (DistillConfig.from_flat(keep_layers=[-1]), ["-1 is out of range"]),
    (DistillConfig.from_flat(keep_layers=[1, 1]), ["repeated layer"]),
    (DistillConfig.from_flat(layers=1, keep_layers=[1]), ["--layers and --keep-layers both given"]),
    (DistillConfig.from_flat(student_config={"hidden_size": 24, "num_attention_heads": 5}), ["not divisible", "24", "5"]),
    (DistillConfig.from_flat(student_config={"hidden_sise": 16}), ["no setting 'hidden_sise'"]),
])
def test_build_student_refusals(teacher, config, words):
    with pytest.raises(ConfigError) as e:
        build_student(teacher.model, config)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert e.value.hint


# --- an existing student checkpoint ----------------------------------------------------------------------


def test_load_student_with_the_teachers_tokenizer(teacher, tmp_path):
    student, _ = build_student(teacher.model, DistillConfig.from_flat(layers=1))
    student.save_pretrained(str(tmp_path), safe_serialization=True)
    teacher.tokenizer.save_pretrained(str(tmp_path))
    model, desc, own_tokenizer = load_student(str(tmp_path), teacher, DistillConfig())
    assert desc == {"init": "checkpoint", "student_path": str(tmp_path.resolve()), "own_tokenizer": False}
    assert own_tokenizer is None
    assert model.config.num_hidden_layers == 1
    for name, value in student.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_student_with_another_tokenizer_takes_output_losses_only(teacher, tmp_path):
    """A student with its own tokenizer (a vocabulary-pruned one) is distilled on the outputs; intermediate
    losses, which compare token positions, are refused with the reason."""
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    small = tmp_path / "vocab"
    data = write_tsv(tmp_path / "d")
    prune(teacher.path, small, PruneConfig.from_flat(vocab_corpus=str(data), samples=4))
    with pytest.raises(ConfigError, match="intermediate-layer losses compare token positions"):
        load_student(str(small), teacher, DistillConfig.from_flat(hidden_weight=1.0))
    model, desc, own_tokenizer = load_student(str(small), teacher, DistillConfig())
    assert desc["own_tokenizer"] is True and len(own_tokenizer) < len(teacher.tokenizer)
    res = distill(teacher.path, data, tmp_path / "out", DistillConfig.from_flat(student=str(small), max_steps=2, batch_size=4,
                                                                     eval_every=2), eval_data=data)
    out = res.artifact
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(out.path))) == len(own_tokenizer)  # the student's own, kept
    assert res.metrics["eval_metric"] is not None


def test_load_student_with_other_labels_is_refused(teacher, tmp_path):
    student, _ = build_student(teacher.model, DistillConfig.from_flat(layers=1))
    student.config.id2label = {0: "bad", 1: "good"}
    student.config.label2id = {"bad": 0, "good": 1}
    student.save_pretrained(str(tmp_path), safe_serialization=True)
    teacher.tokenizer.save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="labels"):
        load_student(str(tmp_path), teacher, DistillConfig())


# --- losses -------------------------------------------------------------------------------------------


def plan(**kw) -> OutputPlan:
    base = {"classification": True, "pooling": None, "normalize": False, "mapping": [0], "hidden": False,
            "attention": False, "value_relation": False, "relation_heads": 2}
    return OutputPlan(**{**base, **kw})


def batch(rows: int = 4, width: int = 5, labels: list[int] | None = None, lengths: list[int] | None = None):
    lengths = lengths or [width] * rows
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    return {"attention_mask": mask, "labels": torch.tensor(labels if labels is not None else [-100] * rows)}


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_soft_loss_is_zero_for_the_teachers_logits():
    torch.manual_seed(0)
    logits = torch.randn(4, 3) * 3
    config = DistillConfig.from_flat(soft_weight=1.0, hard_weight=0.0)
    total, parts = distill_loss({"soft": logits.clone()}, {"soft": logits.clone()}, batch(), plan(), config, None)
    assert set(parts) == {"soft"}
    assert abs(parts["soft"]) < 1e-6 and abs(float(total)) < 1e-6
    total, parts = distill_loss({"soft": torch.randn(4, 3)}, {"soft": logits}, batch(), plan(), config, None)
    assert parts["soft"] > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_loss_is_tempered_kl_times_t_squared(temperature):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 3)) * 2, rng.normal(size=(4, 3)) * 2
    config = DistillConfig.from_flat(temperature=temperature, soft_weight=0.5, hard_weight=0.0)
    total, parts = distill_loss({"soft": torch.tensor(s)}, {"soft": torch.tensor(t)}, batch(), plan(), config, None)
    log_p, log_q = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
    kl = float((np.exp(log_p) * (log_p - log_q)).sum(-1).mean())
    assert parts["soft"] == pytest.approx(kl * temperature**2, rel=1e-5)
    assert float(total) == pytest.approx(0.5 * kl * temperature**2, rel=1e-5)


def test_hard_loss_ignores_unlabelled_rows():
    torch.manual_seed(0)
    s = torch.randn(4, 3)
    labels = [0, -100, 2, -100]
    config = DistillConfig.from_flat(soft_weight=0.0, hard_weight=1.0)
    _, parts = distill_loss({"soft": s}, {"soft": s}, batch(labels=labels), plan(), config, None)
    log_q = np_log_softmax(s.numpy().astype(np.float64))
    want = -(log_q[0, 0] + log_q[2, 2]) / 2
    assert parts["hard"] == pytest.approx(want, rel=1e-5)
    s2 = s.clone()
    s2[1] += 10.0
    s2[3] -= 10.0
    _, parts2 = distill_loss({"soft": s2}, {"soft": s2}, batch(labels=labels), plan(), config, None)
    assert parts2["hard"] == pytest.approx(parts["hard"], rel=1e-6)
    total, parts3 = distill_loss({"soft": s}, {"soft": s}, batch(), plan(), config, None)
    assert "hard" not in parts3 and float(total) == 0.0 and total.requires_grad is False


def test_hidden_loss_projects_a_narrower_student_and_masks_padding():
    torch.manual_seed(0)
    lengths = [5, 3]
    b = batch(rows=2, width=5, lengths=lengths)
    s_hidden = tuple(torch.randn(2, 5, 16) for _ in range(3))  # embeddings + 2 student layers
    proj = torch.nn.ModuleList(torch.nn.Linear(16, 32) for _ in range(2))
    with torch.no_grad():
        t_hidden = [proj[j](s_hidden[j + 1]).clone() for j in range(2)]
        for t in t_hidden:
            t[1, 3:] = 100.0  # padding: must not count
    config = DistillConfig.from_flat(soft_weight=0.0, hard_weight=0.0, hidden_weight=2.0)
    p = plan(hidden=True, mapping=[1, 3])
    total, parts = distill_loss({"soft": torch.zeros(2, 2), "hidden": s_hidden}, {"hidden": t_hidden}, b, p, config,
                                proj)
    assert parts["hidden"] == pytest.approx(0.0, abs=1e-10)
    t_hidden[0][0, 1] += 1.0  # one real token of mapped layer 0 is off by 1 in every dimension
    total, parts = distill_loss({"soft": torch.zeros(2, 2), "hidden": s_hidden}, {"hidden": t_hidden}, b, p, config,
                                proj)
    want = (1.0 / sum(lengths) + 0.0) / 2  # per-layer masked mean of the per-token MSE, averaged over layers
    assert parts["hidden"] == pytest.approx(want, rel=1e-4)
    assert float(total.detach()) == pytest.approx(2.0 * want, rel=1e-4)
    total.backward()
    assert proj[0].weight.grad is not None and proj[0].weight.grad.abs().sum() > 0


def attention_maps(rows: int, heads: int, width: int, lengths: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, heads, width, width, generator=g)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    return scores.masked_fill(mask[:, None, None, :] == 0, -1e9).softmax(-1)


def test_attention_loss_is_zero_for_identical_maps():
    lengths = [5, 2]
    b = batch(rows=2, width=5, lengths=lengths)
    config = DistillConfig.from_flat(soft_weight=0.0, hard_weight=0.0, attention_weight=1.0)
    p = plan(attention=True, mapping=[1])
    a = attention_maps(2, 2, 5, lengths, seed=0)
    s_out = {"soft": torch.zeros(2, 2), "attn": (a.clone(),)}
    _, parts = distill_loss(s_out, {"attn": [a.clone()]}, b, p, config, None)
    assert parts["attention"] == pytest.approx(0.0, abs=1e-6)
    other = attention_maps(2, 2, 5, lengths, seed=1)
    _, parts = distill_loss({"soft": torch.zeros(2, 2), "attn": (other,)}, {"attn": [a]}, b, p, config, None)
    assert parts["attention"] > 1e-3
    # a student with fewer heads is compared head-averaged: one head equal to the teacher's mean costs nothing
    one_head = a.mean(1, keepdim=True)
    _, parts = distill_loss({"soft": torch.zeros(2, 2), "attn": (one_head,)}, {"attn": [a]}, b, p, config, None)
    assert parts["attention"] == pytest.approx(0.0, abs=1e-6)


# --- augmentation and batch order ------------------------------------------------------------------------


def test_neighbour_augment_is_deterministic_and_sized(teacher):
    texts = [t for _, t in SENTENCES]
    emb = teacher.model.get_input_embeddings().weight.detach().numpy()
    a = neighbour_augment(texts, teacher.tokenizer, emb, copies=2, prob=0.5, seed=3)
    assert a == neighbour_augment(texts, teacher.tokenizer, emb, copies=2, prob=0.5, seed=3)
    assert len(a) == 2 * len(texts)
    assert a != neighbour_augment(texts, teacher.tokenizer, emb, copies=2, prob=0.5, seed=4)
    assert a != texts * 2  # something was replaced
    assert neighbour_augment(texts, teacher.tokenizer, emb, copies=0, prob=0.5, seed=3) == []


def test_neighbour_augment_replaces_only_whole_word_vocabulary_tokens(teacher):
    tok = teacher.tokenizer
    texts = [t for _, t in SENTENCES] + ["Zyzzyva quux GOOD film. [SEP] a"]
    emb = teacher.model.get_input_embeddings().weight.detach().numpy()
    vocab, special = tok.get_vocab(), set(tok.all_special_tokens)
    normalize = tok.backend_tokenizer.normalizer.normalize_str

    def whole_word(w: str) -> bool:
        return w in vocab and w.isalpha() and len(w) > 1 and not w.startswith("##") and w not in special

    out = neighbour_augment(texts, tok, emb, copies=2, prob=1.0, seed=0)
    replaced = kept = 0
    for i, new in enumerate(out):
        old_words, new_words = texts[i % len(texts)].split(), new.split()
        assert len(old_words) == len(new_words)
        for old, rep in zip(old_words, new_words, strict=True):
            if whole_word(normalize(old)):  # with prob 1 every replaceable word changes, to another whole word
                assert rep != normalize(old) and whole_word(rep), (old, rep)
                replaced += 1
            else:  # punctuation attached, out of vocabulary, one letter, special tokens: untouched
                assert rep == old, (old, rep)
                kept += 1
    assert replaced > 20 and kept > 10


def test_length_grouped_order_is_a_deterministic_permutation():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    order = length_grouped_order(lengths, 16, seed=5)
    assert sorted(order) == list(range(1000))
    assert order == length_grouped_order(lengths, 16, seed=5)
    assert order != length_grouped_order(lengths, 16, seed=6)
    assert length_grouped_order(np.array([], dtype=np.int64), 16, seed=0) == []


def test_length_grouped_order_makes_length_homogeneous_batches():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 200, size=1000)

    def batches(order):
        return [lengths[order[i : i + 16]] for i in range(0, len(order), 16)]

    def padding(order):
        return sum(int(b.max()) * len(b) - int(b.sum()) for b in batches(order))

    # one window over everything: every batch is a run of the length-sorted order (ranges never overlap)
    whole = batches(length_grouped_order(lengths, 16, seed=0, window=1000))
    spans = sorted((int(b.min()), int(b.max())) for b in whole)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in itertools.pairwise(spans))
    # the default window (50 batches) pads far less than a random order does
    grouped = padding(length_grouped_order(lengths, 16, seed=0))
    shuffled = padding(rng.permutation(1000).tolist())
    assert grouped < shuffled / 4, (grouped, shuffled)


# --- end to end ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilled(bert_classifier, data, tmp_path_factory):
    """One library run: 1-layer student of the tiny BERT classifier, evaluated on labelled data."""
    out = tmp_path_factory.mktemp("distilled") / "student"
    events: list[dict] = []
    result = distill(bert_classifier, data, out, cfg(layers=1), eval_data=data, progress=events.append)
    return result, out, events


def test_a_later_run_in_the_same_process_may_change_the_precision(bert_classifier, data, tmp_path):
    """Accelerate keeps one state per process; a second distill from Python (or search) with another mixed
    precision must not be refused (found on a GPU: bf16 after an FP32 run raised ValueError)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # whatever earlier tests left
    Accelerator(mixed_precision="bf16")  # an earlier run in this process (bf16 autocast exists on the CPU too)
    try:
        r = distill(bert_classifier, data, tmp_path / "student", cfg(layers=1, max_steps=1, mixed_precision="no"))
        assert r.metrics["mixed_precision"] == "no" and r.metrics["steps"] == 1
    finally:
        AcceleratorState._reset_state()


def test_distill_writes_a_student_artifact(distilled, bert_classifier):
    result, out, _ = distilled
    art = load_artifact(out)  # verifies every file's sha256
    assert result.artifact.path == out
    assert art.manifest.format is Format.pytorch and art.manifest.task is Task.text_classification
    assert art.manifest.labels == [LABELS[0], LABELS[1]]
    assert [s.stage for s in art.manifest.steps] == ["distill"]
    step = art.manifest.steps[-1]
    m = step.metrics
    assert m == result.metrics
    assert step.config["student"]["layers"] == 1 and step.input_digest == load_teacher(bert_classifier).sha256
    assert m["student_parameters"] < m["teacher_parameters"]
    assert m["steps"] == m["total_steps"] == 4 and m["processes"] == 1 and m["stopped"] == "completed"
    assert m["metric"] == "accuracy" and m["eval_rows"] == len(SENTENCES)
    assert 0.0 <= m["eval_metric"] <= 1.0 and 0.0 <= m["teacher_eval_metric"] <= 1.0
    if m["teacher_eval_metric"]:
        assert m["retention"] == pytest.approx(m["eval_metric"] / m["teacher_eval_metric"])
    assert [h["step"] for h in m["history"]] == [2, 4]
    assert m["student"]["kept_teacher_layers"] == [1] and m["layer_mapping"] == [1]
    assert m["size_bytes"] == (out / "model.safetensors").stat().st_size < m["teacher_size_bytes"]
    # the student is an ordinary checkpoint with the teacher's tokenizer
    student = load_teacher(out)
    assert student.model.config.num_hidden_layers == 1
    assert count_parameters(student.model) == m["student_parameters"]
    assert student.tokenizer.get_vocab() == load_teacher(bert_classifier).tokenizer.get_vocab()
    # and it was trained: not the initial copy of the teacher's layer any more
    initial, _ = build_student(load_teacher(bert_classifier).model, DistillConfig.from_flat(layers=1))
    trained = weights(out)
    assert any(not torch.equal(trained[k], v) for k, v in initial.state_dict().items() if k in trained)
    # the run directory is removed after success; nothing else is left beside the artifact
    assert not default_run_dir(out).exists()
    assert siblings(out) == []


def test_distill_reports_progress(distilled):
    _, _, events = distilled
    teacher_events = [e for e in events if e["phase"] == "teacher"]
    train_events = [e for e in events if e["phase"] == "train"]
    assert teacher_events and teacher_events[-1]["done"] == teacher_events[-1]["total"] == len(SENTENCES)
    assert [e["step"] for e in train_events] == [1, 2, 3, 4]
    assert all(e["total"] == 4 and math.isfinite(e["loss"]) for e in train_events)
    assert {"soft", "hard"} <= set(train_events[0])
    assert train_events[1]["eval"] is not None and train_events[0]["eval"] is None


def test_distilled_student_exports_to_onnx(distilled, tmp_path):
    pytest.importorskip("onnxruntime")
    from compress.stages.export import export

    _, out, _ = distilled
    onnx = export(out, tmp_path / "onnx")  # parity against the PyTorch student is checked inside
    assert onnx.manifest.format is Format.onnx
    assert (tmp_path / "onnx" / onnx.manifest.model_file).is_file()
    assert [s.stage for s in onnx.manifest.steps] == ["distill", "export"]
    assert onnx.manifest.steps[-1].metrics["parity"]["max_abs_diff"] <= 1e-4


def test_distill_refuses_to_overwrite_without_force(distilled, bert_classifier, data):
    _, out, _ = distilled
    before = (out / "manifest.json").read_text()
    with pytest.raises(OutputExistsError, match="--force"):
        distill(bert_classifier, data, out, cfg(layers=1))
    assert (out / "manifest.json").read_text() == before


def test_distill_force_replaces_and_keep_run_keeps_the_run(bert_classifier, data, tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = distill(bert_classifier, data, out, cfg(layers=1, max_steps=2), force=True, keep_run=True)
    assert not (out / "old.txt").exists() and result.metrics["steps"] == 2
    run = default_run_dir(out)
    assert (run / "run_config.json").is_file()
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    # a custom run directory is used (and removed) instead of the default one
    other = tmp_path / "other"
    distill(bert_classifier, data, other, cfg(layers=1, max_steps=1), run_dir=tmp_path / "myrun")
    assert other.is_dir() and not (tmp_path / "myrun").exists() and not default_run_dir(other).exists()


def test_nothing_is_written_when_training_fails(bert_classifier, data, tmp_path):
    out = tmp_path / "student"

    def explode(event):
        if event["phase"] == "train" and event["step"] == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        distill(bert_classifier, data, out, cfg(layers=1), eval_data=data, progress=explode)
    assert not out.exists()
    assert siblings(out) == [f"{out.name}.run"]  # only the (resumable) run directory


def test_unlabelled_training_data_uses_soft_targets_only(bert_classifier, data, tmp_path):
    train = unlabelled_tsv(tmp_path)
    events: list[dict] = []
    result = distill(bert_classifier, train, tmp_path / "student", cfg(layers=1), eval_data=data,
                     progress=events.append)
    m = result.metrics
    assert m["transfer_rows"] == len(SENTENCES) and m["steps"] == 4
    train_events = [e for e in events if e["phase"] == "train"]
    assert all("soft" in e and "hard" not in e for e in train_events)
    assert all("hard" not in h and "soft" in h for h in m["history"])
    assert math.isfinite(m["eval_metric"])


@pytest.mark.transformers4("students built from teacher layers lose transformers 5's hidden-state capture")
@pytest.mark.parametrize("cache_limit_gb", [8.0, 1e-9], ids=["cached-targets", "teacher-online"])
def test_narrow_student_with_intermediate_losses(bert_classifier, data, tmp_path, cache_limit_gb):
    """Hidden-state (through learned projections), attention and value-relation transfer to a narrower
    student, with the teacher's intermediate outputs cached on disk or recomputed every step."""
    out = tmp_path / "student"
    config = cfg(student_config={"hidden_size": 16, "intermediate_size": 32}, hidden_weight=1.0,
                 attention_weight=1.0, value_relation_weight=1.0, cache_limit_gb=cache_limit_gb, grad_accum=2)
    events: list[dict] = []
    result = distill(bert_classifier, data, out, config, eval_data=data, progress=events.append)
    m = result.metrics
    assert m["cached_intermediate_targets"] is (cache_limit_gb > 1)
    assert m["steps"] == 4 and m["student"]["init"] == "teacher config overrides"
    losses = [e for e in events if e["phase"] == "train"]
    assert len(losses) == 4
    for e in losses:
        for k in ("soft", "hard", "hidden", "attention", "value_relation"):
            assert math.isfinite(e[k]) and e[k] >= 0, (k, e)
    student = load_teacher(out)
    assert student.model.config.hidden_size == 16 and student.model.config.num_hidden_layers == 2
    assert not any(k.startswith("proj") for k in weights(out))  # projections are training-only
    assert m["student_parameters"] == count_parameters(student.model) < m["teacher_parameters"] / 2


def test_augmented_rows_join_the_transfer_set(bert_classifier, data, tmp_path):
    result = distill(bert_classifier, data, tmp_path / "student", cfg(layers=1, augment=1, max_steps=2))
    assert result.metrics["transfer_rows"] == 2 * len(SENTENCES)
    assert result.metrics["augmented_rows"] == len(SENTENCES)


def test_joined_rows_are_sentence_length_and_keep_their_label():
    texts, labels = [t for _, t in SENTENCES], [y for y, _ in SENTENCES]
    joined, joined_labels = join_augment(texts, labels, 2, seed=0)
    assert len(joined) == 2 * len(texts) and joined_labels == labels * 2
    by_label = {y: {t for t, z in zip(texts, labels) if z == y and len(t.split()) >= 3} for y in (0, 1)}
    for t, y, row in zip(texts * 2, labels * 2, joined, strict=True):
        head, partner = row.split(" , ", 1)
        assert head == t and partner in by_label[y]  # the row itself, then a text of the same label
    assert join_augment(texts, labels, 2, seed=0) == (joined, joined_labels) != join_augment(texts, labels, 2, seed=1)
    unlabelled, ys = join_augment(texts, [-100] * len(texts), 1, seed=0)
    assert ys == [-100] * len(texts) and all(r.split(" , ", 1)[1] in set(texts) for r in unlabelled)


def test_joined_rows_join_the_transfer_set(bert_classifier, data, tmp_path):
    result = distill(bert_classifier, data, tmp_path / "student", cfg(layers=1, augment_join=1, augment=1, max_steps=2))
    assert result.metrics["transfer_rows"] == 3 * len(SENTENCES)
    assert result.metrics["joined_rows"] == len(SENTENCES)
    assert result.metrics["augmented_rows"] == len(SENTENCES)


def test_average_writes_the_mean_of_the_snapshots_and_resumes(bert_classifier, data, tmp_path):
    """--average writes the mean of the weights at every --eval-every steps from --average-start on, scores it on
    the eval data, and an interrupted run resumes its running mean."""
    snaps: list[dict] = []

    def keep(student, step, total):
        if step % 2 == 0 and step > 2:  # average_start 0.4 of 6 steps: the snapshots at steps 4 and 6
            snaps.append({k: v.detach().cpu().clone() for k, v in student.state_dict().items()})  # written on the CPU

    config = cfg(layers=1, max_steps=6, eval_every=2, average=True, average_start=0.4, lr=1e-2)
    result = distill(bert_classifier, data, tmp_path / "avg", config, eval_data=data, on_step=keep)
    assert result.metrics["chosen"] == "average of 2 snapshots (steps 4-6)"
    got = weights(tmp_path / "avg")
    for k, v in got.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (snaps[0][k] + snaps[1][k]) / 2, rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(snaps[0][k], snaps[1][k]) for k in got)  # the snapshots differ: a real mean
    assert result.metrics["history"][-1]["step"] == "average" and result.metrics["eval_metric"] is not None

    out = tmp_path / "student"
    with pytest.raises(Interrupted):
        distill(bert_classifier, data, out, config, eval_data=data, progress=interrupt_at(5))
    distill(bert_classifier, data, out, config, eval_data=data, resume=True)
    for k, v in weights(out).items():
        torch.testing.assert_close(v, got[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.transformers4("students built from teacher layers lose transformers 5's hidden-state capture")
def test_feature_extraction_teacher(bert_encoder, data, tmp_path):
    out = tmp_path / "student"
    result = distill(bert_encoder, data, out, cfg(layers=1, hidden_weight=1.0), eval_data=data)
    m = result.metrics
    assert m["metric"] == "cosine" and m["teacher_eval_metric"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= m["eval_metric"] <= 1.0 + 1e-6
    assert m["cached_intermediate_targets"] is True
    assert all("hidden" in h and "soft" in h and "hard" not in h for h in m["history"])
    art = load_artifact(out)
    assert art.manifest.task is Task.feature_extraction
    teacher_pp = load_teacher(bert_encoder).info.postprocess
    assert art.manifest.postprocess == teacher_pp
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (out / name).read_text() == (bert_encoder / name).read_text()
    assert (out / "2_Normalize").is_dir()
    student = load_teacher(out)
    assert student.info.postprocess == teacher_pp and student.model.config.num_hidden_layers == 1


def test_accuracy_metric_needs_labelled_eval_data(bert_classifier, data, tmp_path):
    out = tmp_path / "student"
    with pytest.raises(DataError) as e:
        distill(bert_classifier, data, out, cfg(layers=1, metric="accuracy"), eval_data=unlabelled_tsv(tmp_path))
    assert "accuracy" in str(e.value) and "agreement" in str(e.value)
    assert not out.exists() and not default_run_dir(out).exists()
    # the same data works with agreement (and auto picks it)
    result = distill(bert_classifier, data, out, cfg(layers=1, max_steps=1, eval_every=1),
                     eval_data=unlabelled_tsv(tmp_path))
    assert result.metrics["metric"] == "agreement"


# --- Ctrl-C and --resume ----------------------------------------------------------------------------------


def interrupt_at(step: int):
    def progress(event):
        if event["phase"] == "train" and event["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    return progress


@pytest.mark.parametrize("stop", [2, 3], ids=["mid-epoch", "epoch-end"])
def test_interrupt_and_resume_equals_an_uninterrupted_run(bert_classifier, data, tmp_path, stop):
    """Ctrl-C saves a checkpoint; --resume finishes with exactly the weights an uninterrupted run gets.

    Dropout is on (hidden_dropout_prob 0.1), so this also checks that RNG states survive the resume.
    """
    config = cfg(layers=1, max_steps=6, eval_every=3)
    reference = distill(bert_classifier, data, tmp_path / "ref", config, eval_data=data)

    out = tmp_path / "student"
    run = default_run_dir(out)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as e:
        distill(bert_classifier, data, out, config, eval_data=data, progress=interrupt_at(stop))
    assert e.value.exit_code == 130
    assert f"interrupted at step {stop}/6" in str(e.value) and "--resume" in str(e.value)
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert not out.exists()
    state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == stop
    assert (run / "run_config.json").is_file()

    # refusals that leave the run alone
    with pytest.raises(ConfigError) as e:
        distill(bert_classifier, data, out, cfg(layers=1, max_steps=6, eval_every=3, lr=2e-4), eval_data=data,
                resume=True)
    assert "different settings" in str(e.value) and "lr: 0.0001 -> 0.0002" in str(e.value)
    with pytest.raises(ConfigError) as e:
        distill(bert_classifier, data, out, config, resume=True)  # eval data dropped
    assert "eval data changed" in str(e.value)
    with pytest.raises(ConfigError) as e:
        distill(bert_classifier, data, out, config, eval_data=data)
    assert "holds an earlier run" in str(e.value) and "--resume" in str(e.value) and "--force" in str(e.value)
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == stop
    assert not out.exists()

    events: list[dict] = []
    resumed = distill(bert_classifier, data, out, config, eval_data=data, resume=True, progress=events.append)
    assert [ev["step"] for ev in events if ev["phase"] == "train"] == list(range(stop + 1, 7))
    assert not any(ev["phase"] == "teacher" for ev in events)  # the cached teacher outputs were reused
    assert resumed.metrics["steps"] == 6 and not run.exists()
    ref_w, res_w = weights(tmp_path / "ref"), weights(out)
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        torch.testing.assert_close(res_w[k], ref_w[k], rtol=0, atol=1e-6, msg=k)
    for a, b in zip(reference.metrics["history"], resumed.metrics["history"], strict=True):
        assert a["step"] == b["step"] and a["metric"] == b["metric"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert resumed.metrics["chosen"] == reference.metrics["chosen"]


def test_resume_without_a_run_is_refused(bert_classifier, data, tmp_path):
    with pytest.raises(ConfigError, match="no run to resume"):
        distill(bert_classifier, data, tmp_path / "student", cfg(layers=1), resume=True)


# --- CLI ----------------------------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The real entry point (``compress.cli.main``) in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    with warnings.catch_warnings(), pytest.raises(SystemExit) as e:
        cli_main([*map(str, args)])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> str:
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_cli_help():
    result = CliRunner().invoke(cli, ["distill", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--teacher", "--layers", "--keep-layers", "--student-config", "--student", "--resume",
                   "--keep-run", "--temperature", "accelerate launch"):
        assert option in result.output


def test_cli_distills(bert_classifier, data, tmp_path):
    out = tmp_path / "student"
    result = CliRunner().invoke(cli, [
        "-q", "distill", "--teacher", str(bert_classifier), "--train", str(data), "--eval", str(data),
        "--out", str(out), "--layers", "1", "--max-steps", "2", "--batch-size", "4", "--eval-every", "1",
        "--max-length", "32", "--lr", "3e-4",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.startswith(f"wrote {out}:") and "2 steps" in text and "retention" in text
    assert text.count("wrote ") == 1
    step = load_artifact(out).manifest.steps[-1]
    assert step.stage == "distill" and step.config["training"]["lr"] == 3e-4 and step.config["student"]["layers"] == 1


@pytest.fixture
def bad_json(tmp_path) -> Path:
    p = tmp_path / "student.json"
    p.write_text("{hidden_size: 16")
    return p


@pytest.mark.parametrize("extra, words", [
    ([], ["no student given", "--layers"]),
    (["--keep-layers", "0,9"], ["--keep-layers 0,9", "out of range"]),
    (["--keep-layers", "a,b"], ["--keep-layers", "comma-separated"]),
    (["--layers", "0"], ["--layers"]),
    (["--layers", "5"], ["--layers 5", "deeper than the teacher"]),
    (["--student-config", "BAD_JSON"], ["--student-config", "not a readable JSON file"]),
    (["--student-config", "LIST_JSON"], ["--student-config", "expected a JSON object"]),
    (["--student", "ROBERTA", "--layers", "1"], ["--student and --layers"]),
    (["--student", "ROBERTA", "--hidden-weight", "1"], ["tokenizers differ", "intermediate-layer losses"]),
    (["--layers", "1", "--metric", "accuracy", "--eval", "UNLABELLED"], ["--metric accuracy", "no labels"]),
    (["--layers", "1", "--resume"], ["no run to resume"]),
    (["--layers", "1", "--mixed-precision", "fp16"], ["needs a CUDA GPU"]),
])
def test_cli_errors_are_one_line(capsys, bert_classifier, roberta_classifier, data, tmp_path, bad_json, extra, words):
    if "needs a CUDA GPU" in words and torch.cuda.is_available():
        pytest.skip("fp16 works on this machine")
    listing = tmp_path / "list.json"
    listing.write_text("[16]")
    subst = {"BAD_JSON": bad_json, "LIST_JSON": listing, "ROBERTA": roberta_classifier,
             "UNLABELLED": unlabelled_tsv(tmp_path)}
    out = tmp_path / "student"
    code, _, err = run_cli(capsys, "distill", "--teacher", bert_classifier, "--train", data, "--out", out,
                           "--max-steps", "1", *[subst.get(x, x) for x in extra])
    assert_one_line_error(code, err, *words)
    assert not out.exists() and not default_run_dir(out).exists()


def test_cli_existing_out(capsys, bert_classifier, data, tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    code, _, err = run_cli(capsys, "distill", "-t", bert_classifier, "--train", data, "-o", out, "--layers", "1")
    assert_one_line_error(code, err, "already exists", "--force")


def test_cli_error_from_a_fresh_interpreter(bert_classifier, data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "compress", "distill", "--teacher", str(bert_classifier), "--train", str(data),
         "--out", str(tmp_path / "s"), "--keep-layers", "0,9"],
        capture_output=True, text=True, env=ENV, timeout=300, check=False,
    )
    # loading a model in a fresh interpreter can take long enough to be reported (stderr is not a terminal)
    err = "".join(line for line in proc.stderr.splitlines(keepends=True)
                  if not line.rstrip().endswith("...") and " done in " not in line)
    assert_one_line_error(proc.returncode, err, "--keep-layers 0,9", "9 is out of range")
    assert not (tmp_path / "s").exists()


def test_keep_layers_out_of_the_teachers_range_is_refused_before_the_teacher_loads(bert_classifier, data, tmp_path,
                                                                                    monkeypatch):
    """config.json names the teacher's depth: an index past it is refused before transformers and the weights load
    (the fresh interpreter's refusal above: 23 s, 17 of them loading the teacher, now 1.6 s)."""
    import compress.teachers.load

    def no_load(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(compress.teachers.load, "load_teacher", no_load)
    with pytest.raises(ConfigError, match="9 is out of range; the teacher has 2 layers"):
        distill(bert_classifier, data, tmp_path / "s", cfg(keep_layers=[0, 9]))
    with pytest.raises(AssertionError, match="the teacher was loaded"):  # indices in range: on to the load
        distill(bert_classifier, data, tmp_path / "s", cfg(keep_layers=[0, 1]))
    assert not (tmp_path / "s").exists()


# --- several processes ------------------------------------------------------------------------------------


def test_accelerate_launch_two_cpu_processes(bert_classifier, data, tmp_path):
    """Two real processes on CPU (gloo). In accelerate 1.15 ``--cpu --num_processes 2`` starts *one* process
    unless an MPI hostfile is given; ``--multi_gpu`` starts two through torchrun, and ACCELERATE_USE_CPU=1 makes
    them a MULTI_CPU (gloo) group on a machine without GPUs."""
    out = tmp_path / "student"
    env = {**ENV, **CPU_PROCESSES}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", "1",
        "-m", "compress", "distill", "--teacher", str(bert_classifier), "--train", str(data), "--eval", str(data),
        "--out", str(out), "--layers", "1", "--max-steps", "4", "--batch-size", "2", "--eval-every", "2",
        "--max-length", "32",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert " ".join(proc.stdout.split()).count("wrote ") == 1, proc.stdout  # the main process reports
    art = load_artifact(out)
    m = art.manifest.steps[-1].metrics
    assert m["processes"] == 2 and m["steps"] == 4 and m["stopped"] == "completed"
    # 12 rows, 2 per process and batch: 3 optimizer steps per epoch
    assert m["epochs"] == pytest.approx(4 / 3, abs=1e-3)
    assert load_teacher(out).model.config.num_hidden_layers == 1
    assert not default_run_dir(out).exists() and siblings(out) == []


def test_a_narrower_student_of_a_sentence_encoder_is_refused_in_one_line(bert_encoder, tmp_path, capfd):
    """A sentence encoder's output is its embedding: a student of another width cannot be compared with it (it used
    to end in an unexpected RuntimeError from the loss), nor replace it. One line, exit 2, nothing written."""
    import json

    from tests.builders.cli import assert_one_line_error, in_process
    from tests.conftest import write_tsv

    (tmp_path / "w.json").write_text(json.dumps({"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}))
    train = write_tsv(tmp_path)
    proc = in_process(capfd, "distill", "--teacher", bert_encoder, "--train", train, "--student-config",
                      tmp_path / "w.json", "--max-steps", "2", "--out", tmp_path / "s")
    assert_one_line_error(proc, "16 dimensions", "the teacher's 32", "its own width", code=2)
    assert not (tmp_path / "s").exists()


def test_a_sentence_encoders_search_keeps_its_width(bert_encoder, tmp_path):
    from compress.errors import ConfigError
    from compress.progress import to_lines
    from compress.search.config import SearchConfig
    from compress.search.directory import Search
    from tests.conftest import write_tsv

    train = write_tsv(tmp_path)
    base = dict(teacher=str(bert_encoder), profile="host", train=str(train), eval=str(train), holdout=str(train))
    lines: list[str] = []
    s = Search(SearchConfig(**base), tmp_path / "a", to_lines(lines.append))
    assert s.space.shape.embeds and s.space["width"] == [1.0] and any(ln.startswith("width: kept") for ln in lines)
    with pytest.raises(ConfigError, match="--space width"):
        Search(SearchConfig(**base, space={"width": [0.5]}), tmp_path / "b")



def test_distill_and_prune_refuse_a_regression_teacher_in_one_line(bert_regressor, tmp_path, capsys):
    """A regressor gives numbers, not logits or embeddings. A text one stopped both with an AttributeError (exit 3); an
    image one was read as a text model ("unsupported data format '.npz'", "--channels ... for text models"). (prune's
    own tests need transformers 4; this refusal does not.)"""
    from tests.builders.cli import main_error
    from tests.conftest import write_image_regressor

    image, _, npz = write_image_regressor(tmp_path)
    capsys.readouterr()  # transformers' save bars
    for teacher, data in ((bert_regressor, write_tsv(tmp_path, [("2.5", "fine."), ("0.5", "dull.")])), (image, npz)):
        line = main_error(capsys, "distill", "--teacher", teacher, "--train", data, "--layers", "1",
                          "--out", tmp_path / "s")
        assert "distill does not take a regression teacher yet" in line and "quantize or export" in line, line
    for source, option in ((bert_regressor, "--heads"), (image, "--channels")):
        line = main_error(capsys, "prune", source, option, "0.5", "--out", tmp_path / "p")
        assert "prune does not take a regression teacher yet" in line and "quantize or export" in line, line
    assert not (tmp_path / "s").exists() and not (tmp_path / "p").exists()
