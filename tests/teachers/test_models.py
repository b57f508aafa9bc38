"""compress.teachers.load: teacher loading for every architecture, ONNX export parity, and every bad checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from compress.artifact import Format, Precision, load_artifact
from compress.errors import ModelLoadError
from compress.tasks import Task
from compress.tasks.embeddings import pooling_of
from compress.teachers.load import inspect_checkpoint, load_teacher

pytestmark = pytest.mark.slow

ARCHS = ["bert", "distilbert", "roberta", "bert-encoder"]
FIXTURE = {
    "bert": "bert_classifier",
    "distilbert": "distilbert_classifier",
    "roberta": "roberta_classifier",
    "bert-encoder": "bert_encoder",
}
EXPECTED = {
    # arch: (task, labels, pooling, normalize, model_type, has token_type_ids, max_length)
    "bert": (Task.text_classification, ["negative", "positive"], None, False, "bert", True, 128),
    "distilbert": (Task.text_classification, ["negative", "positive"], None, False, "distilbert", False, 128),
    "roberta": (Task.text_classification, ["negative", "positive"], None, False, "roberta", False, 64),
    "bert-encoder": (Task.feature_extraction, None, "mean", True, "bert", True, 64),
}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def checkpoint(arch, request) -> Path:
    return request.getfixturevalue(FIXTURE[arch])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each architecture once per module: ``exported(arch, checkpoint) -> Artifact``."""
    from compress.stages.export import export

    cache = {}
    root = tmp_path_factory.mktemp("exports")

    def get(arch: str, checkpoint: Path):
        if arch not in cache:
            cache[arch] = export(checkpoint, root / arch)
        return cache[arch]

    return get


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(directory: Path, **changes) -> None:
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))


# --- every architecture ---------------------------------------------------------------------------------


def test_load_teacher_infers_task_labels_pooling(arch, checkpoint):
    task, labels, pooling, normalize, model_type, _, max_length = EXPECTED[arch]
    teacher = load_teacher(checkpoint)
    assert teacher.task is task
    assert teacher.info.labels == labels
    assert pooling_of(teacher.info.postprocess)[0] == pooling  # a classifier's postprocess has none: (None, False)
    assert pooling_of(teacher.info.postprocess)[1] is normalize
    assert teacher.info.model_type == model_type
    assert teacher.info.max_length == max_length
    assert teacher.info.pickled is False
    assert teacher.info.weights == ["model.safetensors"]
    assert not teacher.model.training
    assert teacher.tokenizer.is_fast
    # the root manifest describes the checkpoint itself
    m = teacher.manifest()
    assert (m.format, m.precision, m.task) == (Format.pytorch, Precision.fp32, task)
    assert m.source.sha256 == teacher.sha256 and len(teacher.sha256) == 64
    assert m.outputs[0].name == ("logits" if labels else "last_hidden_state")


def test_inspect_checkpoint_needs_no_torch_and_matches(arch, checkpoint):
    info = inspect_checkpoint(checkpoint)
    task, labels, pooling, normalize, *_ = EXPECTED[arch]
    assert (info.task, info.labels, *pooling_of(info.postprocess)) == (
        task, labels, pooling, normalize
    )


def test_export_matches_pytorch(arch, checkpoint, exported, sample_texts):
    from compress.runtimes.ort_backend import OrtBackend
    from compress.runtimes.torch_backend import TorchBackend

    task, labels, pooling, normalize, _, has_tti, max_length = EXPECTED[arch]
    art = exported(arch, checkpoint)
    m = art.manifest
    assert (m.format, m.precision, m.task, m.labels) == (Format.onnx, Precision.fp32, task, labels)
    assert pooling_of(m.postprocess) == (pooling, normalize)
    assert m.max_length == max_length
    assert [s.stage for s in m.steps] == ["export"]
    assert m.steps[0].config["opset"] == 18 and m.steps[0].input_digest == m.source.sha256
    assert art.model_path.name == "model.onnx" and art.model_path.is_file()
    assert "tokenizer.json" in m.files
    # parity measured at export time, recorded in the manifest
    parity = m.steps[0].metrics["parity"]
    assert parity["max_abs_diff"] <= parity["atol"] == 1e-4
    assert parity["n"] == 8 and parity["cosine_min"] > 0.9999
    # inputs: DistilBERT and RoBERTa take no token_type_ids
    names = [t.name for t in m.inputs]
    assert {"input_ids", "attention_mask"} <= set(names)
    assert ("token_type_ids" in names) is has_tti
    assert all(t.dtype == "int64" and len(t.shape) == 2 for t in m.inputs)
    assert m.outputs[0].name == ("logits" if labels else "last_hidden_state")

    # and independently: the artifact (onnxruntime + its own tokenizer.json) agrees with PyTorch
    reloaded = load_artifact(art.path)
    ort = OrtBackend(reloaded)
    ref = TorchBackend.from_teacher(load_teacher(checkpoint))
    batch = ref.encode(sample_texts)
    ort_batch = ort.encode(sample_texts)
    assert set(ort_batch) == set(names)
    for k in ort_batch:
        np.testing.assert_array_equal(ort_batch[k], batch[k])
    got, want = ort.predict(ort_batch), ref.predict(batch)
    if labels:
        assert got.shape == (len(sample_texts), len(labels))
    else:
        assert got.shape == (len(sample_texts), 32)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    ort.close()


