"""Extractive question answering: a tiny random BertForQuestionAnswering goes export -> INT8 -> validate, judged by
SQuAD's exact match and F1 on SQuAD-format data whose answers are the teacher's own spans (so the teacher scores 1.0
and an artifact's F1 is its agreement with it). The contexts and questions are test material written here, not a
claim about any real corpus; the metric is checked against values computed by hand from SQuAD's definitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import _bert_config, _save_model, _save_wordpiece_tokenizer

from compress.errors import DataError
from tests.builders.cli import main_error

#: a long context (well past the tiny model's 128 tokens: several windows) and a short one
LONG = ("the film was made in paris by a small team . " * 3 + "the director is anna and she works fast . "
        + "it rained all day in the city and nobody came to see the plot . " * 10)
SHORT = "the service was slow but the food made up for it ."
QUESTIONS = [("who is the director ?", LONG), ("where was the film made ?", LONG), ("what was slow ?", SHORT),
             ("what made up for it ?", SHORT), ("when did it rain ?", LONG)]


def squad(path: Path, rows: list[tuple[str, str, list[tuple[str, int]]]], **extra) -> Path:
    """A SQuAD-format file: one paragraph per distinct context, its questions with their answers."""
    paragraphs: dict[str, list] = {}
    for i, (q, c, answers) in enumerate(rows):
        paragraphs.setdefault(c, []).append({"id": f"q{i}", "question": q, **extra,
                                             "answers": [{"text": t, "answer_start": s} for t, s in answers]})
    doc = {"version": "1.1", "data": [{"title": "test", "paragraphs": [
        {"context": c, "qas": qas} for c, qas in paragraphs.items()]}]}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qa_teacher(tmp_path_factory) -> Path:
    """A tiny random BertForQuestionAnswering (hidden 32, 2 layers, 128 positions) with the tests' WordPiece
    tokenizer; its span head scaled so its answers vary."""
    import torch
    from transformers import BertForQuestionAnswering

    d = tmp_path_factory.mktemp("qa")
    n = _save_wordpiece_tokenizer(d)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(_bert_config(n)).eval()
    with torch.no_grad():
        model.qa_outputs.weight.mul_(20)
    return _save_model(model, d)


@pytest.fixture(scope="module")
def labelled(qa_teacher, tmp_path_factory) -> Path:
    """SQuAD data whose answers are the teacher's own best spans."""
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher
    from compress.validation.teacher_outputs import predict_answers

    backend = TorchBackend.from_teacher(load_teacher(qa_teacher))
    rows = predict_answers(backend, [q for q, _ in QUESTIONS], [c for _, c in QUESTIONS])
    spans = [(c[int(r[0, 0]):int(r[0, 1])], int(r[0, 0])) for r, (_, c) in zip(rows, QUESTIONS, strict=True)]
    assert all(t.strip() for t, _ in spans)
    return squad(tmp_path_factory.mktemp("qa-data") / "dev.json", [(q, c, [s]) for (q, c), s in
                                                                   zip(QUESTIONS, spans, strict=True)])


# -- the metric, by SQuAD's definitions ------------------------------------------------------------------------------

def test_answers_are_normalised_as_squads_script_does():
    from compress.tasks.qa import exact_match, normalize_answer, token_f1

    assert normalize_answer("The  Cat's hat!") == "cats hat"
    assert normalize_answer("an Apple, a day") == "apple day"
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    # pred {cat, sat}, truth {cat, sat, down}: precision 1, recall 2/3, F1 = 2 * 2/3 / (5/3) = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0


