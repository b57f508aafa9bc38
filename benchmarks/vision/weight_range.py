"""Which INT8 weight range the default static INT8 takes when no profile names the target CPU (issue 69): the
ImageNet MobileNetV2 quantized once per candidate, each artifact judged on the kernels of both kinds of x86 host.

ONNX Runtime's x86 INT8 kernels differ by CPU: with VNNI (AVX-512 VNNI, AVX-VNNI) the u8 x s8 products are summed
exactly in 32 bits; on AVX2 without VNNI the U8S8 kernels use VPMADDUBSW, which adds two u8 x s8 products into a
*saturating* int16 before widening (255 x 127 x 2 = 64770 > 32767). MLAS picks its kernels from CPUID only (no
environment flag forces the AVX2 path: ``onnxruntime/core/mlas/lib/platform.cpp``), so the AVX2 host is emulated:
the same ONNX Runtime wheel under ``qemu-x86_64 -cpu Haswell`` (QEMU user mode, TCG: AVX2/FMA3, no AVX-512, no VNNI),
whose CPUID makes MLAS take its AVX2 kernels for real. :func:`saturation_probe` proves it before anything is judged
(one MatMulInteger of 255 x 127: exact natively, clipped to 32767 per pair under the emulated Haswell).

Candidates (each the library's default static INT8, ``compress.stages.quantize.quantize``, its held-out check and
fall-back included, with one option set):

* ``default (no profile)``: what no ``--profile`` (or an x86 one without VNNI) gets: int8 weights, 7 bits in the
  GEMM-based layers (``reduce_range``: cannot saturate anywhere), 8 bits in the depthwise convolutions, whose x86
  kernels widen to 16 bits before multiplying (``compress.stages.quantize.ort_quantizer.depthwise_convs``);
* ``s8 full range``: int8 weights, 8 bits (``--weight-type int8 --full-range``): exact with VNNI, can saturate on AVX2;
* ``u8 weights (U8U8)``: uint8 weights, 8 bits (``--weight-type uint8``): MLAS's U8U8 kernels widen to int16 before
  multiplying, exact on both.

Rows of earlier runs stay in the results (``s8 reduce_range``, ``s8 reduce_range + 64 calibration views``: 7 bits
in every layer, the rule before depthwise convolutions kept 8; their ``measured_with`` says so).

The split is ``benchmarks/vision/cnn_int8_heldout.py``'s (``benchmarks.harness.heldout``: 3 folds cut by source photo;
calibration, tuning and judging views disjoint; judged: the views the FP32 teacher is confident on, labelled with
its own top-1). Each fold's judging views are preprocessed once here (FP32 ONNX feeds, saved as ``.npz``) and run by
:func:`worker` in a child process: every candidate natively (this host: AVX-512 VNNI) and under the emulated Haswell
(AVX2); the FP32 ONNX model natively, the reference of both (its float kernels differ between hosts by rounding
only). Figures, pooled over the folds:

* **retention**: INT8 top-1 = the teacher's label, over the FP32 ONNX model's own score there;
* **agreement**: INT8 top-1 = FP32 ONNX top-1 (and its worst fold); **logit cosine** to FP32 ONNX;
* **speed**: p50 at batch 1 against ONNX FP32, alternating rounds in one process, natively only (time under
  emulation means nothing), fold 0's artifacts.

    python benchmarks/vision/real_cnns.py            # the MobileNetV2 program (once)
    apt-get install qemu-user                 # qemu-x86_64 (Debian 12: QEMU 7.2, the first with AVX2 in TCG)
    nice -n 19 python benchmarks/vision/weight_range.py [--candidates ...] [--no-emulate] [--views tuning]

Results: ``benchmarks/results/weight_range.json`` (judging views), ``weight_range_tuning.json`` (``--views tuning``: what
a setting is chosen on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.results import cached_step, write_results

CANDIDATES = {
    "default (no profile)": {},
    "s8 full range": {"weight_type": "int8", "reduce_range": False},
    "u8 weights (U8U8)": {"weight_type": "uint8", "reduce_range": False},
    "default + 256 calibration views": {"calibration_samples": 256},
    "default + percentile 99.99": {"calibration_method": "percentile", "percentile": 99.99},
}
#: the emulated host: QEMU's Haswell model (AVX2, FMA3; no AVX-512, no VNNI)
EMULATED_CPU = "Haswell"


def folder(candidate: str) -> str:
    """A candidate's artifact folder in each fold of ``--work``."""
    return candidate.replace(" ", "-").replace("(", "").replace(")", "")


