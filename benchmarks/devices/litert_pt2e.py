#!/usr/bin/env python
"""litert-torch's own PT2E INT8 against ai-edge-quantizer's dynamic-range INT8 (issue 40: which keeps more accuracy).

Each model of ``benchmarks/devices/mobile.py`` is captured with ``torch.export`` (text at the 128 tokens ``export --format
litert`` converts), annotated by litert-torch's ``PT2EQuantizer`` (symmetric, per-channel weights) and converted by
``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``: ``pt2e-static`` (activations calibrated on
128 seeded training rows or images), ``pt2e-dynamic`` (``is_dynamic=True``: INT8 weights, activations quantized at run
time) and, for text, ``pt2e-dynamic-strict``: the same with litert-converter's ``strict_qdq_mode`` on (not exposed by
``litert_torch.convert``). Without it the converter also quantizes the word embeddings with a nonzero zero point, which
LiteRT's EMBEDDING_LOOKUP refuses at load; with it the linear weights stay INT8 constants behind DEQUANTIZE ops and
the matmuls run in float (weight-only in effect): ``matmuls`` records each file's operand types.

Each file, read as a model file made elsewhere (its ``model.yaml`` beside it), runs in LiteRT's interpreter through the
``litert`` runtime as ``benchmarks/devices/mobile.py`` runs it, beside the FP32 ``.tflite`` and ai-edge-quantizer's
``dynamic_wi8_afp32`` file (``benchmarks/devices/litert_convert.py``, run first) in the same run: retention and top-1 agreement
against PyTorch FP32, logit distance, size. A failure is recorded with its reason.
In litert-torch's own environment (see litert_convert.py):

    nice -n 10 /tmp/v40/bin/python benchmarks/devices/litert_pt2e.py             # results/litert_pt2e.json and the table
    nice -n 10 /tmp/v40/bin/python benchmarks/devices/litert_pt2e.py --only 'digits ViT' --methods pt2e-static
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import sys
import time
import traceback
from importlib.metadata import version
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.results import write_results
from benchmarks.harness.teachers import DEFAULT_DATA, device_panel

SEQUENCE = 128  # compress.stages.export.litert.SEQUENCE: the length a text .tflite is converted at
METHODS = {"image": ["pt2e-static", "pt2e-dynamic"], "text": ["pt2e-dynamic", "pt2e-dynamic-strict", "pt2e-static"]}


def log(msg: str) -> None:
    print(f"[litert_pt2e] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"host": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                     "python": platform.python_version()},
            "versions": {p: version(p) for p in ("torch", "torchao", "litert-torch", "litert-converter",
                                                 "ai-edge-quantizer", "ai-edge-litert", "transformers")}}


def calibration_rows(teacher, kind: str, names: list[str], n: int, seed: int) -> list[tuple]:
    """``n`` seeded training rows (SST-2 train) or images (the training digits, all classes) as one-row inputs."""
    import torch

    from benchmarks.harness.data import subset_tsv
    from compress.data.images import load_image_dataset
    from compress.data.inputs import sample_texts

    enc = teacher.encoder()
    if kind == "text":
        tsv = subset_tsv(DEFAULT_DATA / "train.tsv", HERE / ".cache" / "mobile" / f"sst2-train-{n}-seed{seed}.tsv", n, seed)
        feeds = [enc.encode([t], pad_to=SEQUENCE) for t in sample_texts(tsv, n)]
    else:
        items = list(load_image_dataset(HERE / ".cache" / "digits" / "train").items)
        feeds = [enc.encode([x]) for x in random.Random(seed).sample(items, min(n, len(items)))]
    return [tuple(torch.from_numpy(f[k]) for k in names) for f in feeds]


def strict_qdq():
    """litert-converter's ``strict_qdq_mode`` on (its config is built inside litert-torch): a patch to enter."""
    from unittest import mock

    from litert_torch._convert import litert_converter

    ext = litert_converter.converter_api_ext
    run = ext.run_convert_to_tfl_passes

    def strict(module, manager, config):
        config.strict_qdq_mode = True
        return run(module, manager, config)

    return mock.patch.object(ext, "run_convert_to_tfl_passes", strict)


