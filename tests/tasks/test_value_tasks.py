"""Regression and multi-label classification, declared in an adopted file's model.yaml: a tiny sensor-window model
(random weights, test material) whose targets are its own FP32 outputs, so the teacher scores perfectly and the INT8
artifact's figures are its distance from it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.errors import ConfigError, DataError
from tests.conftest import write_image_regressor

FAST_HOST: str = ""  # set by the autouse fixture below: this machine's profile with a short latency measurement


@pytest.fixture(autouse=True)
def _fast_host(fast_host):
    global FAST_HOST
    FAST_HOST = fast_host


class Window(torch.nn.Module):
    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(6, 16, 5)
        self.head = torch.nn.Linear(16, outputs)

    def forward(self, window):
        return self.head(torch.relu(self.conv(window)).mean(-1))


def _adopt(d: Path, task: str, outputs: int, extra: str = "") -> tuple[Path, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    model = Window(outputs).eval()
    f = d / f"{task}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 6, 40),), str(f), opset_version=13, dynamo=False,
                          input_names=["window"], output_names=["out"],
                          dynamic_axes={"window": {0: "batch"}, "out": {0: "batch"}})
    f.with_suffix(".yaml").write_text(f"task: {task}\n{extra}", encoding="utf-8")
    x = np.random.default_rng(0).standard_normal((64, 6, 40)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    return f, x, y


def _validate(art, data: Path, profile: str | None = None):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    return validate(art, ValidateConfig.from_flat(data=str(data), cold_start=False, profile=profile or FAST_HOST))


@pytest.fixture(scope="module")
def fast_torch(tmp_path_factory) -> str:
    """The fast host profile in PyTorch: a checkpoint validated as it is, without an export."""
    import yaml

    p = tmp_path_factory.mktemp("profiles") / "fast-torch.yaml"
    p.write_text(yaml.safe_dump({"name": "fast-torch", "extends": "host", "runtime": {"name": "torch"}, "measure": {
        "warmup": 1, "min_runs": 3, "min_duration_s": 0.01, "eval_batch_size": 8}}), encoding="utf-8")
    return str(p)


def test_regression_is_judged_by_mae(tmp_path):
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    f, x, y = _adopt(tmp_path, "regression", 2)
    data = tmp_path / "eval.npz"
    np.savez(data, window=x, labels=y + 0.05)  # targets near the teacher's outputs
    fp32 = export(f, tmp_path / "fp32")
    assert fp32.manifest.task == "regression"
    met = _validate(fp32, data).metrics
    assert met["metric_name"] == "mae" and met["lower_is_better"]
    assert met["metric"] == pytest.approx(0.05, abs=1e-4) and met["retention"] == pytest.approx(1.0, abs=1e-4)
    assert met["agreement"] == pytest.approx(1.0, abs=1e-6) and "rmse" in met and "r2" in met

    q = quantize(fp32, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(data)))
    met = _validate(q, data).metrics
    assert met["mae_increase"] == pytest.approx(met["metric"] / met["teacher_metric"] - 1)
    assert met["retention"] == pytest.approx(met["teacher_metric"] / met["metric"])
    assert 0.9 < met["agreement"] < 1.0


def test_an_image_regressor_scores_the_same_from_a_path_table_as_from_an_npz(tmp_path, capsys, fast_torch):
    """A path,label table's numbers are targets, not class names numbered 0..n (which gave a wrong MAE, silently)."""
    from tests.builders.cli import main_error

    model, table, npz = write_image_regressor(tmp_path)
    from_table, from_npz = _validate(model, table, fast_torch).metrics, _validate(model, npz, fast_torch).metrics
    capsys.readouterr()  # transformers' own chatter outside the CLI (save bars, a deprecation)
    assert from_table["metric_name"] == "mae" and from_table["eval_samples"] == 12
    for k in ("metric", "rmse", "r2"):
        assert from_table[k] == pytest.approx(from_npz[k], abs=1e-6), k
    assert from_table["metric"] > 1.0  # random weights, targets 0.26..4.33: the figure is the targets', not 0..11's

    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimg/0.png,0.5\nimg/1.png,cat\n", encoding="utf-8")
    line = main_error(capsys, "validate", model, "--data", bad, "--profile", fast_torch, "--no-cold-start")
    assert "row 2" in line and "'cat' is not a number" in line, line
    (tmp_path / "set" / "low").mkdir(parents=True)
    (tmp_path / "img" / "0.png").rename(tmp_path / "set" / "low" / "0.png")
    line = main_error(capsys, "validate", model, "--data", tmp_path / "set", "--profile", fast_torch, "--no-cold-start")
    assert "folder of classes" in line and "regressor" in line, line


