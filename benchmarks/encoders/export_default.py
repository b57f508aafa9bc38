"""Is the default export (plain ONNX) a good INT8 source? Dynamic INT8 of a plain export vs of an O2-fused export.

Both INT8 models run in ONNX Runtime in one process, timed in alternating rounds (batch 1 x 64 tokens,
2 threads), so load on a shared machine hits both alike. Writes benchmarks/results/export_default.json.

    python benchmarks/encoders/export_default.py --teacher benchmarks/.cache/sst2-minilm-l6-teacher --work /tmp/export-default
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.results import write_results
from benchmarks.harness.timing import side_by_side, spread, time_calls
from compress.artifact import load_artifact
from compress.stages.export import export
from compress.stages.export.config import ExportConfig
from compress.stages.quantize import quantize
from compress.stages.quantize.config import QuantizeConfig

RESULTS = Path(__file__).resolve().parents[1] / "results" / "export_default.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint directory")
    ap.add_argument("--work", type=Path, default=Path("/tmp/export-default"), help="artifacts go here (reused)")
    ap.add_argument("--rounds", type=int, default=20, help="alternating rounds")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model per round")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import onnxruntime as ort

    models = {}
    for name, optimize in (("plain (new default)", "none"), ("O2 (old default)", "O2")):
        fp32_dir, int8_dir = args.work / f"{optimize}-fp32", args.work / f"{optimize}-int8"
        fp32 = load_artifact(fp32_dir) if fp32_dir.is_dir() else export(args.teacher, fp32_dir, ExportConfig(optimize=optimize))
        int8 = load_artifact(int8_dir) if int8_dir.is_dir() else quantize(fp32, int8_dir, QuantizeConfig.from_flat(mode="dynamic"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        sess = ort.InferenceSession(str(int8.model_path), opts, providers=["CPUExecutionProvider"])
        ops = sorted({n.op_type for n in __import__("onnx").load(str(int8.model_path)).graph.node})
        models[name] = {"session": sess, "size_mb": int8.size_bytes() / 1e6, "samples": [],
                        "int8_ops": [o for o in ops if o in ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul")]}
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 20000, (1, 64), dtype=np.int64),
            "attention_mask": np.ones((1, 64), np.int64), "token_type_ids": np.zeros((1, 64), np.int64)}
    for m in models.values():
        names = {i.name for i in m["session"].get_inputs()}
        m["feed"] = {k: v for k, v in feed.items() if k in names}
        for _ in range(20):
            m["session"].run(None, m["feed"])
    def batch(m):  # a round of one model: --runs timed calls
        return lambda: time_calls(lambda: m["session"].run(None, m["feed"]), repeats=args.runs, warmup=0)

    for name, rounds in side_by_side({n: batch(m) for n, m in models.items()}, args.rounds, warmup=0).items():
        models[name]["samples"] = [t * 1e3 for runs in rounds for t in runs]
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
           "shape": "1x64", "rounds": args.rounds, "runs_per_round": args.runs, "models": {}}
    for name, m in models.items():
        s = spread(m["samples"])
        out["models"][name] = {"p50_ms": s.median, "p95_ms": s.p95, "size_mb": round(m["size_mb"], 1),
                               "int8_ops": m["int8_ops"], "n": s.n}
    base = out["models"]["O2 (old default)"]["p50_ms"]
    out["p50_ratio_plain_over_o2"] = out["models"]["plain (new default)"]["p50_ms"] / base
    write_results(RESULTS, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