def test_em_and_f1_take_the_best_gold_answer_and_agreement_reads_the_teacher():
    from compress.tasks.qa import Answers, qa_metrics

    ctx = "denver broncos beat the carolina panthers in santa clara"
    labels = [Answers(ctx, ("Denver Broncos", "the Broncos")), Answers(ctx, ("Santa Clara, California",))]

    def row(text):  # a best_spans row pointing at ``text`` in the context
        a = ctx.index(text)
        return [[a, a + len(text)], [1.0, 1.0]]

    cand = np.array([row("broncos"), row("santa clara")], dtype=np.float32)
    ref = np.array([row("denver broncos"), row("santa clara")], dtype=np.float32)
    m = qa_metrics(cand, ref, labels)
    # q1: "broncos" vs "the Broncos" -> exact (articles dropped); q2: {santa, clara} vs {santa, clara, california}:
    # F1 0.8, not exact. EM = 1/2, F1 = (1 + 0.8) / 2
    assert (m["exact_match"], m["metric"]) == (pytest.approx(0.5), pytest.approx(0.9))
    assert (m["teacher_exact_match"], m["teacher_metric"]) == (pytest.approx(0.5), pytest.approx(0.9))
    # against the teacher: q1 F1 2/3 ({broncos} vs {denver, broncos}), q2 exact
    assert m["agreement"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["agreement_exact_match"] == pytest.approx(0.5)


# -- windows and the best span ---------------------------------------------------------------------------------------

def test_a_long_context_is_cut_into_overlapping_windows_that_map_back_to_it(qa_teacher):
    from tokenizers import Tokenizer

    from compress.data.tokenization import qa_windows

    tok = Tokenizer.from_file(str(qa_teacher / "tokenizer.json"))
    w = qa_windows(tok, ["who is the director ?", "what was slow ?"], [LONG, SHORT], max_length=48, stride=8)
    counts = np.bincount(w.example)
    assert counts[1] == 1 and counts[0] >= 4  # only the long context is cut
    q_ids = tok.encode("who is the director ?", add_special_tokens=False).ids
    ids = w.arrays["input_ids"]
    spans = []
    for r in np.flatnonzero(w.example == 0):
        assert list(ids[r, 1:1 + len(q_ids)]) == q_ids  # the question first, in every window
        inside = w.offsets[r, :, 0] >= 0
        assert (w.arrays["token_type_ids"][r][inside] == 1).all()
        for a, b in w.offsets[r][inside]:  # each context token's offsets read its own text in the context
            assert tok.encode(LONG[a:b], add_special_tokens=False).ids, (a, b)
        spans.append((w.offsets[r][inside][0, 0], w.offsets[r][inside][-1, 1]))
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        assert a0 < a1 < b0 < b1  # consecutive windows overlap (the stride) and move forward
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG.rstrip())
    # training labels: the tokens holding the answer, or 0 ([CLS]) where a window lacks it
    a = LONG.index("anna")
    s, e = w.positions([a, 0], [a + 4, 3])
    holds = [r for r in np.flatnonzero(w.example == 0) if s[r]]
    assert holds and all(LONG[w.offsets[r, s[r], 0]:w.offsets[r, e[r], 1]] == "anna" for r in holds)
    assert all(s[r] == e[r] == 0 for r in np.flatnonzero(w.example == 0) if r not in holds)


