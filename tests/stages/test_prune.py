"""Pruning: smaller tensors chosen by importance, vocabulary pruning with its proof, sparsity, recovery,
budgets, export of the result, and the CLI's one-line errors. Tiny random models; the whole file runs
in well under a minute on two cores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import LABELS, SENTENCES, _bert_config, _save_wordpiece_tokenizer, write_tsv

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from compress.artifact import Format, load_artifact
from compress.stages.prune import prune
from compress.stages.prune.config import SEMI_STRUCTURED, PruneConfig
from compress.stages.prune.sparsity import Sparsifier, apply_sparsity, sparsity_report
from compress.stages.prune.structured import drop_layers, encoder_linears, importance_scores, prune_heads_and_ffn

HEADS, LAYERS, HEAD_DIM = 4, 3, 8

pytestmark = [pytest.mark.transformers4, pytest.mark.slow]  # head pruning throughout: transformers 5 removed prune_heads


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The console entry point in-process -> (exit code, stdout, stderr)."""
    from compress.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["-q", *map(str, args)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def one_line_error(code: int, err: str, *words: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def bert4(tmp_path_factory) -> Path:
    """A tiny BERT classifier with 4 heads in each of 3 layers (hidden 32, FFN 64)."""
    from transformers import BertForSequenceClassification

    d = tmp_path_factory.mktemp("bert4")
    n = _save_wordpiece_tokenizer(d)
    torch.manual_seed(1)
    cfg = _bert_config(n, num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()})
    cfg.num_attention_heads, cfg.num_hidden_layers = HEADS, LAYERS
    BertForSequenceClassification(cfg).eval().save_pretrained(str(d), safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("prune-data"), SENTENCES * 2)


@pytest.fixture(scope="module")
def pruned(bert4, data, tmp_path_factory):
    """bert4 with 40% of heads, half the FFN, one layer and the vocabulary outside the corpus removed."""
    cfg = PruneConfig.from_flat(heads=0.4, ffn=0.5, drop_layers=1, vocab_corpus=str(data), samples=24)
    return prune(bert4, tmp_path_factory.mktemp("pruned") / "art", cfg, train=data, eval_data=data)


def _load(path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(str(path)).eval(), AutoTokenizer.from_pretrained(str(path))


# --- structure ---------------------------------------------------------------------------------------------


def test_pruned_model_has_smaller_tensors_reloads_and_runs(pruned, bert4):
    old, _ = _load(bert4)
    new, tok = _load(pruned.path)  # plain from_pretrained: pruned_heads and sizes come from config.json
    m = pruned.manifest.steps[-1].metrics
    assert pruned.format is Format.pytorch and pruned.manifest.steps[-1].stage == "prune"
    cfg = new.config
    assert cfg.num_hidden_layers == 2 and cfg.intermediate_size == 32 and cfg.vocab_size < 500
    heads = [len(layer.attention.self.query.weight) // HEAD_DIM for layer in new.bert.encoder.layer]
    assert sum(heads) == m["heads"]["after"] == 5 and min(heads) >= 1
    assert heads == [HEADS - len(cfg.pruned_heads.get(i, [])) for i in range(2)]
    layer = new.bert.encoder.layer[0]
    assert layer.intermediate.dense.weight.shape == (32, 32) and layer.output.dense.weight.shape == (32, 32)
    assert new.bert.embeddings.word_embeddings.weight.shape == (m["vocab"]["after"], 32)
    n_old, n_new = sum(p.numel() for p in old.parameters()), sum(p.numel() for p in new.parameters())
    assert (m["parameters_before"], m["parameters_after"]) == (n_old, n_new) and n_new < 0.6 * n_old
    assert m["size_bytes_after"] < m["size_bytes_before"] and m["reload_check"]["max_abs_diff"] == 0.0
    with torch.inference_mode():
        logits = new(**tok(["a gripping film.", "dull."], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    imp = m["importance"]
    assert len(imp["heads"]) == LAYERS and all(len(h) == HEADS for h in imp["heads"]) and len(imp["layers"]) == LAYERS
    assert m["layers"]["dropped"] == [int(np.argmin(imp["layers"]))]


def test_pruning_a_pruned_artifact_keeps_lineage_and_head_indices(pruned, tmp_path):
    again = prune(pruned.path, tmp_path / "again", PruneConfig.from_flat(heads=0.4, samples=8))
    assert [s.stage for s in again.manifest.steps] == ["prune", "prune"]
    assert again.manifest.source == pruned.manifest.source
    first = {int(k): set(v) for k, v in pruned.manifest.steps[-1].metrics["heads"]["removed"].items()}
    second = {int(k): set(v) for k, v in again.manifest.steps[-1].metrics["heads"]["removed"].items()}
    model, _ = _load(again.path)  # pruned_heads holds original indices of both rounds
    for layer in range(2):
        assert set(model.config.pruned_heads.get(layer, [])) == first.get(layer, set()) | second.get(layer, set())
        assert not first.get(layer, set()) & second.get(layer, set())
    assert again.manifest.steps[-1].metrics["heads"]["after"] == 3


def _constructed_model(seed: int = 0):
    """bert4-like model where, per layer, only head ``important[l]`` and neurons ``neurons[l]`` do anything."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = _bert_config(500, num_labels=2)
    cfg.num_attention_heads, cfg.num_hidden_layers = HEADS, LAYERS
    model = BertForSequenceClassification(cfg).eval()
    important = [2, 0, 3]
    rng = np.random.default_rng(seed)
    neurons = [sorted(rng.choice(64, 16, replace=False).tolist()) for _ in range(LAYERS)]
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):
            v = layer.attention.self.value
            for h in range(HEADS):
                if h != important[i]:
                    v.weight[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
                    v.bias[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
            up = layer.intermediate.dense
            dead = [j for j in range(64) if j not in neurons[i]]
            up.weight[dead] = 0
            up.bias[dead] = 0
    return model, important, neurons


def test_heads_and_neurons_are_chosen_by_importance(bert4):
    from transformers import AutoTokenizer

    model, important, neurons = _constructed_model()
    original_up = [layer.intermediate.dense.weight.detach().clone() for layer in model.bert.encoder.layer]
    tok = AutoTokenizer.from_pretrained(str(bert4))
    imp = importance_scores(model, tok, [t for _, t in SENTENCES], [lab for lab, _ in SENTENCES])
    for i in range(LAYERS):
        assert imp.heads[i][important[i]] > 0
        assert all(imp.heads[i][h] == 0 for h in range(HEADS) if h != important[i])
        assert set(np.flatnonzero(imp.ffn[i])) <= set(neurons[i])
    # the most heads that can go: 12 - 3 = 9, leaving exactly the constructed head in every layer
    rec = prune_heads_and_ffn(model, imp, heads=0.75, ffn=0.75)
    for i in range(LAYERS):
        assert model.config.pruned_heads[i] == sorted(set(range(HEADS)) - {important[i]})
        up = model.bert.encoder.layer[i].intermediate.dense.weight
        assert up.shape == (16, 32) and torch.equal(up, original_up[i][neurons[i]])
    assert rec["heads"]["per_layer_after"] == [1, 1, 1] and rec["ffn"]["after"] == 16
    # dropping a layer keeps the head bookkeeping of the others
    imp.layers[:] = [3.0, 1.0, 2.0]
    assert drop_layers(model, imp, 1)["dropped"] == [1]
    assert model.config.num_hidden_layers == 2 and set(model.config.pruned_heads) == {0, 1}


def test_emptying_a_layer_is_refused_or_avoided(bert4):
    from transformers import AutoTokenizer

    model, _important, _ = _constructed_model()
    tok = AutoTokenizer.from_pretrained(str(bert4))
    imp = importance_scores(model, tok, [t for _, t in SENTENCES[:4]])
    with pytest.raises(Exception, match=r"would empty a layer.*at most 9 heads.*--drop-layers"):
        prune_heads_and_ffn(model, imp, heads=0.8)
    # a skewed ranking that would empty layer 0 keeps its best head and removes others instead
    imp.heads = [np.array([0.0, 0.0, 0.0, 0.001]), np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 4])]
    rec = prune_heads_and_ffn(model, imp, heads=0.5)
    assert rec["heads"]["per_layer_after"][0] == 1 and sum(rec["heads"]["per_layer_after"]) == 6
    assert model.config.pruned_heads[0] == [0, 1, 2]


@pytest.mark.parametrize("fixture", ["distilbert_classifier", "roberta_classifier", "bert_encoder"])
def test_other_architectures(request, fixture, data, tmp_path):
    src = request.getfixturevalue(fixture)
    art = prune(src, tmp_path / "out", PruneConfig.from_flat(heads=0.25, ffn=0.5, vocab_corpus=str(data), samples=12))
    m = art.manifest.steps[-1].metrics
    assert m["heads"]["after"] == 3 and m["ffn"]["after"] == 32
    assert m["parameters_after"] < m["parameters_before"] and m["vocab"]["proof"]["identical"]
    assert m["vocab"]["after"] < m["vocab"]["before"] and m["reload_check"]["max_abs_diff"] == 0.0
    assert art.task == load_artifact(art.path).task
    if fixture == "bert_encoder":
        assert art.manifest.postprocess.pooling == "mean" and (art.path / "modules.json").is_file()


# --- vocabulary --------------------------------------------------------------------------------------------


def test_vocabulary_proof_holds_on_the_artifact(pruned, bert4, data):
    from compress.data.tables import load_dataset

    old, old_tok = _load(bert4)
    new, new_tok = _load(pruned.path)
    old_e, new_e = old.get_input_embeddings().weight, new.get_input_embeddings().weight
    texts = load_dataset(data).texts
    for text in texts:
        a, b = old_tok(text)["input_ids"], new_tok(text)["input_ids"]
        assert torch.equal(old_e[a], new_e[b]), text
    v = pruned.manifest.steps[-1].metrics["vocab"]
    assert v["proof"] == {"texts": len(texts), "tokens": v["corpus_tokens"], "identical": True,
                          "output_max_abs_diff": 0.0}
    assert v["eval_coverage"]["texts_unchanged"] == 1.0
    # out-of-corpus words split into characters (alphabet kept) instead of becoming [UNK]
    ids = new_tok("zygote")["input_ids"]
    assert new_tok.unk_token_id not in ids and new_tok.decode(ids, skip_special_tokens=True) == "zygote"
    # special tokens the corpus never produces ([PAD], [MASK], [UNK]) are kept too
    specials = [new_tok.convert_tokens_to_ids(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
    assert sorted(specials) == sorted(set(specials)) and max(specials) < new.config.vocab_size
    assert new_tok.convert_ids_to_tokens(specials) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (pruned.path / "vocab.txt").read_text().splitlines()[new_tok.cls_token_id] == "[CLS]"


def test_vocabulary_floor_and_bpe_merges(bert4, roberta_classifier):
    from transformers import AutoTokenizer

    from compress.stages.prune.vocab import plan_vocabulary, rebuild_tokenizer

    tok = AutoTokenizer.from_pretrained(str(bert4))
    base = plan_vocabulary(tok, ["dull."], keep_alphabet=False)
    floored = plan_vocabulary(tok, ["dull."], keep_alphabet=False, floor=20)
    assert base.alphabet == 0 and floored.floor == len(set(floored.keep) - set(base.keep)) > 0
    assert set(range(5, 25)) <= set(floored.keep)  # the 20 lowest ordinary ids ([PAD]..[MASK] are 0-4)
    # BPE: a kept token needs every token it is merged from, or tokenizers cannot rebuild the merges
    rtok = AutoTokenizer.from_pretrained(str(roberta_classifier))
    plan = plan_vocabulary(rtok, ["the plot is thin"], keep_alphabet=False)
    new = rebuild_tokenizer(rtok, plan.keep)
    a, b = rtok("the plot is thin")["input_ids"], new("the plot is thin")["input_ids"]
    assert [plan.keep[i] for i in b] == a


# --- sparsity and recovery ---------------------------------------------------------------------------------


def test_unstructured_sparsity_is_reported_honestly(bert4, tmp_path):
    art = prune(bert4, tmp_path / "sparse", PruneConfig.from_flat(sparsity=0.5))
    s = art.manifest.steps[-1].metrics["sparsity"]
    assert abs(s["achieved"] - 0.5) < 0.005 and s["mode"] == "unstructured"
    assert s["gzip_bytes_after"] < 0.8 * s["gzip_bytes_before"] and s["speedup"] is False
    assert "no speed-up" in s["note"] and "compress" in s["note"]
    model, _ = _load(art.path)
    assert abs(sparsity_report(model, 0.5)["achieved"] - s["achieved"]) < 1e-9
    assert s["model_file_gzip_bytes"] < art.size_bytes()


def test_semi_structured_2_4_pattern(bert4):
    model, _ = _load(bert4)
    rec = apply_sparsity(model, SEMI_STRUCTURED)
    assert rec["pattern_2_4_holds"] and rec["achieved"] == 0.5 and not rec["skipped"]
    for _, lin in encoder_linears(model):
        groups = (lin.weight.reshape(lin.out_features, -1, 4) != 0).sum(-1)
        assert int(groups.max()) <= 2


def test_cubic_schedule_reaches_the_target_and_never_regrows(bert4):
    sp = Sparsifier(0.6, total_steps=4)
    assert [round(sp.target_at(t), 4) for t in range(5)] == [0.0, 0.3469, 0.525, 0.5906, 0.6]
    model, _ = _load(bert4)
    seen = []
    zero_before = None
    for step in range(1, 5):
        with torch.no_grad():  # an "optimizer step" that would revive pruned weights
            for _, lin in encoder_linears(model):
                lin.weight.add_(1e-3)
        sp(model, step, 4)
        zeros = torch.cat([(lin.weight == 0).flatten() for _, lin in encoder_linears(model)])
        if zero_before is not None:
            assert bool(zeros[zero_before].all())
        zero_before = zeros
        seen.append(sparsity_report(model, 0.6)["achieved"])
    assert seen == sorted(seen) and abs(seen[-1] - 0.6) < 0.005


def test_recovery_distils_and_keeps_2_4_masks(bert4, data, tmp_path):
    cfg = PruneConfig.from_flat(heads=0.25, sparsity="2:4", recover_steps=3, recover_batch_size=8, samples=12,
                      teacher_cache=str(tmp_path / "teacher-cache"))
    art = prune(bert4, tmp_path / "rec", cfg, train=data, eval_data=data)
    m = art.manifest.steps[-1].metrics
    assert (tmp_path / "teacher-cache" / "key.json").is_file()  # kept for the next level of the same model
    assert m["recovery"]["steps"] == 3 and m["recovery"]["eval_metric"] is not None
    assert m["sparsity"]["pattern_2_4_holds"] and m["sparsity"]["schedule"].startswith("fixed 2:4")
    model, _ = _load(art.path)
    assert sparsity_report(model, "2:4")["pattern_2_4_holds"]
    # recovery changed the weights (it trained), the masks held
    before, _ = _load(bert4)
    assert not torch.equal(model.classifier.weight, before.classifier.weight)


def test_recovery_from_a_teacher_on_augmented_texts(bert4, data, tmp_path):
    """--teacher: recovery distils from that model, not the unpruned input; --recover-augment adds the
    embedding-neighbour copies of every text (distill's --augment), labelled by that teacher."""
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(bert4, teacher)
    rows = len(SENTENCES) * 2
    cfg = PruneConfig.from_flat(ffn=0.5, samples=8, recover_steps=2, recover_batch_size=4, recover_augment=1,
                      teacher=str(teacher))
    rec = prune(bert4, tmp_path / "rec", cfg, train=data).manifest.steps[-1].metrics["recovery"]
    assert rec["teacher"] == str(teacher.resolve())
    assert rec["transfer_rows"] == 2 * rows  # each text and its augmented copy


def test_recovery_on_joined_texts_writes_the_average_of_its_second_half(bert4, data, tmp_path):
    """--recover-augment-join adds sentence-length rows (distill's --augment-join); --recover-average writes the
    mean of the snapshots over the recovery's second half (distill's --average)."""
    cfg = PruneConfig.from_flat(ffn=0.5, samples=8, recover_steps=4, recover_batch_size=4, recover_augment_join=1,
                      recover_average=True)
    rec = prune(bert4, tmp_path / "rec", cfg, train=data).manifest.steps[-1].metrics["recovery"]
    assert rec["transfer_rows"] == 2 * len(SENTENCES) * 2  # each text and its joined copy
    assert rec["chosen"] == "average of 2 snapshots (steps 3-4)"


# --- export, budgets, inspect, CLI ---------------------------------------------------------------------------


def test_pruned_artifact_exports_to_onnx_and_int8(pruned, tmp_path):
    import onnx as onnx_lib

    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize

    onnx = export(pruned.path, tmp_path / "onnx", ExportConfig(optimize="O2"))  # per-layer head counts differ
    assert onnx.manifest.steps[-1].metrics["parity"]["max_abs_diff"] <= 1e-4
    # ONNX Runtime's O2 still fuses attention, reading each layer's head count from the graph
    graph = onnx_lib.load(str(onnx.model_path)).graph
    fused = [onnx_lib.helper.get_attribute_value(a) for n in graph.node if n.op_type == "Attention"
             for a in n.attribute if a.name == "num_heads"]
    assert fused == pruned.manifest.steps[-1].metrics["architecture"]["heads_per_layer"]
    assert [s.stage for s in onnx.manifest.steps] == ["prune", "export"]
    int8 = quantize(onnx, tmp_path / "int8")
    assert int8.size_bytes() < onnx.size_bytes()


def _profile(tmp_path: Path, **budgets) -> Path:
    p = tmp_path / "tiny.yaml"
    body = "".join(f"  {k}: {v}\n" for k, v in budgets.items())
    p.write_text(f"name: tiny-device\nextends: cpu-x86-avx2\nbudgets:\n{body}", encoding="utf-8")
    return p


def test_profile_budget_picks_the_least_pruning_that_fits(bert4, tmp_path):
    cfg = PruneConfig.from_flat(profile=str(_profile(tmp_path, max_model_size_mb=0.17)), budget_precision="fp32", samples=12)
    art = prune(bert4, tmp_path / "fit", cfg)
    b = art.manifest.steps[-1].metrics["budget"]
    sizes = {(c["heads"], c["ffn"]): c["size_mb"] for c in b["candidates"]}
    chosen = (b["chosen"]["heads"], b["chosen"]["ffn"])
    assert sizes[chosen] <= 0.17 and any(s > 0.17 for s in sizes.values())
    assert all(s > 0.17 for k, s in sizes.items() if k < chosen)


@pytest.mark.parametrize("args, words", [
    (["--heads", "1.0"], ["--heads", "less than 1"]),
    (["--ffn", "-0.1"], ["--ffn", "greater than or equal to 0"]),
    (["--sparsity", "1.5"], ["--sparsity", "outside [0, 1)"]),
    (["--sparsity", "3:8"], ["--sparsity", "2:4"]),
    (["--heads", "0.9"], ["would empty a layer", "--drop-layers"]),
    (["--drop-layers", "3"], ["at least one must stay"]),
    (["--recover-steps", "2"], ["needs --train"]),
    (["--ffn", "0.5", "--recover-augment", "1"], ["--recover-augment", "--recover-steps"]),
    (["--ffn", "0.5", "--recover-average"], ["--recover-average", "--recover-steps"]),
    ([], ["nothing to prune"]),
])
def test_cli_bad_input_is_one_line(capsys, bert4, tmp_path, args, words):
    code, _, err = run_cli(capsys, "prune", bert4, "--out", tmp_path / "x", "--samples", "4", *args)
    one_line_error(code, err, *words)
    assert not (tmp_path / "x").exists()


def test_cli_bad_corpus_and_unreachable_budget(capsys, bert4, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("label\tsentence\n", encoding="utf-8")
    one_line_error(*run_cli(capsys, "prune", bert4, "--out", tmp_path / "a", "--vocab-corpus", empty)[::2], "no rows")
    blank = write_tsv(tmp_path / "b", [(0, "   "), (1, " ")])
    one_line_error(*run_cli(capsys, "prune", bert4, "--out", tmp_path / "a", "--vocab-corpus", blank)[::2],
                   "empty text")
    from transformers import AutoTokenizer

    from compress.stages.prune.vocab import plan_vocabulary

    with pytest.raises(Exception, match="vocabulary corpus has no text"):
        plan_vocabulary(AutoTokenizer.from_pretrained(str(bert4)), ["  ", ""])
    prof = _profile(tmp_path, max_model_size_mb=0.001)
    line = one_line_error(*run_cli(capsys, "prune", bert4, "--out", tmp_path / "a", "--profile", prof,
                                   "--samples", "4")[::2], "cannot be met", "best reachable size")
    assert re.search(r"best reachable size \d+\.\d+ MB \(budget 0\.001 MB\)", line)
    assert not (tmp_path / "a").exists()


def test_cli_prune_and_inspect(bert4, data, tmp_path):
    from compress.cli import cli

    out = tmp_path / "cli"
    res = CliRunner().invoke(cli, ["-q", "prune", str(bert4), "--out", str(out), "--heads", "0.25", "--ffn", "0.25",
                                   "--vocab-corpus", str(data), "--sparsity", "0.3", "--samples", "8"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "heads: 12 -> 9" in flat and "vocabulary: 500 ->" in flat and "only the compressed size shrinks" in flat
    res = CliRunner().invoke(cli, ["inspect", str(out)], catch_exceptions=False)
    flat = " ".join(res.output.split())
    assert res.exit_code == 0 and "prune:" in flat and "ffn: 64 -> 48" in flat and "sparsity (unstructured)" in flat
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"][-1]["config"]["heads"] == 0.25


def test_reported_eval_accuracy_is_the_written_artifacts(pruned, bert4, data):
    """The accuracy prune reports is the written model's, run with its own (pruned) tokenizer."""
    import torch

    from compress.data.tables import load_dataset
    from compress.teachers.load import load_teacher, model_feed

    ev = pruned.manifest.steps[-1].metrics["eval"]
    written = load_teacher(pruned.path)
    assert len(written.tokenizer) < len(load_teacher(bert4).tokenizer)  # the vocabulary was pruned
    ds = load_dataset(data, label2id={"negative": 0, "positive": 1}, num_labels=2)
    enc = written.tokenizer(list(ds.texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        pred = written.model(**model_feed(written.model, enc)).logits.argmax(-1).numpy()
    assert ev["written"] == pytest.approx(float((pred == np.asarray(ds.labels)).mean()))
    assert ev["rows"] == len(ds.texts) and ev["teacher_path"] == str(bert4)
    assert ev["retention_vs_teacher"] == pytest.approx(ev["written"] / ev["teacher"])


def test_written_eval_predictions_keep_the_texts_order(bert4):
    """Batches run sorted by length; predictions must come back in the order of the texts."""
    from types import SimpleNamespace

    import torch

    from compress.stages.prune.evaluation import predictions
    from compress.teachers.load import load_teacher

    class ParityOfLength(torch.nn.Module):  # class = token count is odd: the answer depends on the row
        def forward(self, input_ids, attention_mask):
            odd = (attention_mask.sum(-1) % 2).float()
            return SimpleNamespace(logits=torch.stack([1 - odd, odd], -1))

    tok = load_teacher(bert4).tokenizer
    texts = [s for _, s in SENTENCES]
    expected = [len(tok(t)["input_ids"]) % 2 for t in texts]
    assert len(set(expected)) == 2 and sorted(texts, key=len) != texts  # a reordering would show
    assert predictions(ParityOfLength(), tok, texts, 128).tolist() == expected


@pytest.mark.parametrize("after", [True, False], ids=["vocab-then-recover", "recover-then-vocab"])
def test_recovery_runs_with_the_pruned_tokenizer(bert4, data, tmp_path, after):
    """By default the vocabulary is pruned first and recovery distils the student through its pruned tokenizer
    (the teacher through its own), so the model learns how text outside the corpus now splits."""
    corpus = write_tsv(tmp_path / "corpus", SENTENCES[: len(SENTENCES) // 2])
    cfg = PruneConfig.from_flat(ffn=0.5, vocab_corpus=str(corpus), samples=8, recover_steps=2, recover_batch_size=4,
                      recover_after_vocab=after)
    art = prune(bert4, tmp_path / "p", cfg, train=data, eval_data=data)
    m = art.manifest.steps[-1].metrics
    assert m["recovery"]["tokenizer"] == ("pruned vocabulary" if after else "original")
    assert m["vocab"]["recovered_after_pruning"] is after
    assert m["vocab"]["proof"]["texts"] == len(SENTENCES) // 2 and m["reload_check"]["max_abs_diff"] <= 1e-4
    from compress.teachers.load import load_teacher

    assert len(load_teacher(art.path).tokenizer) == m["vocab"]["after"] < m["vocab"]["before"]
    assert 0 <= m["eval"]["written"] <= 1 and m["eval"]["metric"] == "accuracy"


def test_recovery_order_matters_only_outside_the_corpus(bert4, data, tmp_path):
    """Vocabulary pruning is exact on its corpus: recovering on corpus text gives the same model in either
    order (bit for bit); with a smaller corpus, recovery after pruning trains on the new splits."""
    import hashlib

    def weights(corpus, after, name):
        cfg = PruneConfig.from_flat(ffn=0.5, vocab_corpus=str(corpus), samples=8, recover_steps=3, recover_batch_size=4,
                          recover_after_vocab=after)
        art = prune(bert4, tmp_path / name, cfg, train=data)
        return hashlib.sha256((art.path / "model.safetensors").read_bytes()).hexdigest()

    assert weights(data, True, "a") == weights(data, False, "b")
    half = write_tsv(tmp_path / "half", SENTENCES[: len(SENTENCES) // 2])
    assert weights(half, True, "c") != weights(half, False, "d")
