#!/usr/bin/env python
"""Core ML on this machine (issue 40): the phone benchmark's models (``benchmarks/devices/mobile.py``: the SST-2 teacher, its
3-layer student, the digits MobileNetV2) exported as Core ML packages, FP16 and with INT8 weights. Core ML does not
run on Linux, so what is measured is what can be: the conversion (time, and whether it converts at all), the size,
and the interface check; latency is the roofline estimate on the ``iphone-15`` profile's CPU peaks (ESTIMATE: the
Neural Engine is not modelled), next to the same estimate of the ONNX FP32 model, which shows the two graph readers
count the same work. Accuracy on the device is not measured here.

    python benchmarks/devices/coreml.py                      # results/coreml.json and the table
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness


def main() -> int:
    import compress  # noqa: F401
    from benchmarks.harness.results import write_results
    from benchmarks.harness.teachers import device_panel
    from compress.estimates.roofline import estimate
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    work = HERE / ".cache" / "mobile"
    rows = []
    for name, m in device_panel().items():
        d = work / name.split(" (")[0].replace(" ", "-").lower()  # benchmarks/devices/mobile.py's folder for the model
        onnx_fp32 = d / "onnx-fp32" if (d / "onnx-fp32" / "manifest.json").is_file() else None
        base = {"model": name}
        if onnx_fp32 is not None:
            e = estimate(onnx_fp32, "iphone-15")
            base["onnx_fp32_estimate_ms"], base["onnx_fp32_gflop"] = round(e.latency_ms, 2), round(e.gflops, 3)
        for precision in ("fp16", "int8"):
            out = d / f"coreml-{precision}"
            t0 = time.perf_counter()
            art = export(m["source"], out, ExportConfig(format="coreml", precision=None if precision == "fp16"
                                                        else "int8"), force=True)
            seconds = time.perf_counter() - t0
            e = estimate(art, "iphone-15")
            rows.append({**base, "precision": precision, "export_seconds": round(seconds, 1),
                         "size_mb": round(art.size_bytes() / 2**20, 2), "estimate_ms": round(e.latency_ms, 2),
                         "gflop": round(e.gflops, 3), "weights_mb": round(e.weight_mb, 2),
                         "package": art.manifest.steps[-1].metrics["package"]})
            print(f"[coreml] {name} {precision}: {rows[-1]['size_mb']} MB, ≈{rows[-1]['estimate_ms']} ms", flush=True)
    write_results(HERE / "results" / "coreml.json", {"profile": "iphone-15", "rows": rows})
    print("| model | package | size MB | export s | estimate on iphone-15 (CPU peaks) | ONNX FP32 estimate |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['size_mb']} | {r['export_seconds']} | ≈ {r['estimate_ms']} ms "
              f"({r['gflop']} GFLOP) | ≈ {r.get('onnx_fp32_estimate_ms')} ms ({r.get('onnx_fp32_gflop')} GFLOP) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
