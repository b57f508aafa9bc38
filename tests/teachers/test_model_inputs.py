"""A model is fed only the inputs its ``forward`` takes.

A DistilBERT classifier saved with a BERT tokenizer is common: the tokenizer emits ``token_type_ids``, the
model has no such parameter. Every stage that runs the PyTorch model (export's parity check, distill,
prune, validate's teacher) must drop what the model does not take instead of crashing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import LABELS, _save_wordpiece_tokenizer, write_tsv

from compress.teachers.load import forward_inputs, load_teacher, model_feed
from tests.builders.profiles import GENEROUS_BUDGETS


@pytest.fixture(scope="module")
def distilbert_bert_tokenizer(tmp_path_factory) -> Path:
    """A tiny DistilBertForSequenceClassification saved with a BertTokenizerFast (emits token_type_ids)."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    d = tmp_path_factory.mktemp("distilbert-berttok")
    n = _save_wordpiece_tokenizer(d, "BertTokenizerFast")
    torch.manual_seed(0)
    cfg = DistilBertConfig(
        vocab_size=n, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128,
        num_labels=2, id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()},
    )
    model = DistilBertForSequenceClassification(cfg).eval()
    model.save_pretrained(str(d), safe_serialization=True)
    return d


def test_teacher_inputs_are_what_the_model_takes(distilbert_bert_tokenizer):
    teacher = load_teacher(distilbert_bert_tokenizer)
    assert "token_type_ids" in teacher.tokenizer.model_input_names  # the premise: the tokenizer emits them
    assert teacher.input_names == ["input_ids", "attention_mask"]
    assert [t.name for t in teacher.manifest().inputs] == ["input_ids", "attention_mask"]
    assert set(teacher.encoder().encode(["a fine film"])) == {"input_ids", "attention_mask"}


def test_model_feed_looks_through_wrappers(distilbert_bert_tokenizer):
    import torch

    model = load_teacher(distilbert_bert_tokenizer).model

    class Wrapper(torch.nn.Module):  # the shape of DDP / Accelerate wrappers
        def __init__(self):
            super().__init__()
            self.module = model

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    feed = {"input_ids": 1, "attention_mask": 2, "token_type_ids": 3}
    assert model_feed(Wrapper(), feed) == {"input_ids": 1, "attention_mask": 2}
    assert "token_type_ids" not in forward_inputs(model)


def test_kwargs_only_forward_takes_everything():
    class KwargsOnly:
        def forward(self, **inputs):
            return inputs

    assert forward_inputs(KwargsOnly()) is None
    assert model_feed(KwargsOnly(), {"a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_export_int8_validate(distilbert_bert_tokenizer, tmp_path, home):
    import yaml

    from compress import export, quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    data = write_tsv(tmp_path)
    onnx = export(distilbert_bert_tokenizer, tmp_path / "onnx")
    assert [t.name for t in onnx.manifest.inputs] == ["input_ids", "attention_mask"]
    int8 = quantize(onnx, tmp_path / "int8", QuantizeConfig.from_flat(mode="dynamic"))
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "p", "description": "test", "extends": "cpu-x86-avx2", "budgets": GENEROUS_BUDGETS,
        "measure": {"warmup": 2, "min_runs": 10, "min_duration_s": 0.05, "eval_batch_size": 8},
    }), encoding="utf-8")
    report = validate(int8, ValidateConfig.from_flat(profile=str(profile), data=str(data), teacher=str(distilbert_bert_tokenizer),
                                           cold_start=False))
    assert report.metrics["agreement"] >= 0.5
    assert report.metrics["teacher_metric"] is not None


@pytest.mark.transformers4  # prunes heads
def test_distill_and_prune(distilbert_bert_tokenizer, tmp_path):
    from compress import DistillConfig, PruneConfig, distill, prune

    data = write_tsv(tmp_path)
    cfg = DistillConfig.from_flat(layers=1, max_steps=2, batch_size=4, eval_every=2, max_length=32)
    student = distill(distilbert_bert_tokenizer, data, tmp_path / "student", cfg, eval_data=data).artifact
    pruned = prune(student.path, tmp_path / "pruned", PruneConfig.from_flat(heads=0.5, ffn=0.5, samples=8), eval_data=data)
    assert pruned.path.is_dir()


def test_cli_export_does_not_crash(distilbert_bert_tokenizer, tmp_path):
    from compress.cli import cli

    result = CliRunner().invoke(cli, ["export", str(distilbert_bert_tokenizer), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
