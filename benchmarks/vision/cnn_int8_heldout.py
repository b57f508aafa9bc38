"""The ImageNet MobileNetV2's static INT8 judged on photos it was neither calibrated nor tuned on (issue 53): the
field's remedies, each through a maintained implementation, side by side on the same three-way split.

Inputs: ``python benchmarks/vision/real_cnns.py`` (the model, ``mobilenet_v2/model.pt2``). Views are drawn here, with their
own seed, from the photos scikit-image and scikit-learn ship (``real_cnns.photos``/``views``), and **cut by source
photo**: the photos of one scene (Chelsea the cat is ``cat`` and ``chelsea``; the motorcycle's stereo pair is one
scene) are dealt, in a seeded order, into ``--folds`` groups. Every photo gives three disjoint kinds of views:
calibration views (unlabelled), tuning views and judging views (each labelled with the FP32 teacher's own top-1, kept
where it is confident: top-1 probability >= 0.5). In fold k:

* **calibration**: the calibration views of the photos outside group k (their CSV in a seeded order, so any
  ``calibration_samples`` prefix mixes every photo);
* **tuning**: the tuning views of the photos outside group k (what a remedy or setting may be chosen on);
* **judging**: the judging views of group k's photos: photos no calibration or tuning view came from.

Pooled over the folds, every photo is judged once, by INT8 models that never saw it. Each variant is quantized per
fold (``compress.stages.quantize.quantize``, the library call behind the CLI, where the remedy is an option of it;
ONNX Runtime's or NNCF's own API where it is not), and scored on its fold's tuning and judging views: agreement of
the INT8 top-1 with the FP32 teacher's (= retention, the labels being the teacher's), mean logit cosine. Speed: p50
at batch 1 against the ONNX FP32 model, timed in alternating rounds in one process (``--time`` variants, fold 0).
Results: ``benchmarks/results/cnn_int8_heldout.json``.

    python benchmarks/vision/real_cnns.py
    nice -n 5 python benchmarks/vision/cnn_int8_heldout.py [--variants default,minmax,...] [--time default]
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

from benchmarks.harness.heldout import ROLES, draw_views, fold_files, speed
from benchmarks.harness.results import cached_step


def _library(**flat):
    """A variant that is an option of ``quantize``."""
    def make(onnx: Path, out: Path, files: dict, w: Path) -> Path:
        from compress.stages.quantize import quantize
        from compress.stages.quantize.config import QuantizeConfig

        return quantize(onnx, out, QuantizeConfig.from_flat(calibration=str(files["calibration"]), **flat),
                        force=True).path
    return make


def _hurts_most(k: int, **flat):
    """The default, then again with the ``k`` layers its per-layer table (on calibration views) names first kept
    float (``--exclude-nodes``)."""
    def make(onnx: Path, out: Path, files: dict, w: Path) -> Path:
        base = VARIANTS["default"](onnx, w / "default", files, w) if not (w / "default" / "manifest.json").is_file() \
            else w / "default"
        table = json.loads((base / "manifest.json").read_text())["steps"][-1]["metrics"]["layer_errors"]
        worst = [r["node"] for r in table["hurts_most"][:k]]
        return _library(exclude_nodes=worst, **flat)(onnx, out, files, w)
    return make


def _nncf(bias: str):
    """NNCF's own ONNX post-training quantization (its placement, its range setting), with ``bias`` correction."""
    def make(onnx: Path, out: Path, files: dict, w: Path) -> Path:
        import nncf
        import onnx as onnx_lib

        from compress.artifact import load_artifact
        from compress.data.inputs import sample_inputs
        from compress.runtimes.ort_backend import OrtBackend

        art = load_artifact(onnx)
        items = sample_inputs(files["calibration"], 256, art.manifest.preprocess)
        src = OrtBackend(art)
        feeds = [src.encode([x]) for x in items]
        src.close()
        model = onnx_lib.load(str(art.model_path))
        q = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                          fast_bias_correction=bias == "fast")
        out.mkdir(parents=True, exist_ok=True)
        onnx_lib.save(q, str(out / "model.onnx"))
        return out / "model.onnx"
    return make


VARIANTS = {
    "default": _library(),
    "minmax": _library(calibration_method="minmax"),
    "entropy": _library(calibration_method="entropy"),
    "percentile 99.999": _library(calibration_method="percentile", percentile=99.999),
    "percentile 99.99": _library(calibration_method="percentile", percentile=99.99),
    "default + 64 calibration views": _library(calibration_samples=64),
    "default + every calibration view": _library(calibration_samples=1000),
    "per-tensor weights": _library(per_channel=False),
    "default + 2 worst layers float": _hurts_most(2),
    "default + 4 worst layers float": _hurts_most(4),
    "NNCF ONNX + fast bias correction": _nncf("fast"),
    "NNCF ONNX + bias correction": _nncf("full"),
}


