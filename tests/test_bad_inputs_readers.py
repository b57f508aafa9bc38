"""Bad inputs for readers and layouts (from issue 69): a Latin-1 or binary file given as text is one line naming the
file and UTF-8 in every reader of users' text (they decode through compress.data.utf8); a ``.wav`` cut mid-sample is
one line; ``finetune --task question-answering --max-length 8`` names the option in one line; a detector layout
refuses a stride of 0 and the parameters another layout reads (``nms`` under ``yolox``, ``strides`` under
``decoded``)."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from compress.data.audio import read_wav
from compress.errors import DataError
from tests.builders.cli import assert_one_line_error, in_process

pytestmark = pytest.mark.slow

LATIN1 = "Caf\u00e9 cr\u00e8me, na\u00efve fa\u00e7ade.\n".encode("latin-1")
BINARY = b"\x00\x01\x02ELF\x00\x00\x00binary\n"


def _write(path: Path, head: str, bad: bytes) -> Path:
    path.write_bytes(head.encode("utf-8") + bad)
    return path


def _texts(d: Path, bad: bytes) -> list:
    from compress.data.text import read_prompts, read_texts, read_training_texts

    return [(read_texts, _write(d / "doc.txt", "", bad)), (read_prompts, _write(d / "prompts.txt", "", bad)),
            (read_training_texts, _write(d / "train.jsonl", '{"text": "ok"}\n', bad))]


def _tables(d: Path, bad: bytes) -> list:
    from compress.data.boxes import load_boxes
    from compress.data.squad import load_squad
    from compress.data.tables import load_dataset
    from compress.data.words import load_word_dataset

    return [(load_dataset, _write(d / "rows.csv", "text,label\n", bad)),
            (load_dataset, _write(d / "rows.json", "[", bad)),
            (load_word_dataset, _write(d / "words.conll", "EU B-ORG\n", bad)),
            (load_squad, _write(d / "squad.json", "", bad)),
            (lambda p: load_boxes(p, None), _write(d / "boxes.json", "", bad))]


@pytest.mark.parametrize("bad, words", [(LATIN1, ("not valid UTF-8", "iconv")), (BINARY, ("binary, not text",))],
                         ids=["latin-1", "binary"])
@pytest.mark.parametrize("kind", [_texts, _tables], ids=["text", "tables"])
def test_every_text_reader_refuses_bytes_that_are_not_utf8_in_one_line(tmp_path, bad, words, kind):
    for read, path in kind(tmp_path, bad):
        with pytest.raises(DataError) as e:
            read(path)
        line = str(e.value)
        assert path.name in line and "\n" not in line, line
        for w in words:
            assert w in line, (path.name, line)


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Path:
    """A tiny Llama's FP32 ONNX artifact (a text generator: quantize and validate read text)."""
    pytest.importorskip("onnxruntime")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from tests.builders.lm import tiny_causal_lm

    root = tmp_path_factory.mktemp("lm")
    return export(tiny_causal_lm(root / "ckpt"), root / "fp32", ExportConfig(format="onnx")).path


@pytest.mark.parametrize("bad", [LATIN1, BINARY], ids=["latin-1", "binary"])
def test_quantize_and_validate_of_a_generator_refuse_a_text_file_that_is_not_utf8(capfd, generator, tmp_path, bad):
    text = _write(tmp_path / "calib.txt", "", bad)
    proc = in_process(capfd, "quantize", generator, "--int4-algorithm", "gptq", "--calibration", text, "--out",
                      tmp_path / "int4")
    assert_one_line_error(proc, "calib.txt", "UTF-8" if bad is LATIN1 else "binary")
    assert not (tmp_path / "int4").exists()
    proc = in_process(capfd, "validate", generator, "--data", text, "--report-dir", tmp_path / "report")
    assert_one_line_error(proc, "calib.txt", "UTF-8" if bad is LATIN1 else "binary")


def test_a_wav_cut_mid_sample_is_one_line(tmp_path):
    path = tmp_path / "cut.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(160, "<i2").tobytes())
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="cut mid-sample") as e:
        read_wav(path, 16000)
    assert "cut.wav" in str(e.value) and "\n" not in str(e.value)


def test_finetune_question_answering_with_too_short_a_max_length_names_the_option(capfd, tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "train.json").write_text(json.dumps({"data": []}), encoding="utf-8")
    proc = in_process(capfd, "finetune", tmp_path / "base", "--train", tmp_path / "train.json", "--task",
                      "question-answering", "--max-length", "8", "--out", tmp_path / "out")
    assert_one_line_error(proc, "--max-length", "8", "16 or more")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """Tiny YOLOX's ONNX file ([batch, 21, 7] on a 32x32 input): test_detection_layouts' model, without its yaml."""
    pytest.importorskip("torch")
    from tests.tasks.test_detection_layouts import _yolox

    f = _yolox(tmp_path_factory.mktemp("det"), static=True)
    f.with_suffix(".yaml").unlink()
    return f


