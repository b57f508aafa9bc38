"""validate reuses the teacher's outputs from the cache (issue 13, item 14): a second run does not run the
teacher and reports the same numbers; other data, another teacher or --no-cache run it again; the
cache has a place, a size and a cap."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import SENTENCES, write_tsv

from compress import cache
from compress.runtimes.torch_backend import TorchBackend
from tests.builders.cli import in_process
from tests.builders.profiles import GENEROUS_BUDGETS

pytestmark = pytest.mark.slow

FAST = {"warmup": 1, "min_runs": 3, "min_duration_s": 0.0, "max_runs": 3, "eval_batch_size": 8}
NUMBERS = ("metric", "teacher_metric", "retention", "agreement", "macro_f1", "teacher_macro_f1", "eval_samples")


@pytest.fixture(autouse=True)
def _cache_dir(home, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_DIR, str(tmp_path / "ec-cache"))
    monkeypatch.delenv(cache.ENV_LIMIT, raising=False)
    yield tmp_path / "ec-cache"


@pytest.fixture
def teacher_runs(monkeypatch) -> list[int]:
    """Rows the PyTorch teacher predicted, one entry per batch."""
    calls: list[int] = []
    predict = TorchBackend.predict

    def counted(self, inputs):
        calls.append(len(next(iter(inputs.values()))))
        return predict(self, inputs)

    monkeypatch.setattr(TorchBackend, "predict", counted)
    return calls


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tprofiles") / "fast.yaml"
    budgets = {**GENEROUS_BUDGETS, "min_speedup": None, "max_peak_memory_mb": None, "max_cold_start_ms": None}
    path.write_text(yaml.safe_dump({"name": "fast", "extends": "cpu-x86-avx2", "measure": FAST, "budgets": budgets}))
    return path


def run(art, profile, data, teacher, **kw):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    return validate(art, ValidateConfig.from_flat(profile=str(profile), data=str(data), teacher=str(teacher), baseline=False,
                                        cold_start=False, **kw))


def test_second_validate_reuses_the_teachers_outputs(int8_artifact, bert_classifier, profile, tmp_path,
                                                     teacher_runs, _cache_dir):
    data = write_tsv(tmp_path, SENTENCES)
    first = run(int8_artifact, profile, data, bert_classifier)
    assert sum(teacher_runs) == len(SENTENCES)
    assert first.environment["cache"]["teacher_outputs"] == "stored"
    stored = list((_cache_dir / "teacher-outputs").glob("*.npz"))
    assert len(stored) == 1 and not list((_cache_dir / "teacher-outputs").glob(".*"))  # no staging leftovers

    teacher_runs.clear()
    second = run(int8_artifact, profile, data, bert_classifier)
    assert teacher_runs == []  # the teacher did not run
    assert second.environment["cache"]["teacher_outputs"] == "hit"
    assert {k: second.metrics[k] for k in NUMBERS} == {k: first.metrics[k] for k in NUMBERS}
    info = second.environment["cache"]
    assert info["dir"] == str(_cache_dir) and info["size_mb"] >= 0 and info["limit_mb"] == cache.DEFAULT_LIMIT_MB


def test_other_data_or_another_teacher_runs_the_teacher_again(int8_artifact, bert_classifier, profile, tmp_path,
                                                              teacher_runs):
    data = write_tsv(tmp_path / "a", SENTENCES)
    run(int8_artifact, profile, data, bert_classifier)
    teacher_runs.clear()

    other = write_tsv(tmp_path / "b", SENTENCES[:-1] + [(SENTENCES[-1][0], SENTENCES[-1][1] + " really")])
    assert run(int8_artifact, profile, other, bert_classifier).environment["cache"]["teacher_outputs"] == "stored"
    assert sum(teacher_runs) == len(SENTENCES)
    teacher_runs.clear()

    limited = run(int8_artifact, profile, data, bert_classifier, limit=3)  # other rows: --limit
    assert limited.environment["cache"]["teacher_outputs"] == "stored" and sum(teacher_runs) == 3
    teacher_runs.clear()

    changed = tmp_path / "teacher-copy"
    shutil.copytree(bert_classifier, changed)
    config = changed / "config.json"
    config.write_text(config.read_text() + "\n")  # same model, other files: another digest
    assert run(int8_artifact, profile, data, changed).environment["cache"]["teacher_outputs"] == "stored"
    assert sum(teacher_runs) == len(SENTENCES)


def test_no_cache_runs_the_teacher_and_stores_nothing(int8_artifact, bert_classifier, profile, tmp_path,
                                                      teacher_runs, _cache_dir):
    data = write_tsv(tmp_path, SENTENCES)
    for _ in range(2):
        r = run(int8_artifact, profile, data, bert_classifier, cache=False)
        assert r.environment["cache"]["teacher_outputs"] == "off"
    assert sum(teacher_runs) == 2 * len(SENTENCES)
    assert not list(_cache_dir.glob("teacher-outputs/*"))


def test_a_damaged_entry_is_recomputed(int8_artifact, bert_classifier, profile, tmp_path, teacher_runs, _cache_dir):
    data = write_tsv(tmp_path, SENTENCES)
    first = run(int8_artifact, profile, data, bert_classifier)
    (entry,) = (_cache_dir / "teacher-outputs").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    teacher_runs.clear()
    again = run(int8_artifact, profile, data, bert_classifier)
    assert again.environment["cache"]["teacher_outputs"] == "stored" and sum(teacher_runs) == len(SENTENCES)
    assert again.metrics["agreement"] == first.metrics["agreement"]


def test_lru_cap_removes_the_least_recently_used_first(_cache_dir, monkeypatch):
    outputs = _cache_dir / "teacher-outputs"
    baselines = _cache_dir / "baselines"
    outputs.mkdir(parents=True)
    (baselines / "old").mkdir(parents=True)
    (baselines / "old" / "model.onnx").write_bytes(b"x" * 400_000)
    (outputs / "mid.npz").write_bytes(b"x" * 400_000)
    (outputs / "new.npz").write_bytes(b"x" * 400_000)
    (outputs / ".dead.partial").write_bytes(b"x")
    for age, p in ((300, baselines / "old"), (200, outputs / "mid.npz"), (100, outputs / "new.npz"),
                   (7200, outputs / ".dead.partial")):
        t = os.path.getmtime(p) - age
        os.utime(p, (t, t))
    monkeypatch.setenv(cache.ENV_LIMIT, "0.8")  # MiB: two of the three entries fit
    assert round(cache.usage()["size_mb"], 1) == round(1_200_001 / cache.MB, 1)
    removed = cache.enforce_limit(keep=outputs / "new.npz")
    assert sorted(p.name for p in removed) == [".dead.partial", "old"]
    monkeypatch.setenv(cache.ENV_LIMIT, "0")
    cache.enforce_limit(keep=outputs / "new.npz")  # the entry in use is kept whatever the cap
    assert [p.name for p in outputs.iterdir()] == ["new.npz"]


def test_bad_cache_limit_is_a_one_line_error(monkeypatch):
    from compress.errors import ConfigError

    monkeypatch.setenv(cache.ENV_LIMIT, "lots")
    with pytest.raises(ConfigError, match="EDGECOMPRESS_CACHE_MB='lots'"):
        cache.limit_mb()


def test_cli_says_where_the_cache_is_and_how_big(int8_artifact, bert_classifier, profile, tmp_path, home, _cache_dir,
                                                 capfd):
    """The CLI's cache line (exit 0, where, how big, stored), then a second run that reuses it and a --no-cache one.
    All three in this process (in_process): nothing here depends on a fresh interpreter, and each start cost an
    import of torch and transformers."""
    data = write_tsv(tmp_path, SENTENCES)

    def cli(i, *flags):
        return in_process(capfd, "-v", "validate", int8_artifact.path, "-p", profile, "-d", data, "-t",
                          bert_classifier, "--no-baseline", "--no-cold-start", "--report-dir", tmp_path / f"rep{i}",
                          *flags, env={"HOME": str(home), "COLUMNS": "300"})

    proc = cli(0)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("cache: ")]
    assert line and str(_cache_dir) in line[0] and "MB of 2048 MB" in line[0] and "stored" in line[0]
    outs = [cli(1), cli(2, "--no-cache")]
    assert [o.returncode for o in outs] == [0, 0], [o.stderr for o in outs]
    assert "reused" in outs[0].stdout
    assert "reused from" in outs[0].stderr and str(_cache_dir) in outs[0].stderr  # the -v log names the file
    assert "--no-cache" in " ".join(outs[1].stdout.split()) and "reused from" not in outs[1].stderr


def test_remote_preparation_reuses_the_teachers_outputs_too(int8_artifact, bert_classifier, profile, tmp_path,
                                                            teacher_runs):
    """--remote runs the teacher here; its outputs come from the same cache (no ssh needed to check)."""
    from compress.data.tables import load_dataset
    from compress.profiles.load import load_profile
    from compress.runtimes.base import RuntimeSettings
    from compress.teachers.load import load_teacher
    from compress.validation.common import ValidationRun
    from compress.validation.config import ValidateConfig
    from compress.validation.remote import _prepare

    prof = load_profile(str(profile))
    labels = int8_artifact.manifest.labels
    data = load_dataset(write_tsv(tmp_path, SENTENCES), label2id={n: i for i, n in enumerate(labels)})
    teacher = load_teacher(bert_classifier)
    config = ValidateConfig.from_flat(profile=str(profile), baseline=False, cold_start=False)
    refs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        run = ValidationRun(int8_artifact, prof, config, RuntimeSettings(threads=2), data, teacher, [], None, 0.0)
        refs.append(_prepare(tmp_path / str(i), run, "onnxruntime")[2])
        assert sum(teacher_runs) == len(SENTENCES)  # the first call ran the teacher, the second did not
    assert (refs[0] == refs[1]).all()
