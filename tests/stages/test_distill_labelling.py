"""The teacher pass of distillation (``compress.stages.teacher_cache``): only the rows training draws are
labelled (a short ``max_steps`` run labels its first batches, a later longer run only the rest),
``max_train_rows`` takes a seeded subset, and Ctrl-C/SIGTERM while labelling keeps the rows done so that
``resume`` continues from there and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import SENTENCES, write_tsv

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import compress.stages.distill.run as distill_run_mod
import compress.stages.distill.training as distill_training_mod
from compress.artifact import load_artifact
from compress.data.tables import load_dataset
from compress.stages import teacher_cache as tcache
from compress.stages.distill import distill
from compress.stages.distill.config import DistillConfig
from compress.stages.training import Interrupted, default_run_dir
from compress.stages.transfer import length_grouped_order

# 96 rows of varied lengths: two teacher batches of 64 and 32 rows.
ROWS = [(lab, f"{text} {' and'.join(['' for _ in range(i % 5)])} take {i}") for i in range(8)
        for lab, text in SENTENCES]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("labelling-data"), ROWS)


def cfg(**kw) -> DistillConfig:
    return DistillConfig.from_flat(**{"layers": 1, "batch_size": 8, "max_length": 32, "eval_every": 100, **kw})


@pytest.fixture
def teacher_rows(monkeypatch):
    """Rows the teacher runs forward on (the student runs inside the trainable wrapper)."""
    seen: list[int] = []
    real = distill_training_mod.model_outputs

    def counting(model, batch, plan, tap):
        if type(model).__name__ != "Trainable":
            seen.extend(batch["index"].tolist())
        return real(model, batch, plan, tap)

    monkeypatch.setattr(distill_training_mod, "model_outputs", counting)  # the training loop (online targets)
    monkeypatch.setattr(distill_run_mod, "model_outputs", counting)  # the teacher pass
    return seen


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def test_max_steps_labels_only_the_rows_it_draws(bert_classifier, data, tmp_path, teacher_rows):
    cache = tmp_path / "cache"
    events: list[dict] = []
    r = distill(bert_classifier, data, tmp_path / "short", cfg(max_steps=2), teacher_cache=cache,
                progress=events.append)
    ds = load_dataset(data)
    lengths = np.array([len(x) for x in load_teacher_tokens(bert_classifier, ds.texts)])
    drawn = length_grouped_order(lengths, 8, 42)[:16]  # 2 steps x 8 rows of the first epoch's order
    assert sorted(teacher_rows) == sorted(drawn)
    assert r.metrics["teacher_labelled_rows"] == 16 and r.metrics["transfer_rows"] == len(ROWS)
    teacher_events = [e for e in events if e["phase"] == "teacher"]
    assert teacher_events[-1]["done"] == teacher_events[-1]["total"] == 16
    assert np.flatnonzero(np.load(cache / tcache.LABELLED)).tolist() == sorted(drawn)

    # a longer run on the same cache labels only the rows it lacks
    teacher_rows.clear()
    r = distill(bert_classifier, data, tmp_path / "longer", cfg(max_steps=5), teacher_cache=cache)
    assert len(teacher_rows) == r.metrics["teacher_labelled_rows"] == 40 - 16
    assert not set(teacher_rows) & set(drawn)
    # a full epoch needs every row
    teacher_rows.clear()
    r = distill(bert_classifier, data, tmp_path / "epoch", cfg(epochs=1), teacher_cache=cache)
    assert r.metrics["teacher_labelled_rows"] == len(ROWS) - 40 == len(teacher_rows)
    assert np.load(cache / tcache.LABELLED).all()


def load_teacher_tokens(model_dir, texts):
    from compress.teachers.load import load_teacher

    return load_teacher(model_dir).tokenizer(texts, truncation=True, max_length=32)["input_ids"]


def test_max_train_rows_is_a_seeded_subset_in_the_manifest_and_the_cache_key(bert_classifier, data, tmp_path,
                                                                               teacher_rows):
    cache = tmp_path / "cache"
    r = distill(bert_classifier, data, tmp_path / "a", cfg(epochs=1, max_train_rows=20), teacher_cache=cache)
    assert r.metrics["transfer_rows"] == 20 and len(teacher_rows) == r.metrics["teacher_labelled_rows"] == 20
    assert load_artifact(tmp_path / "a").manifest.steps[-1].config["max_train_rows"] == 20
    first = np.load(cache / "soft.npy")
    # the same subset again: nothing to label; another size: another transfer set, labelled afresh
    teacher_rows.clear()
    r = distill(bert_classifier, data, tmp_path / "b", cfg(epochs=1, max_train_rows=20), teacher_cache=cache)
    assert teacher_rows == [] and r.metrics["teacher_labelled_rows"] == 0
    np.testing.assert_array_equal(np.load(cache / "soft.npy"), first)
    r = distill(bert_classifier, data, tmp_path / "c", cfg(epochs=1, max_train_rows=30), teacher_cache=cache)
    assert r.metrics["transfer_rows"] == 30 and r.metrics["teacher_labelled_rows"] == 30
    # more rows than the file has: all of them
    r = distill(bert_classifier, data, tmp_path / "d", cfg(max_steps=1, max_train_rows=1000))
    assert r.metrics["transfer_rows"] == len(ROWS)
    with pytest.raises(ValueError, match="max_train_rows"):
        cfg(max_train_rows=0)


def test_interrupt_while_labelling_then_resume_equals_an_uninterrupted_run(bert_classifier, data, tmp_path,
                                                                          teacher_rows):
    """SIGTERM after the first teacher batch: 64 rows are kept, --resume labels the other 32 and trains to
    exactly the weights of a run that was never interrupted (dropout on, so RNG state matters too)."""
    config = cfg(epochs=1)
    reference = distill(bert_classifier, data, tmp_path / "ref", config)
    assert reference.metrics["teacher_labelled_rows"] == len(ROWS)

    out = tmp_path / "student"
    run = default_run_dir(out)

    def stop_after_first_batch(event):
        if event["phase"] == "teacher" and event["done"] == 64:
            os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        distill(bert_classifier, data, out, config, progress=stop_after_first_batch)
    assert e.value.exit_code == 130 and "--resume" in str(e.value) and "teacher" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) is handler
    assert not out.exists()
    assert np.load(run / "teacher-cache" / tcache.LABELLED).sum() == 64

    teacher_rows.clear()
    events: list[dict] = []
    resumed = distill(bert_classifier, data, out, config, resume=True, progress=events.append)
    assert len(teacher_rows) == resumed.metrics["teacher_labelled_rows"] == 32
    assert [e["done"] for e in events if e["phase"] == "teacher"] == [96]
    ref_w, res_w = weights(tmp_path / "ref"), weights(out)
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k
    assert not run.exists()


def test_a_damaged_progress_marker_is_not_trusted(tmp_path):
    class Rows:
        lengths = np.array([3, 4])
        offsets = np.array([0, 3, 7])
        sq_offsets = np.array([0, 9, 25])

        def __len__(self):
            return 2

    class Plan:
        hidden = attention = value_relation = False

    key = {"k": 1}
    shapes = tcache.layout(Rows(), Plan(), False, None, 2)
    tcache._create(tmp_path / "c", key, shapes, 2)
    assert tcache._valid(tmp_path / "c", key, shapes, 2)
    assert not tcache._valid(tmp_path / "c", {"k": 2}, shapes, 2)
    np.save(tmp_path / "c" / tcache.LABELLED, np.zeros(3, bool))  # wrong length
    assert not tcache._valid(tmp_path / "c", key, shapes, 2)
    (tmp_path / "c" / tcache.LABELLED).write_bytes(b"garbage")
    assert not tcache._valid(tmp_path / "c", key, shapes, 2)
