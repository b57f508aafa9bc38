"""Why the MobileNetV2 feature map misses 0.99 output cosine in INT8 (docs/benchmarks/results.md's reading of benchmarks/vision/adopted.py).

On the adopted ``mobilenet_v2_features`` artifact ``benchmarks/vision/adopted.py`` leaves in ``--work``, and on its photo
arrays (calibration: the calibration views; eval: the first ``--eval`` eval views), it measures the output cosine
against the FP32 file of:

* edgecompress's static INT8 with each ``--calibration-method`` (minmax, mean-minmax, entropy, percentile);
* ONNX Runtime's quantizer at other bit widths, per-channel weights, min-max ranges: 16-bit activations with 8-bit
  weights (A16W8) and with 16-bit weights (A16W16), to see which half of INT8 costs the cosine.

Results: ``benchmarks/results/dense_map_int8.json``.

    python benchmarks/vision/adopted.py --models mobilenet_v2_features   # once
    python benchmarks/vision/dense_map_int8.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.results import write_results


def _outputs(model_path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: images[i:i + 10]})[0] for i in range(0, len(images), 10)])


def _ort_bits(fp32: Path, out: Path, calibration: np.ndarray, activations: str, weights: str) -> Path:
    from onnxruntime import quantization as ortq

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"image": row}

    ortq.quantize_static(str(fp32), str(out), Reader(), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                         activation_type=getattr(ortq.QuantType, activations),
                         weight_type=getattr(ortq.QuantType, weights),
                         op_types_to_quantize=["Conv", "MatMul", "Gemm", "Clip", "Relu"],
                         extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                        "UseQDQContribOps": activations != "QUInt8" or weights != "QInt8"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "adopted")
    ap.add_argument("--eval", type=int, default=100, help="eval views used")
    ap.add_argument("--calibration", type=int, default=128, help="calibration views used by the bit-width variants")
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "dense_map_int8.json")
    args = ap.parse_args(argv)
    from compress.artifact import load_artifact
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.tasks.outputs import output_fidelity

    fp32 = load_artifact(args.work / "artifacts" / "mobilenet_v2_features" / "fp32")
    calibration_npz = args.work / "photos-calibration.npz"
    with np.load(args.work / "photos-eval.npz") as f:
        images = f["image"][: args.eval]
    with np.load(calibration_npz) as f:
        calibration = f["image"][: args.calibration]
    reference = _outputs(fp32.model_path, images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("minmax", "mean-minmax", "entropy", "percentile"):
            art = quantize(fp32, Path(tmp) / method, QuantizeConfig.from_flat(calibration=str(calibration_npz),
                                                                    calibration_method=method))
            rows.append({"variant": f"edgecompress static INT8, {method}",
                         **output_fidelity(_outputs(art.model_path, images), reference)})
            print(json.dumps(rows[-1]), flush=True)
        for acts, weights in (("QUInt8", "QInt8"), ("QUInt16", "QInt8"), ("QUInt16", "QInt16")):
            model = _ort_bits(fp32.model_path, Path(tmp) / f"{acts}-{weights}.onnx", calibration, acts, weights)
            rows.append({"variant": f"ONNX Runtime QDQ, min-max, activations {acts}, weights {weights}",
                         **output_fidelity(_outputs(model, images), reference)})
            print(json.dumps(rows[-1]), flush=True)
    write_results(args.results, {"eval_views": len(images), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