def test_a_text_regressor_is_scored_on_a_table_of_decimal_targets(bert_regressor, tmp_path, capsys, fast_torch):
    """A text table's label column read as numbers for a regressor (it was refused: "label '2.10' ... is a name")."""
    from conftest import SENTENCES, write_tsv

    from compress.teachers.load import load_teacher
    from tests.builders.cli import main_error

    rows = [(f"{2.0 + 3.0 * int(lab) + 0.1 * (i % 3):.2f}", text) for i, (lab, text) in enumerate(SENTENCES)]
    met = _validate(bert_regressor, write_tsv(tmp_path, rows), fast_torch).metrics
    teacher = load_teacher(bert_regressor)
    enc = teacher.tokenizer([t for _, t in rows], padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = teacher.model(**enc).logits[:, 0].numpy()
    y = np.array([float(v) for v, _ in rows])
    assert met["metric_name"] == "mae" and met["eval_samples"] == len(rows)
    assert met["metric"] == pytest.approx(np.abs(out - y).mean(), abs=1e-4)

    line = main_error(capsys, "validate", bert_regressor, "--data", write_tsv(tmp_path, [("positive", "fine.")], "n.tsv"),
                      "--profile", fast_torch, "--no-cold-start")
    assert "row 1" in line and "'positive' is not a number" in line, line
    two = write_tsv(tmp_path, [("1.5 2", "fine."), ("0.5 1", "dull.")], "two.tsv")  # two targets a row, one output
    line = main_error(capsys, "validate", bert_regressor, "--data", two, "--profile", fast_torch, "--no-cold-start")
    assert "2 value(s) per sample" in line and "outputs 1" in line, line


def test_max_mae_increase_budget_judges_regression():
    from compress.profiles.budgets import judge
    from compress.profiles.schema import Budgets

    b = Budgets(max_mae_increase=0.02, min_accuracy_retention=None, min_agreement=None, min_speedup=None)
    assert [r.passed for r in judge(b, {"mae_increase": 0.01})] == [True]
    assert [r.passed for r in judge(b, {"mae_increase": 0.05})] == [False]


def test_multi_label_is_judged_by_micro_f1(tmp_path):
    from compress.stages.export import export
    from compress.tasks.values import multilabel_metrics

    f, x, y = _adopt(tmp_path, "multi-label-classification", 5, "labels: [a, b, c, d, e]\n"
                     "postprocess: {threshold: 0.5}\n")
    data = tmp_path / "eval.npz"
    flags = (1 / (1 + np.exp(-y)) >= 0.5).astype(np.int64)
    np.savez(data, window=x, labels=flags)
    fp32 = export(f, tmp_path / "fp32")
    met = _validate(fp32, data).metrics
    assert met["metric_name"] == "micro_f1" and met["metric"] == 1.0 and met["agreement"] == 1.0
    assert met["threshold"] == 0.5 and "macro_f1" in met

    # the metric itself: flipping one class of one sample costs F1
    m = fp32.manifest
    worse = y.copy()
    worse[0] = -worse[0]
    got = multilabel_metrics(m.postprocess, worse, y, list(flags))
    assert got["metric"] < 1.0 and got["agreement"] == got["metric"]
    with pytest.raises(DataError, match="0 or 1"):
        multilabel_metrics(m.postprocess, y, y, list(flags * 2))
    with pytest.raises(DataError, match="5 value"):
        multilabel_metrics(m.postprocess, y[:, :3], None, list(flags))


def test_accuracy_aware_quantization_of_value_tasks_needs_a_metric(tmp_path):
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    f, x, y = _adopt(tmp_path, "regression", 2)
    data = tmp_path / "eval.npz"
    np.savez(data, window=x, labels=y)
    fp32 = export(f, tmp_path / "fp32")
    with pytest.raises(ConfigError, match="accuracy-aware quantization of a regression model is not built yet"):
        quantize(fp32, tmp_path / "q", QuantizeConfig.from_flat(calibration=str(data), data=str(data), max_drop=0.01))
    assert not (tmp_path / "q").exists()


class Maps(torch.nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, classes, 3, padding=1))

    def forward(self, image):
        return self.body(image)


def _maps(d: Path, task: str, classes: int, extra: str = ""):
    torch.manual_seed(0)
    model = Maps(classes).eval()
    f = d / f"{task}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(f), opset_version=13, dynamo=False,
                          input_names=["image"], output_names=["map"],
                          dynamic_axes={"image": {0: "batch"}, "map": {0: "batch"}})
    f.with_suffix(".yaml").write_text(f"task: {task}\n{extra}", encoding="utf-8")
    x = np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    return f, x, y