def convert(teacher, kind: str, method: str, calib: int, seed: int, out_file: Path) -> dict:
    """Capture, annotate, calibrate and convert one model with litert-torch's PT2E; what was done."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from compress.stages.export.executorch import example_rows, traced_module

    names, example, dynamic = example_rows(teacher)
    if dynamic is not None:  # text: one fixed length, the tail masked, as export --format litert converts it
        example = tuple(torch.nn.functional.pad(x, (0, SEQUENCE - x.shape[1])) for x in example)
    static = method == "pt2e-static"
    rows = calibration_rows(teacher, kind, names, calib, seed) if static else [example]
    t0 = time.perf_counter()
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                             is_dynamic=not static))
    with torch.no_grad():
        gm = prepare_pt2e(torch.export.export(traced_module(teacher), example).module(), quantizer)
        for r in rows:  # per-channel weights need one pass even when dynamic, else their scales stay scalars
            gm(*r)
        gm = convert_pt2e(gm, fold_quantize=False)
    t1 = time.perf_counter()
    with strict_qdq() if method.endswith("-strict") else contextlib.nullcontext():
        edge = litert_torch.convert(gm, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    edge.export(str(out_file))
    return {"calibration_rows": len(rows) if static else 0, "pt2e_s": round(t1 - t0, 1),
            "conversion_s": round(time.perf_counter() - t0, 1)}


def described(tflite: Path, d: Path, label: str | None = None):
    """``tflite`` as ``edgecompress export model.tflite`` reads it (with ``label``: the AEQ file's ``model.yaml`` and
    tokenizer written beside it first); not adopted, as adopting imports onnx, which this environment lacks."""
    from compress.teachers.model_files import load_model_file

    if label is not None:
        desc = yaml.safe_load((d / "tflite-int8" / "model.yaml").read_text(encoding="utf-8"))
        desc["architecture"] = desc["architecture"].split(" (litert-torch")[0] + f" (litert-torch {label})"
        (tflite.parent / "model.yaml").write_text(yaml.safe_dump(desc, sort_keys=False), encoding="utf-8")
        for f in (d / "tflite-int8").glob("tokenizer*.json"):
            shutil.copy2(f, tflite.parent / f.name)
    return load_model_file(tflite).as_artifact()


def logits(backend, m: dict):
    """``(logits, labels)`` on the eval set: ``benchmarks/devices/mobile.py``'s ``evaluate`` (same data, same 64-row calls),
    keeping the logits so that how far they moved from FP32 is measured too."""
    import numpy as np

    from compress.data.images import load_image_dataset
    from compress.data.tables import load_dataset

    ds = load_dataset(DEFAULT_DATA / "dev.tsv", label2id={"negative": 0, "positive": 1}, num_labels=2) if m["kind"] == "text" \
        else load_image_dataset(HERE / ".cache" / "digits" / "test")
    out = np.concatenate([backend.predict_text(list(ds.inputs[i:i + 64])) for i in range(0, len(ds), 64)])
    return out.astype(np.float64), np.asarray(ds.labels)


def score(art, m: dict, ref, labels, threads: int) -> dict:
    """``art`` in LiteRT's interpreter (the ``litert`` runtime) against the PyTorch FP32 logits ``ref``."""
    from collections import Counter

    import numpy as np

    from compress.runtimes.base import RuntimeSettings, load_runtime

    b = load_runtime(art, "litert", settings=RuntimeSettings(threads=threads))
    t0 = time.perf_counter()
    got, _ = logits(b, m)
    it = b.interpreter
    tensors = {t["index"]: t["dtype"].__name__ for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    matmuls = Counter(f"{o['op_name']} {tensors[o['inputs'][0]]} x {tensors[o['inputs'][1]]}" for o in ops
                      if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"))
    pred, ref_pred = got.argmax(-1), ref.argmax(-1)
    acc, ref_acc = float((pred == labels).mean()), float((ref_pred == labels).mean())
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
    out = {"accuracy": acc, "retention": acc / ref_acc, "agreement": float((pred == ref_pred).mean()),
           "logit_cosine_mean": round(float(cos.mean()), 5), "logit_cosine_min": round(float(cos.min()), 5),
           "logit_mean_abs_diff": round(float(np.abs(got - ref).mean()), 4),
           "logit_max_abs_diff": round(float(np.abs(got - ref).max()), 4),
           "size_mb": round(b.artifact.size_bytes() / 1e6, 2), "eval_s": round(time.perf_counter() - t0, 1),
           "io_dtypes": [sorted({d["dtype"].__name__ for d in it.get_input_details()}),
                         sorted({d["dtype"].__name__ for d in it.get_output_details()})],
           "matmuls": dict(matmuls), "ops": dict(Counter(o["op_name"] for o in ops))}
    b.close()
    return out


def summary(r: dict) -> str:
    return (f"accuracy {r['accuracy']:.4f} (retention {r['retention']:.4f}), agreement {r['agreement']:.4f}, "
            f"logit cosine {r['logit_cosine_mean']:.4f}, {r['size_mb']} MB")


def run_model(name: str, m: dict, args) -> list[dict]:
    import torch

    from compress.artifact import load_artifact
    from compress.runtimes.base import RuntimeSettings
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    d = args.work / name.split(" (")[0].replace(" ", "-").lower()
    teacher = load_teacher(m["source"])
    log(f"{name}: PyTorch FP32 predictions")
    ref, labels = logits(TorchBackend.from_teacher(teacher, RuntimeSettings(threads=args.threads)), m)
    ref_acc = float((ref.argmax(-1) == labels).mean())
    base = {"model": name, "pytorch_fp32_accuracy": ref_acc, "eval_rows": int(len(labels))}
    rows = []
    for method, art in (("fp32 (litert-torch)", d / "tflite-fp32"),
                        ("ai-edge-quantizer dynamic_wi8_afp32", d / "tflite-int8")):
        if not (art / "model.tflite").is_file():
            rows.append({**base, "method": method, "error": f"{art} missing: run benchmarks/devices/litert_convert.py first"})
            continue
        log(f"{name}: evaluating {method}")
        loaded = load_artifact(art) if method.startswith("fp32") else described(art / "model.tflite", d)
        rows.append({**base, "method": method, **score(loaded, m, ref, labels, args.threads)})
        log(f"{name} {method}: {summary(rows[-1])}")
    for method in METHODS[m["kind"]]:
        if args.methods and method not in args.methods:
            continue
        row = {**base, "method": f"litert-torch {method}"}
        tfl = d / f"tflite-{method}" / "model.tflite"
        try:
            log(f"{name}: converting {method}")
            torch.manual_seed(0)
            row.update(convert(teacher, m["kind"], method, args.calibration, args.seed, tfl))
            log(f"{name} {method}: converted in {row['conversion_s']} s; evaluating")
            row.update(score(described(tfl, d, method), m, ref, labels, args.threads))
            log(f"{name} {method}: {summary(row)}")
        except Exception as e:  # noqa: BLE001 - a failed conversion is a result: its one-line reason is recorded
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
            log(f"{name} {method}: FAILED {row['error']}")
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "mobile")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "litert_pt2e.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration", type=int, default=128, help="calibration rows or images (static)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", action="append", choices=sorted(set(METHODS["text"])),
                    help="convert only this method (repeatable)")
    ap.add_argument("--only", action="append", help="measure this model only (repeatable); the JSON keeps the others' "
                    "rows from an earlier run")
    args = ap.parse_args()
    import compress  # noqa: F401 - before torchvision-using imports
    # isort: split
    import torch

    torch.set_num_threads(args.threads)
    chosen = device_panel(args.only)
    rows = [r for r in json.loads(args.out.read_text())["rows"] if r["model"] not in chosen] \
        if args.only and args.out.is_file() else []
    for name, m in chosen.items():
        rows += run_model(name, m, args)
        write_results(args.out, {**machine(), "threads": args.threads, "calibration_rows": args.calibration,
                                 "seed": args.seed, "rows": rows})
    print("| model | method | accuracy (retention) | agreement | logit cosine | size MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = (f"{r['accuracy']:.4f} ({r['retention']:.4f}) | {r['agreement']:.4f} | {r['logit_cosine_mean']:.4f} | "
                 f"{r['size_mb']}" if "error" not in r else f"failed: {r['error'][:80]} | | | ")
        print(f"| {r['model']} | {r['method']} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