@pytest.mark.parametrize("post, words", [
    ("{layout: yolox, strides: [8, 0, 32], scores_are_probabilities: true}", ("strides", "greater than or equal to 1")),
    ("{layout: yolox, strides: [8, 16, 32], nms: true}", ("postprocess.nms", "layout yolox", "decoded")),
    ("{layout: decoded, boxes: cxcywh, strides: [8, 16, 32]}", ("postprocess.strides", "layout decoded", "yolox")),
    ("{layout: yolox, strides: [8, 16, 32], keypoints: 2}", ("postprocess.keypoints", "layout yolox", "ssd")),
    ("{layout: ssd, box_scale: [32, 32, 32, 32], normalized: true, anchors: {num_layers: 1, strides: [0], "
     "min_scale: 0.1, max_scale: 0.7}}", ("strides", "greater than or equal to 1")),
], ids=["stride-0", "nms-under-yolox", "strides-under-decoded", "keypoints-under-yolox", "ssd-stride-0"])
def test_a_layout_refuses_a_zero_stride_and_what_another_layout_reads(capfd, detector, tmp_path, post, words):
    from tests.tasks.test_detection_layouts import LABELS, YOLOX_PRE

    model = tmp_path / detector.name
    model.write_bytes(detector.read_bytes())
    model.with_suffix(".yaml").write_text(f"task: object-detection\nlabels: {json.dumps(LABELS)}\n"
                                          f"preprocess: {YOLOX_PRE}\npostprocess: {post}\n", encoding="utf-8")
    proc = in_process(capfd, "export", model, "--out", tmp_path / "fp32")
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "fp32").exists()


def test_a_validation_error_a_stage_raises_is_one_line_naming_the_field(monkeypatch, capsys):
    """The net under the settings' own checks: a model a stage builds from an option's value (finetune's QA window
    was one) refuses it in one line, exit 2, not pydantic's several lines after 'unexpected ValidationError'."""
    from pydantic import BaseModel, Field

    import compress.cli
    from tests.builders.cli import main_error

    class Window(BaseModel):
        window: int = Field(384, ge=16)

    def build(*args, **kwargs):
        Window(window=8)

    monkeypatch.setattr(compress.cli.cli, "main", build)
    line = main_error(capsys, "finetune")
    assert "Window window: Input should be greater than or equal to 16" in line and "unexpected" not in line


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_a_model_yaml_that_is_not_utf8_is_one_line(capfd, tmp_path, suffix):
    """model.yaml beside an adopted file or a program goes through the same decoder (a .pt2's was 'unexpected
    UnicodeDecodeError', exit 3)."""
    model = tmp_path / f"m{suffix}"
    if suffix == ".onnx":  # read before its yaml: a real graph
        onnx = pytest.importorskip("onnx")
        from onnx import TensorProto, helper

        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("x", "y")]
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    else:
        model.write_bytes(b"\x08\x01" + bytes(range(256)))
    model.with_suffix(".yaml").write_bytes(b"task: image-classification\nlabels: [" + LATIN1.strip() + b"]\n")
    proc = in_process(capfd, "export", model, "--out", tmp_path / "out")
    assert_one_line_error(proc, "m.yaml", "not valid UTF-8", "iconv")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["eval.tsv", "eval.csv", "eval.jsonl", "eval.conll", "text.txt"])
def test_a_search_splits_its_eval_text_through_the_one_decoder(tmp_path, name):
    from compress.search.holdout import split_eval, split_text

    path = _write(tmp_path / name, "", LATIN1 * 30)
    with pytest.raises(DataError, match="not valid UTF-8") as e:
        (split_text(path, tmp_path / "split") if name == "text.txt" else split_eval(path, tmp_path / "split", 0))
    assert name in str(e.value)


def test_an_alpaca_rows_input_is_part_of_its_prompt(tmp_path):
    from compress.data.text import PromptResponse, read_training_texts

    rows = tmp_path / "alpaca.jsonl"
    rows.write_text('{"instruction": "Sum these.", "input": "2 and 3", "output": "5"}\n'
                    '{"instruction": "Say hi.", "input": "", "output": "hi"}\n', encoding="utf-8")
    got = read_training_texts(rows, prompt_field="instruction", response_field="output")
    assert got == [PromptResponse("Sum these.\n\n2 and 3", "5"), PromptResponse("Say hi.", "hi")]