def evaluate(model: Path, onnx: Path, files: dict) -> dict:
    """Agreement with the teacher's top-1 (the labels) and mean logit cosine to the ONNX FP32 model, per view set."""
    import onnxruntime as ort

    from compress.artifact import load_artifact
    from compress.data.inputs import load_inputs
    from compress.runtimes.ort_backend import OrtBackend

    art = load_artifact(onnx)
    fp32 = OrtBackend(art)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model if model.suffix == ".onnx" else model / "model.onnx"), opts)
    out = {}
    for role in ("tuning", "judging"):
        ds = load_inputs(files[role], art.manifest.preprocess, label2id={n: i for i, n in enumerate(art.manifest.labels)},
                         require_labels=True)
        a, b = [], []
        for batch, _, _ in ds.batches(32):
            feeds = fp32.encode(batch)
            a.append(fp32.predict(feeds))
            b.append(sess.run(None, feeds)[0])
        a, b = np.concatenate(a), np.concatenate(b)
        cos = (a * b).sum(-1) / np.clip(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12, None)
        labels = np.asarray(ds.labels)
        out[role] = {"views": len(labels), "agree": int((b.argmax(-1) == labels).sum()),
                     "fp32_agree": int((a.argmax(-1) == labels).sum()), "cosine_sum": float(cos.sum())}
    fp32.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, default=ROOT / ".cache" / "real-cnns", help="what real_cnns.py wrote")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "cnn-int8-heldout")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=53)
    ap.add_argument("--time", default="default", help="variants timed against ONNX FP32 (fold 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "cnn_int8_heldout.json")
    args = ap.parse_args(argv)
    import torch

    from compress.stages.export import export

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teacher = args.real / "mobilenet_v2"
    split = draw_views(args.work, teacher, args.folds, args.seed, 0.5)
    onnx = cached_step("MobileNetV2 ONNX", args.work / "onnx", lambda: export(teacher, args.work / "onnx", force=True))
    previous = json.loads(args.out.read_text())["rows"] if args.out.is_file() else {}
    for name in [v for v in args.variants.split(",") if v]:
        per_fold = previous.get(name, {}).get("folds", {})
        for fold in range(args.folds):
            if str(fold) in per_fold:
                continue
            files = fold_files(args.work, split, fold)
            w = args.work / f"fold{fold}"
            t = time.perf_counter()
            model = VARIANTS[name](onnx, w / name.replace(" ", "-").replace("+", ""), files, w)
            per_fold[str(fold)] = {**evaluate(Path(model), onnx, files), "build_s": round(time.perf_counter() - t, 1),
                                   "path": str(model)}
            print(name, fold, {k: v for k, v in per_fold[str(fold)].items() if k != "path"}, flush=True)
        previous[name] = {**previous.get(name, {}), **pooled(per_fold)}
        write(args, split, previous, argv, t0)  # after each variant: a long run can be stopped and resumed
    timed = [v for v in args.time.split(",") if v and v in previous]
    if timed:
        models = {"ONNX FP32": args.work / "onnx"}
        models.update({v: Path(previous[v]["folds"]["0"]["path"]) for v in timed})
        p50 = speed(models, args.seconds, args.threads)
        for v in timed:
            previous[v]["p50_ms"], previous[v]["speed_vs_onnx_fp32"] = p50[v], round(p50["ONNX FP32"] / p50[v], 2)
        previous["ONNX FP32"] = {"p50_ms": p50["ONNX FP32"]}
    print("\n| variant | tuning agreement | judging agreement (worst fold) | judging cosine | vs ONNX FP32 |")
    print("|---|---|---|---|---|")
    for name, r in previous.items():
        if "judging" in r:
            print(f"| {name} | {r['tuning']['agreement']:.3f} | {r['judging']['agreement']:.3f} "
                  f"({r['judging']['worst_fold_agreement']:.3f}) | {r['judging']['logit_cosine']:.3f} | "
                  f"{str(r.get('speed_vs_onnx_fp32', '')) + 'x' if 'speed_vs_onnx_fp32' in r else ''} |")
    write(args, split, previous, argv, t0)
    return 0


def pooled(per_fold: dict) -> dict:
    """A variant's figures over its folds: each view set pooled, and its worst fold."""
    row = {"folds": per_fold}
    for role in ("tuning", "judging"):
        n = sum(f[role]["views"] for f in per_fold.values())
        row[role] = {"views": n, "agreement": round(sum(f[role]["agree"] for f in per_fold.values()) / n, 4),
                     "onnx_fp32_agreement": round(sum(f[role]["fp32_agree"] for f in per_fold.values()) / n, 4),
                     "logit_cosine": round(sum(f[role]["cosine_sum"] for f in per_fold.values()) / n, 4),
                     "worst_fold_agreement": round(min(f[role]["agree"] / f[role]["views"]
                                                       for f in per_fold.values()), 4)}
    return row


def write(args, split: dict, rows: dict, argv, t0: float) -> None:
    from benchmarks.harness.results import write_results

    groups: dict[str, list[str]] = {}
    for scene, g in split["groups"].items():
        groups.setdefault(str(g), []).append(scene)
    write_results(args.out, {
        "seconds": round(time.perf_counter() - t0, 1),
        "split": {"seed": split["seed"], "folds": split["folds"], "scene_groups": groups,
                  "views_per_photo": ROLES, "min_confidence": split["min_confidence"],
                  "labels": "the FP32 teacher's own top-1 where its probability >= 0.5 (agreement = retention)"},
        "rows": rows}, argv=[__file__, *(argv if argv is not None else sys.argv[1:])])
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
