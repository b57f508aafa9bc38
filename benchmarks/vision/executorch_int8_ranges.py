"""ExecuTorch static INT8 of ``.pt2`` programs under each activation range estimator of ``export --calibration-method``
(issue 53: which default keeps >= 0.99 of a program's accuracy).

Two real CNNs brought as ``torch.export`` programs, each exported with ``edgecompress``'s library call
(``export(program, out, ExportConfig(format="executorch", precision="int8", calibration=..., calibration_method=M))``)
and run in ExecuTorch's runtime (XNNPACK):

* **digits CNN**: the small CNN ``tests/stages/test_program_int8_qad.py`` trains on 1,200 of scikit-learn's 8x8 grey
  digits (real scans), calibrated on the first 128 of them, judged on the 597 held-out digits (true labels);
* **ImageNet MobileNetV2** (``benchmarks/vision/real_cnns.py``'s program): calibrated and judged on the photo-cut folds of
  ``benchmarks/vision/cnn_int8_heldout.py`` (run it first: its views and split), every judged photo unseen in calibration;
  labels are the FP32 teacher's confident top-1.

Per model and estimator: retention (INT8 accuracy / the program's FP32 accuracy), top-1 agreement with the FP32
program, export seconds. Results: ``benchmarks/results/executorch_int8_ranges.json``. Needs executorch (the CI's
transformers-5 environment has it)::

    nice -n 5 .venv-ci-tf5/bin/python benchmarks/vision/executorch_int8_ranges.py [--methods auto,mean-minmax,histogram,minmax]

``auto`` is export's default: both mean-minmax and histogram calibrated, the one whose INT8 outputs on the calibration
rows have the higher SQNR against the FP32 program kept (the row records which and both SQNRs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
sys.path.append(str(ROOT.parent))  # tests.*; the compress on the path first wins


def _export(program: Path, out: Path, calibration: Path, method: str, samples: int):
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    if (out / "manifest.json").is_file():  # built by an earlier run: resumable
        return load_artifact(out), None
    t = time.perf_counter()
    art = export(program, out, ExportConfig.from_flat(format="executorch", precision="int8",
                                                      calibration=str(calibration), calibration_method=method,
                                                      calibration_samples=samples), force=True)
    return art, round(time.perf_counter() - t, 1)


def _predict(art, x: np.ndarray) -> np.ndarray:
    from compress.runtimes.base import load_runtime

    runtime = load_runtime(art)
    try:
        name = art.manifest.inputs[0].name
        return np.concatenate([runtime.predict({name: x[i:i + 1]}) for i in range(len(x))])
    finally:
        runtime.close()


def digits(work: Path, method: str) -> dict:
    import torch

    from tests.stages.test_program_int8_qad import _digits_program

    program = work / "digits" / "model.pt2"
    test_file = work / "digits" / "test.npz"
    if not program.is_file():
        _, test = _digits_program(work / "digits")
        np.savez(test_file, **test)
    test = np.load(test_file)
    x = ((test["images"][:, None].astype(np.float32) / 255 - 0.5) / 0.5)
    with torch.no_grad():
        fp32 = torch.export.load(str(program)).module()(torch.from_numpy(x)).numpy().argmax(1)
    art, seconds = _export(program, work / f"digits-{method}", work / "digits" / "train.npz", method, 128)
    int8 = _predict(art, x).argmax(1)
    acc32, acc8 = float((fp32 == test["labels"]).mean()), float((int8 == test["labels"]).mean())
    return {"views": len(x), "fp32_accuracy": round(acc32, 4), "int8_accuracy": round(acc8, 4),
            "retention": round(acc8 / acc32, 4), "agreement": round(float((int8 == fp32).mean()), 4),
            "export_s": seconds, **_choice(art)}


def _choice(art) -> dict:
    """The estimator ``auto`` kept and the SQNR of each it tried (empty for a method asked by name)."""
    q = art.manifest.steps[-1].metrics["quantization"]
    return {"chosen": q["calibration_method"], **q["range_choice"]} if q.get("range_choice") else {}


def mobilenet(work: Path, real: Path, method: str, folds: list[int], samples: int) -> dict:
    import csv

    from benchmarks.harness.heldout import fold_files
    from compress.device.feeds import ImageFeeds
    from compress.teachers.images import inspect_image_source

    heldout = ROOT / ".cache" / "cnn-int8-heldout"
    split = json.loads((heldout / "split.json").read_text())
    info = inspect_image_source(real / "mobilenet_v2")
    feeds = ImageFeeds.from_spec(info.preprocess.model_dump())
    agree = views = 0
    per_fold = {}
    for fold in folds:
        files = fold_files(heldout, split, fold)
        with open(files["judging"], encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        art, seconds = _export(real / "mobilenet_v2" / "model.pt2", work / f"mnv2-{method}-fold{fold}",
                               files["calibration"], method, samples)
        x = feeds.encode([r["path"] for r in rows])[info.preprocess.input_name]
        top = _predict(art, x).argmax(1)
        hits = int((top == np.array([int(r["label"]) for r in rows])).sum())
        per_fold[fold] = {"views": len(rows), "agreement": round(hits / len(rows), 4), "export_s": seconds,
                          **_choice(art)}
        # a second figure: every judging view (other folds' photos gave calibration views too: not held out)
        every = [r for r in split["views"] if r["role"] == "judging" and r["confidence"] >= split["min_confidence"]]
        x = feeds.encode([r["path"] for r in every])[info.preprocess.input_name]
        top = _predict(art, x).argmax(1)
        per_fold[fold]["every_judging_view"] = {"views": len(every), "agreement": round(float(
            (top == np.array([r["label"] for r in every])).mean()), 4)}
        agree, views = agree + hits, views + len(rows)
        print(method, fold, per_fold[fold], flush=True)
    return {"views": views, "agreement": round(agree / views, 4), "retention": round(agree / views, 4),
            "folds": per_fold, "calibration_samples": samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="auto,mean-minmax,histogram,minmax")
    ap.add_argument("--models", default="digits,mobilenet_v2")
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--calibration-samples", type=int, default=128)
    ap.add_argument("--real", type=Path, default=ROOT / ".cache" / "real-cnns")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "executorch-int8-ranges")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "executorch_int8_ranges.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text())["rows"] if args.out.is_file() else {}
    for method in args.methods.split(","):
        for model in args.models.split(","):
            key = f"{model}: {method}"
            results[key] = digits(args.work, method) if model == "digits" else mobilenet(
                args.work, args.real, method, [int(f) for f in args.folds.split(",")], args.calibration_samples)
            print(key, results[key], flush=True)
            _write(args.out, results, argv)
    return 0


def _write(out: Path, results: dict, argv) -> None:
    from benchmarks.harness.results import write_results

    write_results(out, {"rows": results}, argv=[__file__, *(argv if argv is not None else sys.argv[1:])])
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
