"""``edgecompress finetune``: a tiny random base encoder (test material) gets a head for the data's labels and trains
whole, with its first layers frozen, or through LoRA adapters merged before the checkpoint is written."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import NER_SENTENCES, NER_TAGS, SENTENCES, write_tsv

from compress.stages.finetune import finetune
from compress.stages.finetune.config import FinetuneConfig

pytestmark = pytest.mark.slow

pytest.importorskip("peft")

NAMED = [("negative" if lab in (0, "0") else "positive", text) for lab, text in SENTENCES]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_a_base_gets_a_head_for_the_datas_labels_and_trains_whole(bert_encoder, tmp_path):
    from compress.teachers.load import load_teacher

    data = write_tsv(tmp_path, NAMED)
    r = finetune(bert_encoder, data, tmp_path / "teacher", FinetuneConfig.from_flat(max_steps=6, batch_size=8, lr=1e-3,
                 eval_every=3), eval_data=data)
    m = r.artifact.manifest
    assert (m.task, m.labels) == ("text-classification", ["negative", "positive"])
    assert m.source.sha256 == load_teacher(bert_encoder).sha256 and [s.stage for s in m.steps] == ["finetune"]
    met = r.metrics
    assert met["mode"] == "full" and met["trainable_share"] == 1.0 and met["steps"] == 6
    assert [h["step"] for h in met["history"]] == [3, 6] and 0 <= met["eval_metric"] <= 1
    assert met["chosen"].startswith("best (step") and met["peak_rss_mb"] > 0
    assert not (tmp_path / "teacher.run").exists()  # the run directory goes once the artifact is written
    teacher = load_teacher(r.artifact.path)  # a plain checkpoint the chain takes as its teacher
    assert type(teacher.model).__name__ == "BertForSequenceClassification"


def test_frozen_layers_keep_the_bases_weights(bert_encoder, tmp_path):
    data = write_tsv(tmp_path, NAMED)
    r = finetune(bert_encoder, data, tmp_path / "t", FinetuneConfig.from_flat(freeze=1, max_steps=4, batch_size=8, lr=1e-2))
    base, tuned = _weights(bert_encoder), _weights(r.artifact.path)
    assert r.metrics["frozen_layers"] == 1 and r.metrics["trainable_share"] < 1.0
    same = [k for k in base if k.replace("bert.", "") and f"bert.{k}" in tuned]
    for k in same:
        unchanged = bool((base[k] == tuned[f"bert.{k}"]).all())
        assert unchanged == ("embeddings" in k or ".layer.0." in k), k


def test_lora_adapters_are_merged_into_a_plain_checkpoint(bert_encoder, tmp_path):
    import torch

    from compress.teachers.load import load_teacher

    data = write_tsv(tmp_path, NAMED)
    r = finetune(bert_encoder, data, tmp_path / "t", FinetuneConfig.from_flat(lora_rank=4, max_steps=6, batch_size=8),
                 eval_data=data)
    met = r.metrics
    assert met["mode"] == "lora" and met["lora"] == {"rank": 4, "alpha": 8, "targets": "all-linear"}
    assert met["trainable_share"] < 0.5 and met["lr"] == 5e-4
    tuned = _weights(r.artifact.path)
    assert not any("lora" in k for k in tuned)  # merged: nothing peft-specific is left
    base = _weights(bert_encoder)
    q = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(base[q], tuned[f"bert.{q}"])  # the adapters moved the weights they wrap
    assert load_teacher(r.artifact.path).model.config.id2label == {0: "negative", 1: "positive"}


def test_a_token_classifier_from_a_base(bert_encoder, tmp_path):
    tags = [["B-PER" if i == 0 else "O" for i, _ in enumerate(s)] for s in NER_SENTENCES]
    data = tmp_path / "train.conll"
    data.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(ws, ts)) for ws, ts in
                                zip(NER_SENTENCES, tags)) + "\n", encoding="utf-8")
    r = finetune(bert_encoder, data, tmp_path / "ner", FinetuneConfig.from_flat(task="token-classification", max_steps=4,
                 batch_size=8, eval_every=2), eval_data=data)
    m = r.artifact.manifest
    assert m.task == "token-classification" and m.labels == ["O", "B-PER"] and m.preprocess.words
    assert r.metrics["metric"] == "entity_f1" and len(r.metrics["history"]) == 2
    assert set(NER_TAGS) >= set(m.labels)


def test_an_interrupted_run_resumes(bert_encoder, tmp_path):
    from compress.stages.training import Interrupted

    data = write_tsv(tmp_path, NAMED)
    cfg = FinetuneConfig.from_flat(max_steps=4, batch_size=8, save_every=1)

    def stop_at_2(event):  # Ctrl-C during step 2: a checkpoint at its end, then Interrupted
        if event["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        finetune(bert_encoder, data, tmp_path / "t", cfg, progress=stop_at_2)
    assert (tmp_path / "t.run" / "checkpoint.pt").is_file() and not (tmp_path / "t").exists()
    seen = []
    r = finetune(bert_encoder, data, tmp_path / "t", cfg, resume=True, progress=lambda e: seen.append(e["step"]))
    assert seen == [3, 4] and r.metrics["steps"] == 4


@pytest.mark.parametrize("args, words", [
    (["--freeze", "1", "--lora-rank", "4"], ["--freeze and --lora-rank"]),
    (["--lora-rank", "4", "--lora-targets", "LayerNorm"], ["--lora-targets LayerNorm", "peft cannot wrap"]),
    (["--freeze", "9"], ["--freeze 9", "the base has 2 layers"]),
    (["--task", "token-classification"], ["CoNLL"]),  # a table given as words and tags
    (["NOWEIGHTS"], ["the base has no weights"]),
    (["ONELABEL"], ["one label", "at least two"]),
])
def test_cli_errors_are_one_line(bert_encoder, tmp_path, capsys, args, words):
    import shutil

    from compress.cli import main

    base, data = bert_encoder, write_tsv(tmp_path, NAMED)
    if "NOWEIGHTS" in args:
        base = tmp_path / "empty-base"
        shutil.copytree(bert_encoder, base)
        (base / "model.safetensors").unlink()
    if "ONELABEL" in args:
        data = write_tsv(tmp_path, [("positive", t) for _, t in NAMED], name="one.tsv")
    extra = [a for a in args if a not in ("NOWEIGHTS", "ONELABEL")]
    with pytest.raises(SystemExit) as e:
        main(["-q", "finetune", str(base), "--train", str(data), "--out", str(tmp_path / "o"), "--max-steps", "1",
              *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert not (tmp_path / "o").exists()


#: test material: a number per sentence (2 + 3 × its sentiment, plus a small step), not a claim about real data
TARGETS = [(f"{2.0 + 3.0 * lab + 0.1 * (i % 3):.2f}", text) for i, (lab, text) in enumerate(SENTENCES)]


def test_a_text_regressor_learns_its_targets_and_is_a_regression_teacher(bert_encoder, tmp_path):
    """The label column read as numbers, MSE loss, MAE the eval metric: lower is better, so the lowest evaluation is
    the checkpoint kept; the artifact loads as a regression teacher that gives the same outputs."""
    import numpy as np
    import torch

    from compress.teachers.load import load_teacher

    data = write_tsv(tmp_path, TARGETS)
    y = np.array([float(v) for v, _ in TARGETS])
    r = finetune(bert_encoder, data, tmp_path / "reg", FinetuneConfig.from_flat(task="regression", max_steps=20, batch_size=8,
                 lr=1e-2, eval_every=5), eval_data=data)
    m, met = r.artifact.manifest, r.metrics
    assert (m.task, m.labels, m.outputs[0].shape) == ("regression", None, ["batch_size", 1])
    assert (met["metric"], met["higher_is_better"], met["labels"]) == ("mae", False, None)
    assert met["targets"]["mean"] == [pytest.approx(y.mean(), abs=1e-5)]
    maes = [h["metric"] for h in met["history"]]
    assert met["eval_metric"] == min(maes)  # the lowest error is the checkpoint kept, and what it scores on the CPU:
    assert met["eval_scores"]["mae"] == pytest.approx(met["eval_metric"], abs=1e-4)
    assert met["eval_metric"] < 0.5 * np.abs(y - y.mean()).mean()  # well under the mean predictor's error (1.5)
    teacher = load_teacher(r.artifact.path)
    assert teacher.task == "regression" and teacher.model.config.problem_type == "regression"
    enc = teacher.tokenizer([t for _, t in TARGETS], padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = teacher.model(**enc).logits[:, 0].numpy()
    assert np.abs(out - y).mean() == pytest.approx(met["eval_scores"]["mae"], abs=1e-4)


@pytest.mark.parametrize("rows, args, words", [
    (NAMED, [], ["row 1", "'positive' is not a number"]),
    ([("2.5", t) for _, t in NAMED], [], ["every target is 2.5"]),
    (TARGETS, ["--labels", "low,high"], ["--labels", "regression head has none"]),
])
def test_regression_refuses_targets_that_are_no_numbers(bert_encoder, tmp_path, capsys, rows, args, words):
    from tests.builders.cli import main_error

    data = write_tsv(tmp_path, rows)
    line = main_error(capsys, "finetune", bert_encoder, "--task", "regression", "--train", data, "--max-steps", "1",
                      "--out", tmp_path / "o", *args)
    assert all(w in line for w in words), line
    assert not (tmp_path / "o").exists()


def test_a_base_with_no_regression_head_is_refused_in_one_line(bert_encoder, tmp_path, capsys):
    """transformers builds no sequence-classification (so no regression) head for some encoders (CLIP's text tower)."""
    import shutil

    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.builders.cli import main_error

    base = tmp_path / "clip-text"
    shutil.copytree(bert_encoder, base, ignore=shutil.ignore_patterns("*.safetensors", "config.json", "modules.json",
                                                                      "1_Pooling", "2_Normalize"))
    CLIPTextModel(CLIPTextConfig(vocab_size=512, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=64)).save_pretrained(base)
    capsys.readouterr()  # transformers' saving bar
    line = main_error(capsys, "finetune", base, "--task", "regression", "--train", write_tsv(tmp_path, TARGETS),
                      "--max-steps", "1", "--out", tmp_path / "o")
    assert "--task regression" in line and "cannot take a regression head" in line, line


def test_config_refuses_two_modes():
    with pytest.raises(ValueError, match="pick one"):
        FinetuneConfig.from_flat(freeze=1, lora_rank=4)
    with pytest.raises(ValueError, match="task must be one of"):
        FinetuneConfig.from_flat(task="object-detection")
    with pytest.raises(ValueError, match="a regression head has none"):
        FinetuneConfig.from_flat(task="regression", labels=["a", "b"])


def test_forgetting_is_measured_on_retained_texts(bert_encoder, tmp_path):
    """The base's behaviour on its own domain: untouched when every layer is frozen (only the head trains), moved by a
    full fine-tune at a high learning rate."""
    data = write_tsv(tmp_path, NAMED)
    retain = write_tsv(tmp_path, [(0, t) for t in ["a quiet morning by the sea", "the train was late again",
                                                   "prices rose in march", "she plays the violin",
                                                   "a storm is coming", "the match ended in a draw"]], name="own.tsv")
    kept = finetune(bert_encoder, data, tmp_path / "frozen", FinetuneConfig.from_flat(freeze=2, max_steps=3, batch_size=8),
                    retain_data=retain).metrics["forgetting"]
    assert kept["retain_rows"] == 6 and kept["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert kept["neighbour_agreement"] == 1.0
    moved = finetune(bert_encoder, data, tmp_path / "full", FinetuneConfig.from_flat(max_steps=6, batch_size=8, lr=5e-2),
                     retain_data=retain).metrics["forgetting"]
    assert moved["embedding_cosine"] < 0.999 and moved["data"] == str(retain)


def test_accelerate_launch_fine_tunes_on_two_cpu_processes(bert_encoder, tmp_path):
    """Two real processes on CPU (gloo), as distill's test launches them: each takes half of every batch, the main
    one writes one artifact that records both."""
    import subprocess
    import sys

    from compress.artifact import load_artifact
    from tests.builders.cli import ENV
    from tests.conftest import CPU_PROCESSES, free_port

    data = write_tsv(tmp_path, NAMED)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", "1",
           "-m", "compress", "finetune", str(bert_encoder), "--train", str(data), "--eval", str(data),
           "--out", str(tmp_path / "t"), "--max-steps", "4", "--batch-size", "4", "--eval-every", "2", "--lr", "1e-3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **CPU_PROCESSES}, timeout=300,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert " ".join(proc.stdout.split()).count("wrote ") == 1, proc.stdout
    m = load_artifact(tmp_path / "t").manifest.steps[-1].metrics
    assert m["processes"] == 2 and m["steps"] == 4 and [h["step"] for h in m["history"]] == [2, 4]
    assert not (tmp_path / "t.run").exists()