def test_the_best_span_is_chosen_over_windows_inside_the_context_and_not_too_long():
    from compress.tasks.qa import QAPostprocess, best_spans

    # two windows of one question: tokens 0-1 are the question (offsets -1), 2-5 context at characters 10k..10k+5
    offsets = np.full((2, 6, 2), -1)
    for w, base in ((0, 0), (1, 20)):
        for t in range(2, 6):
            offsets[w, t] = (base + 10 * (t - 2), base + 10 * (t - 2) + 5)
    start = np.array([[9.0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 2, 0]])  # 9 on the question: never chosen
    end = np.array([[0, 9.0, 0, 3, 0, 0], [0, 0, 0, 0, 0, 4]])
    rows = best_spans(start, end, offsets, np.array([0, 0]), 1, QAPostprocess(max_answer_length=30))
    assert rows[0, 0].tolist() == [40.0, 55.0] and rows[0, 1].tolist() == [2.0, 4.0]  # window 1: 2 + 4 > 1 + 3
    # at most 1 token: window 1's pair (tokens 4, 5) is too long; the best single token is window 1's token 5
    # (start 0 + end 4) over its token 4 (2 + 0) and window 0's token 3 (0 + 3)
    rows = best_spans(start, end, offsets, np.array([0, 0]), 1, QAPostprocess(max_answer_length=1))
    assert rows[0, 0].tolist() == [50.0, 55.0] and rows[0, 1].tolist() == [0.0, 4.0]
    end_before = np.array([[0, 0, 0, 0, 0, 0.0], [0, 0, 5, 0, 0, 0]])  # the highest end precedes every start
    rows = best_spans(np.array([[0, 0, 0, 0, 0, 0.0], [0, 0, 0, 0, 7, 0]]), end_before, offsets, np.array([0, 0]), 1)
    assert rows[0, 0, 0] <= rows[0, 0, 1]


# -- the reader's refusals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, extra, words", [
    ([("who ?", SHORT, [("food", 3)])], {}, ["'food' is not the span", "answer_start 3", "set answer_start to 29"]),
    ([("who ?", SHORT, [])], {}, ["has no answer", "does not mark it unanswerable"]),
    ([("who ?", SHORT, [])], {"is_impossible": True}, ["is_impossible", "SQuAD 2.0"]),
    ([("who ?", "   ", [(" ", 0)])], {}, ["paragraph 1 has an empty context"]),
])
def test_bad_squad_data_is_refused_in_one_line(tmp_path, rows, extra, words):
    from compress.data.squad import load_squad

    with pytest.raises(DataError) as e:
        load_squad(squad(tmp_path / "bad.json", rows, **extra))
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert e.value.hint and "\n" not in str(e.value)


def test_a_table_is_not_squad_data(tmp_path):
    from compress.data.squad import load_squad

    p = tmp_path / "rows.json"
    p.write_text(json.dumps({"data": [{"text": "hi", "label": 1}]}), encoding="utf-8")
    with pytest.raises(DataError, match="not SQuAD-format JSON"):
        load_squad(p)


# -- through the CLI: export -> INT8 -> validate ---------------------------------------------------------------------

def test_a_qa_checkpoint_exports_quantizes_and_validates(qa_teacher, labelled, tmp_path, fast_host):
    from compress.artifact import load_artifact
    from compress.cli import main

    fp32, int8, reports = tmp_path / "fp32", tmp_path / "int8", tmp_path / "reports"
    for args in (["export", qa_teacher, "--out", fp32], ["quantize", fp32, "--out", int8, "--calibration", labelled,
                                                          "--mode", "static"],
                 ["validate", int8, "--data", labelled, "--profile", fast_host, "--no-cold-start", "--no-baseline",
                  "--report-dir", reports]):
        with pytest.raises(SystemExit) as e:
            main(["-q", *map(str, args)])
        assert e.value.code in (0, 1), args  # validate exits 1 where a budget fails (the host's speed-up)
    m = load_artifact(fp32).manifest
    assert [o.name for o in m.outputs] == ["start_logits", "end_logits"] and m.task == "question-answering"
    assert m.postprocess.stride == 128
    metrics = json.loads((reports / "report.json").read_text())["metrics"]
    assert metrics["metric_name"] == "f1" and metrics["questions"] == len(QUESTIONS)
    assert metrics["teacher_metric"] == pytest.approx(1.0) and metrics["teacher_exact_match"] == pytest.approx(1.0)
    assert metrics["agreement"] == pytest.approx(metrics["metric"])  # the gold answers are the teacher's
    assert metrics["agreement"] >= 0.6 and metrics["retention"] == pytest.approx(metrics["metric"])


