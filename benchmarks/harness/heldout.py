"""The held-out split of the CNN benchmarks (``benchmarks/vision/cnn_int8_heldout.py``, ``weight_range.py``,
``executorch_int8_ranges.py``): random views of the offline photos (:mod:`benchmarks.harness.cnns`) for each role
(calibration, tuning, judging), the photos grouped by scene into folds so that no judged photo is seen in
calibration, labelled with the FP32 teacher's own top-1 and its confidence; a fold's CSV files; and the batch-1 p50 of
ONNX models timed in alternating rounds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

#: photos of one scene go to one group
SCENES = {"cat": "chelsea", "motorcycle_right": "motorcycle_left"}
ROLES = {"calibration": 16, "tuning": 16, "judging": 24}  # views per photo (before the confidence filter)


def draw_views(work: Path, teacher: Path, folds: int, seed: int, min_confidence: float) -> dict:
    """The views (PNG) and their split; ``work/split.json``, kept once written."""
    if (work / "split.json").is_file():
        return json.loads((work / "split.json").read_text())
    from PIL import Image

    from benchmarks.harness.cnns import photos, views

    rng = np.random.default_rng(seed)
    pics = photos()
    scenes = sorted({SCENES.get(n, n) for n in pics})
    order = rng.permutation(len(scenes))
    group = {s: int(i % folds) for i, s in zip(range(len(scenes)), [scenes[j] for j in order])}
    rows = []
    for name, img in pics.items():
        for role, n in ROLES.items():
            d = work / "views" / role
            d.mkdir(parents=True, exist_ok=True)
            for i, v in enumerate(views(img, rng, n)):
                p = d / f"{name}-{i:02d}.png"
                Image.fromarray(np.ascontiguousarray(v)).save(p)
                rows.append({"path": str(p), "photo": name, "group": group[SCENES.get(name, name)], "role": role})
    labels, confidence = teacher_top1(teacher, [r["path"] for r in rows])
    for r, y, c in zip(rows, labels, confidence):
        r["label"], r["confidence"] = int(y), float(c)
    split = {"seed": seed, "folds": folds, "min_confidence": min_confidence, "groups": group, "views": rows}
    (work / "split.json").write_text(json.dumps(split, indent=1))
    return split


def teacher_top1(teacher: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The FP32 program's top-1 class and its probability for each image."""
    import torch

    from compress.device.feeds import ImageFeeds
    from compress.teachers.images import inspect_image_source
    from compress.teachers.programs import load_program

    info = inspect_image_source(teacher)
    feeds = ImageFeeds.from_spec(info.preprocess.model_dump())
    module = load_program(teacher / "model.pt2").module()
    top, conf = [], []
    for k in range(0, len(paths), 32):
        with torch.no_grad():
            x = torch.from_numpy(feeds.encode(paths[k:k + 32])[info.preprocess.input_name])
            p = torch.softmax(module(x), -1)
        top.append(p.argmax(-1).numpy())
        conf.append(p.max(-1).values.numpy())
    return np.concatenate(top), np.concatenate(conf)


def fold_files(work: Path, split: dict, fold: int) -> dict[str, Path]:
    """``calibration.csv`` (seeded order), ``tuning.csv`` and ``judging.csv`` (path,label; confident views) of a fold."""
    d = work / f"fold{fold}"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for role in ROLES:
        inside = role == "judging"
        rows = [r for r in split["views"] if r["role"] == role and (r["group"] == fold) == inside]
        if role != "calibration":
            rows = [r for r in rows if r["confidence"] >= split["min_confidence"]]
        else:
            rows = [rows[i] for i in np.random.default_rng(fold).permutation(len(rows))]
        out[role] = d / f"{role}.csv"
        with open(out[role], "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["path", "label"] if role != "calibration" else ["path"])
            w.writeheader()
            w.writerows({k: r[k] for k in w.fieldnames} for r in rows)
    return out


def speed(models: dict[str, Path], seconds: float, threads: int) -> dict[str, float]:
    """p50 ms at batch 1 of each ONNX model, timed in alternating rounds."""
    import onnxruntime as ort

    from compress.host.measure import measure_interleaved

    x = {"x": np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)}
    runs = {}
    for label, path in models.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        s = ort.InferenceSession(str(path if path.suffix == ".onnx" else path / "model.onnx"), opts)
        runs[label] = (lambda s=s: s.run(None, x))
    stats = measure_interleaved(runs, batch_size=1, min_runs=100, min_duration_s=seconds, warmup=10, rounds=10)
    return {label: round(stats[label].p50, 3) for label in models}
