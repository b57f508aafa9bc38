"""Readers that need only texts (calibration, parity samples) take any label column, names included.

A file labelled with names the model does not know (AG News's World/Sports given to a sentiment model) is
fine wherever no labels are read: ONNX static calibration, OpenVINO INT8 calibration, export's parity
samples and TensorRT INT8 calibration. Readers that score (validate) still map and check the labels.
"""

from __future__ import annotations

import pytest
from conftest import SENTENCES, write_tsv

from compress.errors import DataError
from compress.stages.export import export
from compress.stages.export.config import ExportConfig
from compress.stages.quantize import quantize
from compress.stages.quantize.config import QuantizeConfig


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """SENTENCES with topic names as labels (none of them the tiny model's negative/positive)."""
    topics = ("World", "Sports", "Business", "Sci/Tech")
    return write_tsv(tmp_path_factory.mktemp("named"), [(topics[i % 4], t) for i, (_, t) in enumerate(SENTENCES)])


def test_sample_texts_ignore_label_names(named):
    from compress.data.inputs import sample_texts

    assert sample_texts(named, 5) == [t for _, t in SENTENCES[:5]]


def test_onnx_static_calibration_with_name_labels(onnx_artifact, named, tmp_path):
    art = quantize(onnx_artifact, tmp_path / "static", QuantizeConfig.from_flat(mode="static", calibration=str(named),
                                                                      calibration_samples=16))
    assert art.manifest.precision == "int8"


def test_export_parity_samples_with_name_labels(bert_classifier, named, tmp_path):
    art = export(bert_classifier, tmp_path / "onnx", ExportConfig(sample_data=str(named), parity_samples=4))
    assert art.manifest.steps[-1].metrics["parity"]["texts"] == [t for _, t in SENTENCES[:4]]


def test_tensorrt_int8_calibration_with_name_labels(onnx_artifact, named, tmp_path):
    art = export(onnx_artifact.path, tmp_path / "trt", ExportConfig.from_flat(format="tensorrt", precision="int8", dry_run=True,
                                                                    calibration=str(named), calibration_samples=16))
    assert art.path.is_dir()


def test_openvino_int8_calibration_with_name_labels(ov_artifact, named, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    ov = ov_artifact
    art = quantize(ov, tmp_path / "ov-int8", QuantizeConfig.from_flat(calibration=str(named), calibration_samples=16))
    assert art.manifest.precision == "int8"


def test_scoring_readers_still_check_names(named):
    from compress.data.tables import load_dataset

    with pytest.raises(DataError, match="not a label the model knows"):
        load_dataset(named, label2id={"negative": 0, "positive": 1})