def test_validate_refuses_bad_qa_data_with_exit_2(qa_teacher, tmp_path, capsys):
    bad = squad(tmp_path / "bad.json", [("what was slow ?", SHORT, [("slow service", 4)])])
    line = main_error(capsys, "validate", qa_teacher, "--data", bad, "--no-cold-start", "--no-baseline")
    assert "not the span of its context" in line


def test_finetune_trains_a_span_head_on_squad_data(qa_teacher, labelled, tmp_path):
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig
    from compress.teachers.load import load_teacher

    base = tmp_path / "base"  # the tiny encoder without its head: what a pretrained base is
    from transformers import BertModel

    _save_model(BertModel.from_pretrained(str(qa_teacher)), base)
    load_teacher(qa_teacher).tokenizer.save_pretrained(str(base))
    result = finetune(base, labelled, tmp_path / "tuned", FinetuneConfig.from_flat(
        task="question-answering", max_steps=3, batch_size=4, max_length=48), eval_data=labelled)
    tuned = load_teacher(result.artifact.path)
    assert tuned.task == "question-answering" and tuned.output_names == ["start_logits", "end_logits"]
    assert result.metrics["train_windows"] > len(QUESTIONS)  # the long contexts were windowed
    assert 0.0 <= result.metrics["eval_squad"]["f1"] <= 1.0 and result.metrics["eval_squad"]["questions"] == 5


def test_distill_matches_the_teachers_start_and_end_logits(qa_teacher, labelled, tmp_path):
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig
    from compress.teachers.load import load_teacher

    result = distill(qa_teacher, labelled, tmp_path / "student", DistillConfig.from_flat(
        layers=1, max_steps=4, batch_size=4, eval_every=2), eval_data=labelled)
    student = load_teacher(result.artifact.path)
    m = result.metrics
    assert student.task == "question-answering" and student.model.config.num_hidden_layers == 1
    assert m["student_parameters"] < m["teacher_parameters"] and m["transfer_windows"] > len(QUESTIONS)
    assert m["teacher_eval_metric"] == pytest.approx(1.0)  # the gold answers are the teacher's own
    assert m["retention"] == pytest.approx(m["eval_metric"]) and 0.0 <= m["eval_metric"] <= 1.0


def test_distill_refuses_losses_a_span_head_has_no_use_for(qa_teacher, labelled, tmp_path):
    from compress.errors import ConfigError
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig

    with pytest.raises(ConfigError, match="start and end logits"):
        distill(qa_teacher, labelled, tmp_path / "s", DistillConfig.from_flat(layers=1, hidden_weight=1.0))


@pytest.mark.transformers4("head pruning: transformers 5 removed prune_heads")
def test_prune_scores_heads_on_spans_recovers_and_reports_squad_f1(qa_teacher, labelled, tmp_path):
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig
    from compress.teachers.load import load_teacher

    art = prune(qa_teacher, tmp_path / "pruned", PruneConfig.from_flat(heads=0.5, ffn=0.5, recover_steps=2,
                                                                       recover_batch_size=4, max_length=128),
                train=labelled, eval_data=labelled)
    m = art.manifest.steps[-1].metrics
    assert load_teacher(art.path).task == "question-answering"
    assert m["parameters_after"] < m["parameters_before"] and m["reload_check"]["max_abs_diff"] <= 1e-4
    assert m["importance"]["loss"].startswith("cross entropy with labels")  # the gold spans drove the scores
    assert m["eval"]["metric"] == "f1" and m["eval"]["unpruned"] == pytest.approx(1.0)
    assert m["eval"]["retention_vs_unpruned"] == pytest.approx(m["eval"]["written"])


def test_prune_refuses_vocabulary_pruning_of_a_question_answerer(qa_teacher, labelled, tmp_path):
    from compress.errors import ConfigError
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    with pytest.raises(ConfigError, match="vocabulary pruning of a question-answering model"):
        prune(qa_teacher, tmp_path / "p", PruneConfig.from_flat(vocab_corpus=str(labelled)), train=labelled)
