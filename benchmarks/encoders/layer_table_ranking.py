"""Accuracy-aware quantization ordered by the per-layer error table versus by leave-one-out (issue 35, item 4).

``quantize --max-drop/--min-retention`` keeps layers in float until the eval metric holds. ``rank_by: layer-errors``
(the default) orders them by the error each layer adds itself in the all-quantized model's per-layer table (one pass
over 8 calibration inputs); ``rank_by: leave-one-out`` measures the eval metric of one candidate per layer (or block)
kept in float alone. Both run here side by side, one after the other, on the same FP32 artifact, data and budget:

* ``minilm_static``: the real all-MiniLM-L6-v2 encoder file adopted by ``benchmarks/vision/adopted.py``, static INT8
  calibrated on 300 SST-2 train sentences, cosine of its embeddings to the FP32 file's on 300 SST-2 dev sentences,
  budget >= 0.97 (plain static INT8 reaches about 0.93);
* ``mobilenet_v2_features``: the real ImageNet MobileNetV2 file cut before its classifier (a 1280 x 7 x 7 map),
  static INT8, output cosine to the FP32 file on 201 photo views, budget >= 0.97 (plain static INT8: about 0.95).

For each: whether the budget held, the metric, the layers kept in float and their share of the weights, the number
of candidates built and measured, and the wall time of the search (2-core host; the two orders run one after the
other on the same machine, so compare the ratio). Results: ``benchmarks/results/layer_table_ranking.json``.

    python benchmarks/vision/adopted.py --models minilm,mobilenet_v2_features        # once: the adopted artifacts
    python benchmarks/encoders/layer_table_ranking.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.results import write_results

CACHE = HERE / ".cache"
ADOPTED = CACHE / "adopted"


def cases() -> dict[str, dict]:
    return {
        "minilm_static": {"fp32": ADOPTED / "artifacts" / "minilm" / "fp32",
                          "config": {"mode": "static", "calibration": str(ADOPTED / "sst2-train-300.tsv"),
                                     "data": str(ADOPTED / "sst2-dev-500.tsv"), "min_retention": 0.97,
                                     "eval_samples": 300}},
        "mobilenet_v2_features": {"fp32": ADOPTED / "artifacts" / "mobilenet_v2_features" / "fp32",
                                  "config": {"mode": "static", "calibration": str(ADOPTED / "photos-calibration.npz"),
                                             "data": str(ADOPTED / "photos-eval.npz"), "min_retention": 0.97,
                                             "eval_samples": 201}},
    }


def fp32_artifact(name: str, case: dict, work: Path):
    from compress.artifact import is_artifact, load_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    if "fp32" in case:
        return load_artifact(case["fp32"])
    out = work / name / "fp32"
    if not is_artifact(out):
        export(case["teacher"], out, ExportConfig(optimize="none"), force=True)
    return load_artifact(out)


def run(name: str, case: dict, rank_by: str, work: Path) -> dict:
    from compress.errors import AccuracyBudgetError
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = fp32_artifact(name, case, work)
    out = work / name / rank_by
    for p in (out, out.with_name(out.name + ".best-candidate")):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        q = quantize(art, out, QuantizeConfig.from_flat(rank_by=rank_by, **case["config"]))
        aa = q.manifest.steps[-1].metrics["accuracy_aware"]
    except AccuracyBudgetError as e:
        aa = json.loads((Path(e.best_candidate) / "accuracy_report.json").read_text()) if e.best_candidate else {}
    seconds = time.perf_counter() - t0
    final = aa.get("final", {})
    return {"model": name, "rank_by": rank_by, "budget_met": aa.get("budget_met"), "metric_name": aa.get("metric"),
            "fp32_metric": aa.get("baseline"), "all_quantized": aa["candidates"][0]["metric"],
            "metric": final.get("metric"), "retention": final.get("retention"),
            "kept_float": len(aa.get("kept_fp32") or []), "float_weight_share": final.get("fp32_weight_fraction"),
            "candidates": len(aa["candidates"]), "seconds": round(seconds, 1),
            "kept": [k["node"] for k in aa.get("kept_fp32") or []]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(cases()))
    ap.add_argument("--work", type=Path, default=CACHE / "layer-table-ranking")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "layer_table_ranking.json")
    args = ap.parse_args(argv)
    names = args.models.split(",")
    old = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    rows = [r for r in old if r["model"] not in names and r["model"] in cases()]  # other models' rows stay
    for name in names:
        for rank_by in ("layer-errors", "leave-one-out"):
            rows.append(run(name, cases()[name], rank_by, args.work))
            print(json.dumps(rows[-1]), flush=True)
    write_results(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
