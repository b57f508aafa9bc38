"""Token classification (named entities): a tiny random BertForTokenClassification goes export -> INT8 -> validate,
judged by entity F1 (seqeval) on CoNLL data labelled with the teacher's own tags, so the teacher scores 1.0 and the
INT8 artifact's F1 is its agreement with it. The data is test material, not a claim about any real corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import NER_SENTENCES as SENTENCES
from conftest import NER_TAGS as TAGS

from compress.errors import ConfigError, DataError

pytestmark = pytest.mark.slow


def write_conll(path: Path, sentences: list[list[str]], tags: list[list[str]]) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, ts in zip(sentences, tags, strict=True):
        lines += [f"{w} NN O {t}" for w, t in zip(words, ts, strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def labelled(ner_teacher, tmp_path_factory) -> Path:
    """CoNLL data whose tags are the teacher's own predictions."""
    from compress.runtimes.torch_backend import TorchBackend
    from compress.tasks.entities import tags_of
    from compress.teachers.load import load_teacher

    backend = TorchBackend.from_teacher(load_teacher(ner_teacher))
    scores = backend.predict_text(SENTENCES)
    tags = tags_of(scores, TAGS, [len(s) for s in SENTENCES])
    assert sum(t.startswith("B-") for row in tags for t in row) >= 10  # there are entities to find
    return write_conll(tmp_path_factory.mktemp("ner-data") / "dev.txt", SENTENCES, tags)


@pytest.fixture(scope="module")
def ner_onnx(ner_teacher, tmp_path_factory):
    from compress.stages.export import export

    return export(ner_teacher, tmp_path_factory.mktemp("ner-onnx") / "fp32")


def test_a_token_classifier_is_read_as_one(ner_teacher, ner_onnx):
    from compress.teachers.load import load_teacher

    teacher = load_teacher(ner_teacher)
    m = teacher.manifest()
    assert (m.task, m.labels, m.preprocess.words) == ("token-classification", TAGS, True)
    assert m.outputs[0].name == "logits" and m.outputs[0].shape == ["batch_size", "sequence_length", len(TAGS)]
    assert ner_onnx.manifest.task == "token-classification" and ner_onnx.manifest.preprocess.words


def test_first_subtokens_reads_each_word_once():
    from compress.device.shipped import first_subtokens

    scores = np.arange(2 * 6 * 2, dtype=np.float32).reshape(2, 6, 2)
    word_ids = np.array([[-1, 0, 0, 1, -1, -1], [-1, 0, 1, 1, 2, -1]])
    out = first_subtokens(scores, word_ids)
    assert out.shape == (2, 3, 2)
    assert np.array_equal(out[0, :2], scores[0, [1, 3]]) and np.isnan(out[0, 2]).all()
    assert np.array_equal(out[1], scores[1, [1, 2, 4]])


def test_the_onnx_export_scores_the_teachers_entities(ner_onnx, labelled, fast_host):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    report = validate(ner_onnx, ValidateConfig.from_flat(data=str(labelled), cold_start=False, profile=fast_host))
    met = report.metrics
    assert met["metric_name"] == "entity_f1" and met["metric"] == 1.0 and met["teacher_metric"] == 1.0
    assert met["agreement"] == 1.0 and met["retention"] == 1.0
    assert met["eval_samples"] == len(SENTENCES)
    assert set(met["per_type"]) <= {"PER", "LOC", "ORG"} and sum(v["support"] for v in met["per_type"].values()) \
        == met["entities"] >= 10
    fid = met["output_fidelity"]["logits"]
    assert fid["cosine"] > 0.9999 and fid["top1_agreement"] == 1.0


def test_int8_is_judged_by_its_entities(ner_onnx, labelled, tmp_path, fast_host):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    q = quantize(ner_onnx, tmp_path / "int8", QuantizeConfig())
    report = validate(q, ValidateConfig.from_flat(data=str(labelled), cold_start=False, profile=fast_host))
    met = report.metrics
    assert met["metric_name"] == "entity_f1" and 0.0 <= met["metric"] <= 1.0
    assert met["agreement"] == met["metric"]  # the gold tags are the teacher's