def test_segmentation_is_judged_by_mean_iou(tmp_path):
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.tasks.maps import segmentation_metrics

    f, x, y = _maps(tmp_path, "semantic-segmentation", 4, "labels: [road, car, person, sky]\n")
    data = tmp_path / "eval.npz"
    np.savez(data, image=x, labels=y.argmax(1))  # the teacher's own class map
    fp32 = export(f, tmp_path / "fp32")
    met = _validate(fp32, data).metrics
    assert met["metric_name"] == "mean_iou" and met["metric"] == 1.0 and met["agreement"] == 1.0
    assert met["pixel_accuracy"] == 1.0 and met["classes"] == 4
    q = quantize(fp32, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(data)))
    met = _validate(q, data).metrics
    assert 0.5 < met["metric"] <= 1.0 and met["agreement"] == pytest.approx(met["metric"])

    post = fp32.manifest.postprocess
    wrong = y.copy()
    wrong[:, 0] += 100.0  # every pixel class 0
    assert segmentation_metrics(post, wrong, None, list(y.argmax(1)))["metric"] < 0.5
    with pytest.raises(DataError, match=r"maps of shape \[8, 8\]"):
        segmentation_metrics(post, y, None, list(y.argmax(1)[:, :8, :8]))
    with pytest.raises(DataError, match="outside the model's 4 classes"):
        segmentation_metrics(post, y, None, list(y.argmax(1) + 4))


def test_probability_map_is_judged_by_iou(tmp_path):
    from compress.stages.export import export
    from compress.tasks.maps import probability_map_metrics

    f, x, y = _maps(tmp_path, "probability-map", 1, "postprocess: {threshold: 0.5}\n")
    data = tmp_path / "eval.npz"
    flags = (y[:, 0] >= 0).astype(np.int64)  # sigmoid >= 0.5
    np.savez(data, image=x, labels=flags)
    fp32 = export(f, tmp_path / "fp32")
    met = _validate(fp32, data).metrics
    assert met["metric_name"] == "iou" and met["metric"] == 1.0 and met["agreement"] == 1.0
    post = fp32.manifest.postprocess
    assert probability_map_metrics(post, -y, y, list(flags))["metric"] < 0.5
    with pytest.raises(DataError, match="0 or 1"):
        probability_map_metrics(post, y, None, list(flags * 3))


class Reader(torch.nn.Module):
    """A text-line reader: a 1 x 8 x 32 image to 16 steps of scores over a blank and 5 characters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 12, 3, padding=1)
        self.head = torch.nn.Linear(12 * 8, 6)

    def forward(self, line):
        x = torch.relu(self.conv(line))[:, :, :, ::2]  # [b, 12, 8, 16]
        return self.head(x.permute(0, 3, 1, 2).flatten(2))  # [b, 16 steps, 6 classes]


def _reader(d: Path, alphabet: str):
    torch.manual_seed(0)
    model = Reader().eval()
    with torch.no_grad():
        model.head.weight.mul_(4)  # confident, varied steps: strings to read
    f = d / "reader.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 8, 32),), str(f), opset_version=13, dynamo=False,
                          input_names=["line"], output_names=["scores"],
                          dynamic_axes={"line": {0: "batch"}, "scores": {0: "batch"}})
    f.with_suffix(".yaml").write_text(f"task: ctc-recognition\npostprocess: {{alphabet: {alphabet!r}}}\n",
                                      encoding="utf-8")
    x = np.random.default_rng(0).standard_normal((32, 1, 8, 32)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    return f, x, y


def test_ctc_recognition_is_judged_by_character_error_rate(tmp_path):
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.tasks.sequences import ctc_decode, ctc_metrics

    f, x, y = _reader(tmp_path, "ab12-")
    fp32 = export(f, tmp_path / "fp32")
    post = fp32.manifest.postprocess
    strings = ctc_decode(y, post)
    assert sum(map(len, strings)) > 32 and all(set(s) <= set("ab12-") for s in strings)
    data = tmp_path / "eval.npz"
    np.savez(data, line=x, labels=np.array(strings))  # the teacher's own readings (a unicode array, no pickle)
    met = _validate(fp32, data).metrics
    assert met["metric_name"] == "char_accuracy" and met["metric"] == 1.0 and met["cer"] == 0.0
    assert met["exact_match"] == 1.0 and met["agreement"] == 1.0 and met["teacher_exact_match"] == 1.0
    q = quantize(fp32, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(data)))
    met = _validate(q, data).metrics
    assert 0.5 < met["metric"] <= 1.0 and met["cer"] == pytest.approx(1 - met["metric"])

    # decoding: repeats merge, blanks (class 0) split them
    steps = np.eye(6)[[1, 1, 0, 1, 2, 2, 0, 0]][None]
    assert ctc_decode(steps, post) == ["aab"]
    assert ctc_metrics(post, steps, None, ["abb"])["cer"] == pytest.approx(1 / 3)
    with pytest.raises(DataError, match="outside the model's alphabet"):
        ctc_metrics(post, steps, None, ["xyz"])


def test_a_ctc_alphabet_that_does_not_match_the_output_is_refused(tmp_path, capsys):
    from compress.cli import main

    f, _, _ = _reader(tmp_path, "ab12")  # 4 characters + blank = 5, but the output has 6 classes
    with pytest.raises(SystemExit) as e:
        main(["export", str(f), "--out", str(tmp_path / "fp32")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the alphabet has 4 characters" in err[0] and "it has 6" in err[0], err
    assert not (tmp_path / "fp32").exists()