def worker(model: str, feeds: str, out: str, threads: int) -> None:
    """Run ``model`` on every row of ``feeds`` (an .npz of one input) and save the logits (``out``, .npy): all this
    needs is numpy and onnxruntime, so it runs under qemu-user as it does natively."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    data = np.load(feeds)
    name = sess.get_inputs()[0].name
    x = data[data.files[0]]
    np.save(out, np.concatenate([sess.run(None, {name: x[k:k + 16]})[0] for k in range(0, len(x), 16)]))


def run_worker(model: Path, feeds: Path, out: Path, emulate: bool, threads: int) -> np.ndarray:
    cmd = [sys.executable, __file__, "--worker", str(model), str(feeds), str(out), "--threads", str(threads)]
    if emulate:
        cmd = ["qemu-x86_64", "-cpu", EMULATED_CPU, *cmd]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL if emulate else None, env={**os.environ})
    return np.load(out)


def saturation_probe(work: Path, emulate: bool) -> dict:
    """One MatMulInteger (u8 255 x s8 127, K = 64) on this kernel path: its exact sum, or VPMADDUBSW's clipped one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, 8])],
        [numpy_helper.from_array(np.full((k, 8), 127, np.int8), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, work / "probe.onnx")
    np.savez(work / "probe.npz", A=np.full((1, k), 255, np.uint8))
    got = int(run_worker(work / "probe.onnx", work / "probe.npz", work / "probe.npy", emulate, 1)[0, 0])
    return {"exact": 255 * 127 * k, "got": got, "saturates": got != 255 * 127 * k}


def judging_feeds(onnx_art: Path, files: dict, dst: Path, role: str = "judging") -> tuple[Path, np.ndarray]:
    """A fold's judging views (``judging.csv``: the ones the teacher is confident on; or its ``tuning`` views)
    preprocessed as the FP32 artifact does (``dst``, .npz), and the teacher's labels."""
    import csv

    from compress.artifact import load_artifact
    from compress.runtimes.ort_backend import OrtBackend

    with open(files[role], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    backend = OrtBackend(load_artifact(onnx_art))
    x = np.concatenate([backend.encode([r["path"] for r in rows[k:k + 32]])[backend.input_names[0]]
                        for k in range(0, len(rows), 32)])
    backend.close()
    np.savez(dst, x=x)
    return dst, np.array([int(r["label"]) for r in rows])


def score(logits: np.ndarray, fp32: np.ndarray, labels: np.ndarray) -> dict:
    """Counts and sums of one model on one fold: right (= the teacher's label), agreeing with FP32 ONNX, cosine."""
    cos = (logits * fp32).sum(-1) / np.clip(np.linalg.norm(logits, axis=-1) * np.linalg.norm(fp32, axis=-1), 1e-12, None)
    return {"views": int(len(labels)), "correct": int((logits.argmax(-1) == labels).sum()),
            "agree_fp32": int((logits.argmax(-1) == fp32.argmax(-1)).sum()), "cosine_sum": float(cos.sum())}


def pooled(per_fold: list[dict], fp32_per_fold: list[dict]) -> dict:
    views = sum(f["views"] for f in per_fold)
    return {"retention": round(sum(f["correct"] for f in per_fold) / sum(f["correct"] for f in fp32_per_fold), 4),
            "agreement": round(sum(f["agree_fp32"] for f in per_fold) / views, 4),
            "logit_cosine": round(sum(f["cosine_sum"] for f in per_fold) / views, 4), "views": views,
            "worst_fold_agreement": round(min(f["agree_fp32"] / f["views"] for f in per_fold), 4),
            "per_fold": [{"correct": f["correct"], "fp32_correct": r["correct"], "agree_fp32": f["agree_fp32"],
                          "views": f["views"]} for f, r in zip(per_fold, fp32_per_fold)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "FEEDS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--real", type=Path, default=ROOT / ".cache" / "real-cnns", help="what real_cnns.py wrote")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "weight-range")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=53, help="cnn_int8_heldout.py's split seed")
    ap.add_argument("--no-emulate", action="store_true", help="judge natively only (no qemu-x86_64)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--views", choices=("judging", "tuning"), default="judging",
                    help="judge on each fold's judging views (photos no calibration or tuning view came from), or on "
                    "its tuning views (other views of the calibration photos: what a setting is chosen on)")
    ap.add_argument("--out", type=Path, help="default: results/weight_range.json (judging views), "
                    "results/weight_range_tuning.json (tuning views)")
    args = ap.parse_args(argv)
    args.out = args.out or ROOT / "results" / ("weight_range.json" if args.views == "judging" else
                                               "weight_range_tuning.json")
    if args.worker:
        worker(*args.worker, args.threads)
        return 0
    from benchmarks.harness.heldout import draw_views, fold_files, speed
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    hosts = {"native": False} if args.no_emulate else {"native": False, f"emulated {EMULATED_CPU}": True}
    if not args.no_emulate and not shutil.which("qemu-x86_64"):
        raise SystemExit("qemu-x86_64 not found: apt-get install qemu-user (or --no-emulate)")
    probes = {h: saturation_probe(args.work, e) for h, e in hosts.items()}
    print("saturation probe:", probes, flush=True)
    split = draw_views(args.work, args.real / "mobilenet_v2", args.folds, args.seed, 0.5)
    onnx = cached_step("MobileNetV2 ONNX", args.work / "onnx", lambda: export(args.real / "mobilenet_v2",
                                                                               args.work / "onnx", force=True))
    names = [c for c in args.candidates.split(",") if c]
    raw: dict = {h: {"ONNX FP32": []} | {c: [] for c in names} for h in hosts}  # FP32: natively, its reference
    builds: dict = {c: [] for c in names}
    for fold in range(args.folds):
        files = fold_files(args.work, split, fold)
        d = args.work / f"fold{fold}"
        feeds, labels = judging_feeds(onnx, files, d / f"{args.views}.npz", args.views)
        models = {"ONNX FP32": onnx / "model.onnx"}
        for c in names:
            t = time.perf_counter()
            out = d / folder(c)
            art = cached_step(f"{c} fold {fold}", out, lambda c=c, out=out, files=files: quantize(onnx, out, QuantizeConfig.from_flat(
                calibration=str(files["calibration"]), **CANDIDATES[c]), force=True))
            step = json.loads((art / "manifest.json").read_text())["steps"][-1]
            builds[c].append({"fold": fold, "s": round(time.perf_counter() - t, 1), "int8": step["config"]["int8"],
                              "fallback": (step.get("metrics") or {}).get("fallback")})
            models[c] = art / "model.onnx"
        fp32 = run_worker(models["ONNX FP32"], feeds, d / "fp32.npy", False, args.threads)
        for host, emulate in hosts.items():
            for label, model in models.items():
                logits = fp32 if label == "ONNX FP32" else run_worker(model, feeds, d / "int8.npy", emulate,
                                                                      args.threads)
                raw[host][label].append(score(logits, fp32, labels))
                print(fold, host, label, raw[host][label][-1], flush=True)
    previous = json.loads(args.out.read_text())["rows"] if args.out.is_file() else {}
    rows = {c: {h: pooled(raw[h][c], raw[h]["ONNX FP32"]) for h in hosts} for c in names}
    # earlier rows whose fold-0 artifact is still in --work are timed in the same rounds (ratios side by side)
    timed = [c for c in dict.fromkeys([*names, *previous]) if (args.work / "fold0" / folder(c) / "model.onnx").is_file()]
    p50 = speed({"ONNX FP32": onnx, **{c: args.work / "fold0" / folder(c) for c in timed}}, args.seconds, args.threads)
    for c in names:
        rows[c]["builds"] = builds[c]
    for c in timed:
        rows.setdefault(c, {"native": dict(previous[c]["native"])})["native"].update(
            p50_ms=p50[c], speed_vs_onnx_fp32=round(p50["ONNX FP32"] / p50[c], 2), speed_threads=args.threads)
    print("\n| candidate | " + " | ".join(f"{h} retention / agreement" for h in hosts) + " | native vs FP32 |")
    print("|---|" + "---|" * len(hosts) + "---|")
    for c in names:
        print(f"| {c} | " + " | ".join(f"{rows[c][h]['retention']:.3f} / {rows[c][h]['agreement']:.3f}"
                                       for h in hosts) + f" | {rows[c]['native']['speed_vs_onnx_fp32']}x |")
    print("timed:", {c: rows[c]["native"]["speed_vs_onnx_fp32"] for c in timed}, flush=True)
    # candidates (and hosts) not rerun keep their figures; speed comes from each candidate's last timing round
    rows = {**previous, **{c: {**previous.get(c, {}), **rows[c]} for c in rows}}
    write_results(args.out, {
        "seconds": round(time.perf_counter() - t0, 1), "saturation_probe": probes,
        "split": {"seed": split["seed"], "folds": split["folds"], "from": "benchmarks/vision/cnn_int8_heldout.py",
                  "judged": f"{args.views} views the FP32 teacher is confident on (top-1 probability >= 0.5)",
                  "retention": "INT8 top-1 = the teacher's top-1, over FP32 ONNX's own score",
                  "agreement": "INT8 top-1 = FP32 ONNX top-1 (FP32 run natively)"},
        "fp32_onnx_p50_ms": p50["ONNX FP32"], "rows": rows},
        argv=[__file__, *(argv if argv is not None else sys.argv[1:])])
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
