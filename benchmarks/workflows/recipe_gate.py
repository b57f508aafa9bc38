#!/usr/bin/env python
"""Issue 15's "Done means" on the SST-2 recipe (benchmarks/recipes/sst2.yaml), after one full run of it:

1. edit only the quantize step of the pruned student (per-tensor instead of per-channel scales) and run again:
   which jobs re-run, and how long each run takes; then back to the recipe as written (all cached);
2. re-measure every validation ``--repeats`` times (``--rerun 'validate/*'``), each run gated against the one
   before: how often noise trips the gate;
3. gate a deliberately slowed artifact (the pruned student left in FP32), one with lower accuracy (the same
   student pruned harder, without recovery, INT8) and a report from another profile against the pruned INT8.

Writes benchmarks/results/recipe_gate.json. Run: python benchmarks/workflows/recipe_gate.py [--repeats 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "benchmarks" / "recipes" / "sst2.yaml"
RUN = ROOT / "benchmarks" / ".cache" / "runs" / "sst2"
WORK = ROOT / "benchmarks" / ".cache" / "recipe-gate"
OUT = ROOT / "benchmarks" / "results" / "recipe_gate.json"
sys.path.insert(0, str(ROOT))  # benchmarks.harness
from benchmarks.harness.results import write_results


def log(msg: str) -> None:
    print(f"[recipe-gate] {msg}", flush=True)


def run(recipe: Path, rerun=()):
    from compress.recipes.execute import run_recipe

    t0 = time.perf_counter()
    result = run_recipe(recipe, RUN, rerun=rerun, html=True)
    seconds = time.perf_counter() - t0
    return result, round(seconds, 1)


def statuses(result) -> dict[str, str]:
    return {j["name"]: j["status"] for j in result.index["jobs"]}


def report_of(result, name: str) -> Path:
    return RUN / next(j for j in result.index["jobs"] if j["name"] == name)["report"]


def artifact_of(result, name: str) -> Path:
    return RUN / next(j for j in result.index["jobs"] if j["name"] == name)["path"]


def validate_to(art: Path, profile: str, out: Path, dev: str, teacher: str) -> Path:
    from compress.reports.render import write_report
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    report = validate(art, ValidateConfig(profile=profile, data=dev, teacher=teacher))
    write_report(report, out, force=True)
    return out / "report.json"


def gate_summary(new: Path, base: Path) -> dict:
    from compress.validation.gate import gate

    r = gate(new, base)
    return {"verdict": r.verdict, "differences": r.differences,
            "metrics": [{k: m.as_dict()[k] for k in ("metric", "verdict", "new", "baseline", "change", "p_value", "note")}
                        for m in r.metrics]}


def all_pairs(result) -> dict:
    """Every pair of this run directory's measurements of each validation (same key), gated three ways: relative
    to the FP32 baseline at the default 10% and at 40%, and on raw timings at 10%."""
    import itertools

    from compress.validation.gate import GateConfig, gate

    out = {}
    for j in result.index["jobs"]:
        if j["verb"] != "validate":
            continue
        reports = sorted((RUN / j["report"]).parents[2].glob("*/report/report.json"))
        pairs = list(itertools.combinations(reports, 2))
        ways = {"relative 10%": GateConfig(), "relative 40%": GateConfig(latency_threshold=0.4),
                "raw 10%": GateConfig(normalize=False)}
        changes = {k: [gate(b, a, c).metrics[0] for a, b in pairs] for k, c in ways.items()}
        out[j["name"]] = {"reports": len(reports), "pairs": len(pairs),
                          "not_pass": {k: sum(m.verdict != "pass" for m in ms) for k, ms in changes.items()},
                          "latency_changes": {k: sorted(round(m.change, 3) for m in ms) for k, ms in changes.items()
                                              if k != "relative 40%"}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                     "recipe": str(RECIPE.relative_to(ROOT))}

    first, secs = run(RECIPE)
    results["cached_run_s"] = secs
    log(f"recipe as written: {secs} s, {set(statuses(first).values())}")

    edited = yaml.safe_load(RECIPE.read_text())
    edited["steps"]["pruned-int8"]["quantize"] = {"int8": {"per_channel": False}}
    edited_path = RECIPE.with_name("sst2-edited.yaml")
    edited_path.write_text(yaml.safe_dump(edited, sort_keys=False))
    try:
        r, secs = run(edited_path)
    finally:
        edited_path.unlink()
    results["edit_quantize"] = {"seconds": secs, "statuses": statuses(r),
                                "job_seconds": {j["name"]: j["seconds"] for j in r.index["jobs"]}}
    log(f"quantize step edited: {secs} s, {statuses(r)}")
    back, secs = run(RECIPE)
    results["back_to_written_s"] = secs
    log(f"back to the recipe as written: {secs} s, {set(statuses(back).values())}")

    repeats = []
    for i in range(args.repeats):
        r, secs = run(RECIPE, rerun=("validate/*",))
        repeats.append({"seconds": secs, "gate": [{"name": g["name"], "verdict": g["verdict"],
                                                   "metrics": {m["metric"]: [m["verdict"], m.get("change"), m.get("p_value")]
                                                               for m in g.get("metrics", [])}} for g in r.gate]})
        log(f"re-measure {i + 1}: {[(g['name'], g['verdict']) for g in r.gate]}")
    results["remeasured"] = repeats
    pairs = [g for rep in repeats for g in rep["gate"]]
    results["noise_trips"] = {"pairs": len(pairs), "regressed": sum(g["verdict"] == "regressed" for g in pairs),
                              "not pass": sum(g["verdict"] != "pass" for g in pairs)}
    results["all_pairs"] = all_pairs(r)
    for name, a in results["all_pairs"].items():
        log(f"{name}: {a['reports']} measurements; of all pairs, not pass: {a['not_pass']}")

    index = json.loads((RUN / "index.json").read_text())
    teacher = index["teacher"]
    base = report_of(r, "validate/pruned-int8@cpu-x86-avx2")
    data = json.loads(base.read_text())["data"]["path"]
    fp32 = validate_to(artifact_of(r, "pruned-onnx"), "cpu-x86-avx2", WORK / "fp32-report", data, teacher)
    results["slowed_fp32"] = gate_summary(fp32, base)
    log(f"pruned student left in FP32: {results['slowed_fp32']['verdict']}")

    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    harsh = WORK / "harsh"
    if not (harsh / "int8" / "manifest.json").is_file():
        prune(artifact_of(r, "student"), harsh / "pruned", PruneConfig.from_flat(heads=0.5, ffn=0.6, recover_steps=0), force=True)
        export(harsh / "pruned", harsh / "onnx", ExportConfig(), force=True)
        quantize(harsh / "onnx", harsh / "int8", QuantizeConfig.from_flat(), force=True)
    worse = validate_to(harsh / "int8", "cpu-x86-avx2", WORK / "harsh-report", data, teacher)
    results["lower_accuracy"] = gate_summary(worse, base)
    log(f"pruned harder, no recovery: {results['lower_accuracy']['verdict']}")

    other = validate_to(artifact_of(r, "pruned-int8"), "cpu-x86-avx512-vnni", WORK / "vnni-report", data, teacher)
    results["other_profile"] = gate_summary(other, base)
    log(f"another profile: {results['other_profile']['verdict']}: {results['other_profile']['differences']}")
    write_results(OUT, results)
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