def test_encoder_artifact_matches_sentence_transformers(bert_encoder, exported, sample_texts):
    """Mean pooling + Normalize read from modules.json reproduce sentence-transformers' embeddings."""
    st = pytest.importorskip("sentence_transformers")
    from compress.runtimes.ort_backend import OrtBackend

    art = exported("bert-encoder", bert_encoder)
    want = st.SentenceTransformer(str(bert_encoder), device="cpu").encode(sample_texts)
    got = OrtBackend(art).predict_text(sample_texts)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_cls_pooling_and_unsupported_pooling(bert_encoder, tmp_path):
    d = copy_checkpoint(bert_encoder, tmp_path / "st")
    cfg_file = d / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    cfg_file.write_text(json.dumps(cfg))
    assert inspect_checkpoint(d).postprocess.pooling == "cls"
    cfg.update(pooling_mode_cls_token=False, pooling_mode_max_tokens=True)
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="pooling_mode_max_tokens.*not supported"):
        inspect_checkpoint(d)


def test_bare_encoder_without_modules_json_defaults_to_mean(bert_encoder, tmp_path):
    d = copy_checkpoint(bert_encoder, tmp_path / "plain")
    (d / "modules.json").unlink()
    info = inspect_checkpoint(d)
    assert (info.task, info.postprocess.pooling, info.postprocess.normalize) == (Task.feature_extraction, "mean", False)


# --- bad input ------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_teacher(tmp_path / "nope")
    assert "no such directory" in str(e.value) and "nope" in str(e.value)


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_teacher(f)


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError) as e:
        load_teacher(tmp_path)
    msg = str(e.value)
    assert "not a Hugging Face checkpoint" in msg and "config.json" in msg


def test_config_without_weights(bert_classifier, tmp_path):
    d = copy_checkpoint(bert_classifier, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no model weights"):
        load_teacher(d)


def test_unreadable_config(bert_classifier, tmp_path):
    d = copy_checkpoint(bert_classifier, tmp_path / "badcfg")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json: unreadable JSON"):
        load_teacher(d)


def test_truncated_safetensors(bert_classifier, tmp_path):
    d = copy_checkpoint(bert_classifier, tmp_path / "truncated")
    weights = d / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ModelLoadError) as e:
        load_teacher(d)
    msg = str(e.value)
    assert "corrupt or truncated" in msg and "model.safetensors" in msg


def test_garbage_safetensors_header(bert_classifier, tmp_path):
    d = copy_checkpoint(bert_classifier, tmp_path / "garbage")
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        inspect_checkpoint(d)


@pytest.fixture(scope="module")
def pickle_checkpoint(bert_classifier, tmp_path_factory) -> Path:
    """The tiny BERT classifier re-saved with pickle only (pytorch_model.bin), no safetensors."""
    import torch
    from transformers import BertForSequenceClassification

    d = tmp_path_factory.mktemp("pickled")
    model = BertForSequenceClassification.from_pretrained(str(bert_classifier), local_files_only=True)
    model.save_pretrained(str(d))
    torch.save(model.state_dict(), d / "pytorch_model.bin")  # transformers 5 no longer writes pickles itself
    for f in bert_classifier.iterdir():
        if f.is_file() and not (d / f.name).exists() and not f.name.endswith(".safetensors"):
            shutil.copy2(f, d / f.name)
    for f in d.glob("*.safetensors"):
        f.unlink()
    assert (d / "pytorch_model.bin").is_file()
    return d


def test_pickle_only_checkpoint_is_refused(pickle_checkpoint):
    with pytest.raises(ModelLoadError) as e:
        load_teacher(pickle_checkpoint)
    msg = str(e.value)
    assert "pytorch_model.bin" in msg and "pickle" in msg and "--allow-pickle" in msg


def test_pickle_only_checkpoint_loads_when_allowed(pickle_checkpoint, bert_classifier, sample_texts):
    from compress.runtimes.torch_backend import TorchBackend

    teacher = load_teacher(pickle_checkpoint, allow_pickle=True)
    assert teacher.info.pickled and teacher.info.weights == ["pytorch_model.bin"]
    assert teacher.info.labels == ["negative", "positive"]
    got = TorchBackend.from_teacher(teacher).predict_text(sample_texts)
    want = TorchBackend.from_teacher(load_teacher(bert_classifier)).predict_text(sample_texts)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_remote_code_is_refused_without_trust(bert_classifier, tmp_path):
    d = copy_checkpoint(bert_classifier, tmp_path / "remote")
    edit_config(d, auto_map={"AutoModelForSequenceClassification": "modeling_custom.CustomModel"})
    with pytest.raises(ModelLoadError) as e:
        load_teacher(d)
    msg = str(e.value)
    assert "auto_map" in msg and "--trust-remote-code" in msg


def test_encoder_asked_as_classifier(bert_encoder):
    with pytest.raises(ModelLoadError) as e:
        load_teacher(bert_encoder, task="text-classification")
    msg = str(e.value)
    assert "BertModel" in msg and "sequence-classification head" in msg and "feature-extraction" in msg


def test_classifier_as_feature_extractor_is_allowed(bert_classifier):
    teacher = load_teacher(bert_classifier, task=Task.feature_extraction)
    assert teacher.task is Task.feature_extraction and teacher.info.labels is None
    assert teacher.info.postprocess.pooling == "mean"


def test_config_without_model_type(bert_classifier, tmp_path):
    d = copy_checkpoint(bert_classifier, tmp_path / "notype")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["model_type"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="no model_type"):
        load_teacher(d)


def test_weights_that_do_not_match_config(bert_classifier, tmp_path):
    """Weights whose shapes disagree with config.json are an error, not silently re-initialised."""
    d = copy_checkpoint(bert_classifier, tmp_path / "mismatch")
    edit_config(d, hidden_size=64, intermediate_size=128)
    with pytest.raises(ModelLoadError, match="cannot load the model|weights missing"):
        load_teacher(d)


def test_export_refuses_bad_checkpoint_and_writes_nothing(tmp_path):
    from compress.stages.export import export

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a Hugging Face checkpoint"):
        export(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".*partial"))