@pytest.mark.parametrize("route", ["int4", "openvino-int8"])
def test_int4_and_openvino_keep_the_words(route, ner_teacher, ner_onnx, labelled, tmp_path, fast_host):
    """INT4 (ONNX Runtime) and OpenVINO INT8 (NNCF, calibrated on the CoNLL file's sentences) read the same words and
    are judged the same way."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    if route == "int4":
        q = quantize(ner_onnx, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", block_size=32))
    else:
        ov = export(ner_teacher, tmp_path / "ov", ExportConfig(format="openvino"))
        q = quantize(ov, tmp_path / "q", QuantizeConfig.from_flat(calibration=str(labelled)))
    assert q.manifest.preprocess.words and q.manifest.task == "token-classification"
    profile = fast_host if route == "int4" else "host"  # (host adapts to an OpenVINO artifact's runtime)
    met = validate(q, ValidateConfig.from_flat(data=str(labelled), cold_start=False, profile=profile)).metrics
    assert met["metric_name"] == "entity_f1" and met["agreement"] == met["metric"] and met["metric"] > 0.3
    assert q.manifest.steps[-1].metrics["layer_errors"]["count"] >= 12


@pytest.mark.after_transformers
def test_accuracy_aware_int4_holds_the_entity_f1(ner_onnx, labelled, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    q = quantize(ner_onnx, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", block_size=32, min_retention=0.95,
                                                           data=str(labelled), eval_samples=24))
    aa = q.manifest.steps[-1].metrics["accuracy_aware"]
    assert aa["metric"] == "entity_f1" and aa["baseline"] == 1.0 and aa["budget_met"]
    assert aa["final"]["metric"] >= 0.95 and aa["final"]["metric_of_written_model"] == aa["final"]["metric"]


def test_conll_and_json_lines_readers(tmp_path):
    from compress.data.words import load_word_dataset

    label2id = {t: i for i, t in enumerate(TAGS)}
    f = write_conll(tmp_path / "a.conll", [["EU", "rejects", "German"], ["Peter", "Blackburn"]],
                    [["B-ORG", "O", "O"], ["B-PER", "I-PER"]])
    ds = load_word_dataset(f, label2id=label2id)
    assert ds.texts == [["EU", "rejects", "German"], ["Peter", "Blackburn"]] and ds.labels == [[5, 0, 0], [1, 2]]
    j = tmp_path / "a.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in [{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]},
                                                    {"tokens": ["Peter"], "ner_tags": [1]}]), encoding="utf-8")
    assert load_word_dataset(j, label2id=label2id).labels == [[5, 0], [1]]
    assert load_word_dataset(f, texts_only=True).labels is None


@pytest.mark.parametrize(("text", "words"), [
    ("EU NNP B-ORG\nrejects VBZ B-MISC\n", "tag 'B-MISC' is not one of the model's labels"),
    ("EU NNP B-ORG\nrejects B-ORG\n", "2 columns where the file's first word line has 3"),
])
def test_bad_conll_is_one_line(tmp_path, text, words):
    from compress.data.words import load_word_dataset

    f = tmp_path / "bad.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=words):
        load_word_dataset(f, label2id={t: i for i, t in enumerate(TAGS)})


def test_labels_that_are_no_tag_scheme_are_refused():
    from compress.tasks.entities import check_scheme

    check_scheme(TAGS)
    with pytest.raises(ConfigError, match="not an entity tag scheme"):
        check_scheme(["LABEL_0", "LABEL_1"])


def test_cli_unknown_tag_exits_2(ner_onnx, tmp_path, capsys):
    from compress.cli import main

    bad = write_conll(tmp_path / "bad.txt", [["EU", "rejects"]], [["B-ORG", "B-MISC"]])
    with pytest.raises(SystemExit) as e:
        main(["validate", str(ner_onnx.path), "--data", str(bad), "--no-cold-start"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "B-MISC" in err[0], err



def test_distilling_a_token_classifier(ner_teacher, labelled, tmp_path, fast_host):
    """A 1-layer student from the teacher's layers, trained per token on its soft targets and the CoNLL tags, judged
    by entity F1 on the way; it is a token classifier itself, and exports and validates as one."""
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig
    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    result = distill(ner_teacher, labelled, tmp_path / "student",
                     DistillConfig.from_flat(layers=1, epochs=3, batch_size=8, eval_every=5, lr=1e-3, seed=0),
                     eval_data=labelled)
    m = result.artifact.manifest
    assert (m.task, m.preprocess.words, m.labels) == ("token-classification", True, TAGS)
    met = m.steps[-1].metrics
    assert met["metric"] == "accuracy" and met["teacher_eval_metric"] == 1.0  # the tags are the teacher's
    assert 0.0 <= met["eval_metric"] <= 1.0 and met["history"]
    onnx_student = export(result.artifact.path, tmp_path / "student-onnx")
    rep = validate(onnx_student, ValidateConfig.from_flat(data=str(labelled), teacher=str(ner_teacher), cold_start=False,
                                                profile=fast_host))
    assert rep.metrics["metric_name"] == "entity_f1"
    assert rep.metrics["metric"] == pytest.approx(met["eval_metric"], abs=0.02)


@pytest.mark.transformers4("head pruning: transformers 5 removed prune_heads")
def test_pruning_a_token_classifier(ner_teacher, labelled, tmp_path):
    """Heads and FFN neurons scored on the tagged sentences (cross-entropy per token), removed, recovered by a short
    distillation; the written model is a token classifier that reloads to the same per-token scores."""
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    art = prune(ner_teacher, tmp_path / "pruned", PruneConfig.from_flat(heads=0.5, ffn=0.5, recover_steps=4,
                                                             recover_batch_size=8), train=labelled)
    m = art.manifest
    assert (m.task, m.preprocess.words) == ("token-classification", True)
    met = m.steps[-1].metrics
    assert met["parameter_ratio"] < 0.95 and met["reload_check"]["max_abs_diff"] <= 1e-4
    assert met["importance"]["loss"].startswith("cross entropy with labels")
    assert met["recovery"]["steps"] == 4


def test_pruning_a_token_classifiers_vocabulary(ner_teacher, labelled, tmp_path, fast_host):
    """The tokens the tagged sentences tokenise to (their words joined) are kept; the pruned model tags those sentences
    exactly as the teacher does, and validates to the same entity F1."""
    from compress.stages.export import export
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    art = prune(ner_teacher, tmp_path / "pruned", PruneConfig.from_flat(vocab_corpus=str(labelled), ffn=0.25),
                train=labelled, eval_data=labelled)
    vocab = art.manifest.steps[-1].metrics["vocab"]
    assert vocab["after"] < vocab["before"] and vocab["proof"]["identical"]
    assert vocab["eval_coverage"]["token_coverage"] == 1.0 and vocab["eval_coverage"]["texts_unchanged"] == 1.0
    onnx = export(art.path, tmp_path / "onnx")
    met = validate(onnx, ValidateConfig.from_flat(data=str(labelled), teacher=str(ner_teacher), cold_start=False,
                                        profile=fast_host)).metrics
    assert met["metric_name"] == "entity_f1" and met["metric"] > 0.8 and met["agreement"] > 0.8


def test_dropping_layers_of_a_token_classifier(ner_teacher, labelled, tmp_path):
    """Layer dropping (any transformers): the layer whose skipping changes the per-token tags least goes."""
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    art = prune(ner_teacher, tmp_path / "pruned", PruneConfig.from_flat(drop_layers=1, ffn=0.25), train=labelled)
    met = art.manifest.steps[-1].metrics
    assert art.manifest.task == "token-classification" and met["architecture"]["layers"] == 1
    assert met["layers"]["dropped"] and met["reload_check"]["max_abs_diff"] <= 1e-4
