"""Fleet validation: wall time of ``validate --remote FLEET.yaml`` on three SSH devices against one.

The artifact is a real model no one on the team trained: torchvision's MobileNetV2 with its ImageNet weights
(``benchmarks/vision/real_cnns.py`` builds ``benchmarks/.cache/real-cnns``), exported to ONNX FP32 here, judged on real
photos (views of the photos scikit-image and scikit-learn ship, labelled with the FP32 teacher's own top-1). The
devices are three test sshds on this machine (``tests/builders/sshd.py``), each in a network namespace of its own
when this machine allows it (root, ``ip netns``), else on three loopback ports. Runs alternate one device and three
devices (a fleet file of one and of three), after one untimed run that fills the teacher-output cache, so that each
timed run does the same controller work.

What the ratio means here: the three "devices" share this machine's CPUs (and with them the controller), so the
device-side work of three runs at once competes for the same cores; on three real boards it would not. The ratio
measured here is therefore an upper bound for real boards; the per-phase seconds say where the time goes.

    python benchmarks/vision/real_cnns.py            # once: the model and the photos
    python benchmarks/devices/fleet_validate.py [--rounds 3] [--limit 64] [--out benchmarks/results/fleet_validate.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import yaml

from benchmarks.harness.results import cached_step, write_results
from benchmarks.harness.timing import median

CNNS = HERE / ".cache" / "real-cnns"
WORK = HERE / ".cache" / "fleet"
MEASURE = {"warmup": 3, "min_runs": 20, "min_duration_s": 1.0, "eval_batch_size": 8}
# loose budgets: this measures the fleet's wall time, not MobileNetV2 against a CPU's budgets (cpu-x86-avx2's are
# MiniLM's, 25 ms p50); the verdicts are reported only to show every device was judged
BUDGETS = {"latency_ms": {"p50": 2000, "p95": 4000, "p99": 8000}, "min_throughput": 0.1, "min_accuracy_retention": 0.5,
           "min_agreement": 0.5, "max_model_size_mb": 64, "max_peak_memory_mb": 2048, "max_cold_start_ms": 30000}


def log(msg: str) -> None:
    print(f"[fleet_validate] {msg}", file=sys.stderr, flush=True)


def fleet_yaml(path: Path, lbs, profile: Path) -> Path:
    entries = [{"name": f"board{i + 1}", "host": lb.host, "port": lb.port, "user": lb.user,
                "ssh_config": str(lb.ssh_config()), "profile": str(profile)} for i, lb in enumerate(lbs)]
    path.write_text(yaml.safe_dump({"python": sys.executable, "devices": entries}, sort_keys=False), encoding="utf-8")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="timed runs of each fleet size (alternating)")
    p.add_argument("--limit", type=int, default=64, help="eval photos per run")
    p.add_argument("--out", type=Path, default=HERE / "results" / "fleet_validate.json")
    args = p.parse_args(argv)

    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate_fleet
    from tests.builders.sshd import make_netns, running_sshd

    teacher = CNNS / "mobilenet_v2" / "model.pt2"
    data = CNNS / "photos" / "mobilenet_v2.csv"
    if not teacher.is_file() or not data.is_file():
        log(f"{teacher} or {data} missing: run python benchmarks/vision/real_cnns.py first")
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    art = cached_step("MobileNetV2 ONNX FP32", WORK / "mobilenet_v2-onnx",
                      lambda: export(teacher, WORK / "mobilenet_v2-onnx", force=True))
    parent = "cpu-arm64-neon" if platform.machine().lower() in ("aarch64", "arm64") else "cpu-x86-avx2"
    profile = WORK / "board.yaml"
    profile.write_text(yaml.safe_dump({"name": "board", "extends": parent, "measure": MEASURE, "budgets": BUDGETS}),
                       encoding="utf-8")
    runs: dict[str, list[dict]] = {"1": [], "3": []}
    from compress.interrupt import sigterm_as_interrupt

    with sigterm_as_interrupt(), contextlib.ExitStack() as stack:  # killed: the sshds and namespaces go too
        lbs = []
        for i in range(3):
            ns = f"ec-bench-{os.getpid()}-{i}"
            addr = stack.enter_context(make_netns(ns, i))
            root = WORK / f"device{i}"
            shutil.rmtree(root, ignore_errors=True)
            lbs.append(stack.enter_context(running_sshd(root, host=addr, netns=ns) if addr else running_sshd(root)))
        devices_as = "network namespaces" if lbs[0].netns else "loopback ports"
        log(f"three devices in {devices_as}")
        fleets = {"1": fleet_yaml(WORK / "fleet1.yaml", lbs[:1], profile),
                  "3": fleet_yaml(WORK / "fleet3.yaml", lbs, profile)}

        def one(size: str) -> dict:
            cfg = ValidateConfig.from_flat(data=str(data), teacher=str(teacher), limit=args.limit, baseline=False,
                                           remote=str(fleets[size]))
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            rep = validate_fleet(art, cfg)
            wall = time.perf_counter() - t0
            row = {"devices": int(size), "wall_s": round(wall, 2), "verdict": rep.verdict,
                   "phases_s": rep.phases_s, "load_average_1min_before": round(load, 1),
                   "per_device": [{"name": d.name, "status": d.status, "seconds": d.seconds,
                                   "accuracy": (d.report.metrics.get("metric") if d.report else None),
                                   "agreement": (d.report.metrics.get("agreement") if d.report else None),
                                   "p50_ms": ((d.report.metrics.get("latency_ms") or {}).get("p50") if d.report else None),
                                   "not_passed": ([f"{b.name}: {b.status}" for b in d.report.budgets
                                                   if str(b.status) != "pass"] if d.report else None)}
                                  for d in rep.devices]}
            log(f"{size} device(s): {wall:.1f} s, {rep.verdict}, phases {rep.phases_s}")
            return row

        log("warm-up run (fills the teacher-output cache; not timed)")
        one("1")
        for _ in range(args.rounds):
            for size in ("1", "3"):
                runs[size].append(one(size))
    med = {k: median(r["wall_s"] for r in v) for k, v in runs.items()}
    result = {
        "what": "validate --remote FLEET.yaml: wall time on three SSH devices vs one (same artifact, data, profile)",
        "model": "torchvision MobileNetV2 IMAGENET1K_V1 (benchmarks/vision/real_cnns.py), ONNX FP32",
        "data": f"{args.limit} photos of {data.relative_to(ROOT)} (labels: the FP32 teacher's top-1)",
        "devices_as": devices_as,
        "measure": MEASURE,
        "median_wall_s": med,
        "ratio_3_vs_1": round(med["3"] / med["1"], 3),
        "sequential_estimate_ratio": 3.0,
        "note": "the three devices share this machine's CPUs with the controller (and other work): an upper bound "
                "for three real boards, where the device-side work does not compete",
        "runs": runs,
        "cores": os.cpu_count(),
    }
    write_results(args.out, result, argv=[__file__, *(argv if argv is not None else sys.argv[1:])])
    log(f"median {med['1']:.1f} s (1 device) vs {med['3']:.1f} s (3 devices): ratio {result['ratio_3_vs_1']}")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
