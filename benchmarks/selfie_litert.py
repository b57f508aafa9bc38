"""MediaPipe's selfie segmenter (``../shared/models/selfie-segmentation``, a LiteRT file whose weights are FP16 behind
DEQUANTIZE ops) adopted and quantized to LiteRT INT8 by ai-edge-quantizer, dynamic and static (issue 53).

Data: random views (crops of 40-100% of the shorter side, flipped half the time; ``real_cnns.views``) of the photos
scikit-image and scikit-learn ship (``real_cnns.photos``), resized to 256 x 256 RGB in [0, 1] as the model takes them.
Judged on 24 views each of the two photos that hold a person (the astronaut, the cameraman: the segmenter's
domain), and, as a second figure, on 4 views of every photo (where most hold no person, the FP32 masks are the
model's guesses on what it was not made for, often near 0.5). Calibrated on 3 other views of every photo (drawn
separately: other crops, the same photos). Labels: the FP32 file's own masks (probability >= 0.5), so IoU is that
of the INT8 masks against the FP32 masks over every pixel of the set; the FP32 file's IoU is 1.0 by construction.

Each goes ``export selfie_segmentation.tflite`` (adopt, with ``selfie_segmentation.yaml`` beside it: ``task: probability-map``) ->
``quantize`` (``--mode dynamic``; ``--mode static --calibration``) -> ``validate --data eval.npz`` on a profile that
runs LiteRT. Results: ``benchmarks/results/selfie_litert.json``.

    python benchmarks/selfie_litert.py [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
MODEL = HERE.parents[1] / "shared" / "models" / "selfie-segmentation" / "selfie_segmentation.tflite"
SIZE = 256


def _arrays(images: list[np.ndarray]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(v)).resize((SIZE, SIZE), Image.BILINEAR),
                                dtype=np.float32) / 255.0 for v in images])


PEOPLE = ("astronaut", "camera")  # the photos that hold a person: the segmenter's domain


def _masks(x: np.ndarray) -> np.ndarray:
    """The FP32 file's 0/1 masks (probability >= 0.5) of ``x``."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(MODEL))
    it.allocate_tensors()
    masks = []
    for row in x:
        it.set_tensor(it.get_input_details()[0]["index"], row[None])
        it.invoke()
        masks.append(it.get_tensor(it.get_output_details()[0]["index"])[0, :, :, 0] >= 0.5)
    return np.stack(masks).astype(np.int64)


def write_data(work: Path, person_views: int, all_views: int, calibration_views: int) -> dict[str, Path]:
    """``people.npz``: views of the photos with a person; ``all.npz``: views of every photo (``input_1``; ``labels``:
    the FP32 file's masks); ``calibration.npz``: other views of every photo."""
    sys.path.insert(0, str(HERE))
    from real_cnns import photos, views

    rng = np.random.default_rng(0)
    people, every, cal = [], [], []
    for name, img in photos().items():
        every += views(img, rng, all_views)
        cal += views(img, rng, calibration_views)
        if name in PEOPLE:
            people += views(img, rng, person_views)
    out = {"people": work / "people.npz", "all": work / "all.npz", "calibration": work / "calibration.npz"}
    for key, images in (("people", people), ("all", every)):
        x = _arrays(images)
        np.savez(out[key], input_1=x, labels=_masks(x))
    np.savez(out["calibration"], input_1=_arrays(cal))
    return out


def _cli(*args, check: bool = True) -> None:
    cmd = ["edgecompress", *map(str, args)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=check)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/selfie_litert"))
    ap.add_argument("--person-views", type=int, default=24, help="views of each photo with a person (judged)")
    ap.add_argument("--all-views", type=int, default=4, help="views of every photo (judged, a second figure)")
    ap.add_argument("--calibration-views", type=int, default=3, help="other views of every photo (calibration)")
    args = ap.parse_args()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    shutil.copy2(MODEL, work / "src" / MODEL.name)
    (work / "src" / MODEL.with_suffix(".yaml").name).write_text(yaml.safe_dump(
        {"task": "probability-map", "postprocess": {"scores_are_probabilities": True, "threshold": 0.5}}))
    data = write_data(work, args.person_views, args.all_views, args.calibration_views)
    profile = work / "litert-host.yaml"
    profile.write_text(yaml.safe_dump({"name": "litert-host", "extends": "host", "runtime": {"name": "litert"}}))
    _cli("export", work / "src" / MODEL.name, "--out", work / "fp32")
    _cli("quantize", work / "fp32", "--out", work / "int8-dynamic")
    _cli("quantize", work / "fp32", "--mode", "static", "--calibration", data["calibration"], "--out",
         work / "int8-static")
    rows = {}
    for name in ("fp32", "int8-dynamic", "int8-static"):
        step = json.loads((work / name / "manifest.json").read_text())["steps"][-1]
        row = rows[name] = {"size_bytes": (work / name / "model.tflite").stat().st_size}
        if name != "fp32":
            row.update({"size_ratio_vs_input": round(MODEL.stat().st_size / row["size_bytes"], 3),
                        "integer_weights": step["metrics"]["integer_weights"],
                        "fp16_weights_dequantized": step["config"]["fp16_weights_dequantized"]})
        for key in ("people", "all"):
            report_dir = work / f"{name}.{key}.report"
            _cli("validate", work / name, "--data", data[key], "--profile", profile, "--no-cold-start",
                 "--no-baseline", "--report-dir", report_dir, check=False)  # budgets are not what is judged here
            m = json.loads((report_dir / "report.json").read_text())["metrics"]
            row[f"iou_vs_fp32_masks_{key}"] = m.get("metric")
            row[f"p50_ms_{key}"] = m.get("latency_ms", {}).get("p50")
        print(name, row, flush=True)
    out = {"model": "MediaPipe selfie_segmentation.tflite (FP16 weights behind DEQUANTIZE)",
           "input_bytes": MODEL.stat().st_size,
           "people_views": int(len(np.load(data["people"])["labels"])),
           "all_views": int(len(np.load(data["all"])["labels"])),
           "calibration_views": int(len(np.load(data["calibration"])["input_1"])), "results": rows}
    (HERE / "results" / "selfie_litert.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
