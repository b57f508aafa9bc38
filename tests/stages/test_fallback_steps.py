"""The fall-back of the default static INT8 keeps a run of layers float only where that brings the candidate closer to
FP32, and writes the closest candidate it checked (PP-OCRv4's text detector: the stem's run alone took the held-out map
cosine from 0.75 to 0.99; the runs floated after it took it to 0.83, and that last candidate was the one written).

The quantizer and the check are stand-ins that record which layers are float (a real model cannot be made to show a
given shape of the search quickly); the search itself is :func:`compress.stages.quantize.fallback.fall_back`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from compress.stages.quantize import fallback
from compress.stages.quantize.fallback import CalibrationSplit, fall_back

#: the map cosine the check measures, by the layers kept float (the shape measured on PP-OCRv4 with 8-bit weights:
#: the stem's run is what matters, and any other run floated beside it adds error); each run quantized alone (the
#: others float) ranks the stem's costliest, then the head's
FIGURES = {(): 0.75, ("stem",): 0.99, ("mid",): 0.80, ("head",): 0.78, ("mid", "stem"): 0.96, ("head", "stem"): 0.985,
           ("head", "mid"): 0.76}


@dataclass
class Layer:
    name: str
    params: int


LAYERS = [Layer("stem", 10), Layer("mid", 100), Layer("head", 50)]


class Quantizer:
    """Writes the float layers' names where the model would be."""

    config = SimpleNamespace(accuracy=SimpleNamespace(max_fp32_fraction=0.9))

    def write(self, path: Path, exclude: list[str]) -> None:
        path.write_text(json.dumps(sorted(exclude)), encoding="utf-8")


class Check:
    """A probability map's held-out figures for the float layers the 'model' names (mask IoU under its floor)."""

    def __init__(self, art, rows) -> None:
        self.n, self.rows = len(rows), rows

    def measure(self, model: Path) -> dict:
        float_runs = tuple(sorted(json.loads(model.read_text(encoding="utf-8"))))
        cos = FIGURES[float_runs]
        return {"cosine_min": 0.0, "cosine_mean": 0.4, "map_cosine": cos, "mask_iou": cos - 0.05}


def test_a_run_whose_float_does_not_help_stays_int8_and_the_closest_candidate_is_written(monkeypatch, tmp_path):
    monkeypatch.setattr(fallback, "HeldOutCheck", Check)
    art = SimpleNamespace(manifest=SimpleNamespace(model_file="model.onnx"))
    split = CalibrationSplit(list(range(24)), list(range(8)), "test split")
    fb = fall_back(art, Quantizer(), LAYERS, [], split, tmp_path)
    assert [s["first"] for s in fb.record["steps"]] == ["stem", "head", "mid"]  # the ranking's order
    assert fb.exclude == ["stem"]  # head and mid were tried beside it: neither brought it closer
    assert json.loads(fb.model.read_text(encoding="utf-8")) == ["stem"]  # the file written is the closest one
    assert fb.figures["map_cosine"] == 0.99 and fb.record["after"]["map_cosine"] == 0.99
    assert fb.record["held"] is False  # its mask IoU (0.94) is still under the floor: the check says so
    assert [s["kept_float"] for s in fb.record["steps"]] == [True, False, False]
    assert fb.record["float_weight_share"] == round(10 / 160, 4)
