"""When quantize reads calibration data: a rule of the verb's, for callers that hold data it may need (a recipe)."""

from __future__ import annotations

from compress.artifact import Artifact
from compress.stages.quantize.config import QuantizeConfig
from compress.stages.quantize.graph import is_static_first


def calibrates(art: Artifact, config: QuantizeConfig) -> bool:
    """Does quantizing ``art`` with ``config`` use calibration data? Static INT8, asked for or (``mode`` not given)
    an image or array model's default, and NNCF's post-training INT8 of OpenVINO IR (not weights-only)."""
    static = config.mode == "static" or ("mode" not in config.model_fields_set and is_static_first(art)) \
        or (art.manifest.format == "openvino" and not config.int8.weights_only)
    return static and config.precision == "int8"
