"""The OpenVINO route for causal LMs (stateful IR, NNCF weight-only INT4/INT8).

quality: stories260K over the TinyStories sample in windows of 256 (llama-perplexity's rule, CORE's token_windows and
GenerationStream): perplexity, KL and top-1 agreement of each quantized IR against the FP32 IR's logits, through the
OpenVINO backend's prefill. The data-aware algorithms calibrate on the sample's last 40 documents.
speed: decode tokens/s of a SmolLM2-135M-shaped Llama with RANDOM weights (test material: its speed, not its text,
means something): hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocabulary 512 (stories260K's tokenizer), FP32
vs INT4 (RTN, groups of 32) at 2 threads, a 128-token prompt then 128 greedy tokens, rounds alternated.

    python benchmarks/generators/lm_openvino.py quality --work /tmp/lm-ov
    python benchmarks/generators/lm_openvino.py speed --work /tmp/lm-ov --rounds 5

Writes benchmarks/results/lm_openvino_{quality,speed}.json.
"""

import argparse
import sys
from pathlib import Path

import compress  # noqa: F401 - first: the torchvision shim before transformers

RESULTS = Path(__file__).resolve().parents[1] / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.results import write_results

SHARED = Path(__file__).resolve().parents[3] / "shared"  #: ../shared beside the clone


def quality(WORK: Path) -> None:
    import json
    import time

    import numpy as np
    from tokenizers import Tokenizer

    from compress.artifact import load_artifact
    from compress.data.text import read_texts, token_windows
    from compress.runtimes.base import load_runtime
    from compress.stages.export.lm.openvino import export_openvino_lm
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.tasks.generation import GenerationStream

    SRC = SHARED / "models" / "stories260K" / "hf"
    TEXT = SHARED / "data" / "tinystories" / "valid-first500.txt"
    R = WORK / "stories260K"; R.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(SRC / "tokenizer.json"))
    texts = read_texts(TEXT)
    wins = token_windows(tok, texts, 256, bos_token_id=1)
    print("windows", wins.shape, flush=True)
    # calibration text for the data-aware algorithms: the last 40 documents (their windows are ~5% of the evaluated ones)
    (R / "calib.txt").write_text("\n\n".join(texts[-40:]))
    fp32 = R / "fp32"
    if not fp32.exists():
        export_openvino_lm(SRC, fp32)
    variants = {"int8": dict(precision="int8"), "int4_rtn_g32": dict(precision="int4"),
                "int4_rtn_g128": dict(precision="int4", block_size=128),
                "int4_asym_g32": dict(precision="int4", symmetric=False),
                "int4_awq_g32": dict(precision="int4", int4_algorithm="awq", calibration=str(R / "calib.txt"), calibration_samples=16),
                "int4_se_g32": dict(precision="int4", int4_algorithm="scale_estimation", calibration=str(R / "calib.txt"), calibration_samples=16),
                "int4_gptq_g32": dict(precision="int4", int4_algorithm="gptq", calibration=str(R / "calib.txt"), calibration_samples=16),
                "int4_all4_g32": dict(precision="int4", embeddings_bits=4, lm_head_bits=4)}
    for name, kw in variants.items():
        if not (R / name).exists():
            t = time.time()
            quantize(fp32, R / name, QuantizeConfig.from_flat(**kw))
            print("quantized", name, round(time.time() - t, 1), flush=True)

    def logits_of(path):
        b = load_runtime(load_artifact(path), "openvino")
        out = []
        for w in wins:
            o, _ = b.prefill({"input_ids": w[None], "attention_mask": np.ones((1, len(w)), np.int64)})
            out.append(o["logits"][0].astype(np.float32))
        b.close()
        return out

    ref = logits_of(fp32)
    rows = {}
    for name in ["fp32", *variants]:
        art = load_artifact(R / name)
        cand = ref if name == "fp32" else logits_of(R / name)
        s = GenerationStream()
        for w, c, r in zip(wins, cand, ref):
            s.update(c[None], w[None], r[None])
        res = s.result()
        binb = (R / name / "model.bin").stat().st_size
        rows[name] = {**res, "model_bin_bytes": binb, "weights": art.manifest.steps[-1].metrics.get("weights"),
                      "nncf": art.manifest.steps[-1].config.get("nncf")}
        print(name, json.dumps({k: rows[name][k] for k in ("perplexity", "perplexity_increase", "kl_mean", "top1_agreement", "model_bin_bytes", "tokens")}), flush=True)
    write_results(RESULTS / "lm_openvino_quality.json", rows)


def speed(WORK: Path, ARGS) -> None:
    import json
    import shutil
    import time

    import numpy as np
    import torch
    import transformers

    from benchmarks.harness.lm import StepsLoop
    from benchmarks.harness.timing import median
    from compress.artifact import load_artifact
    from compress.host.measure import measure_generations
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.stages.export.lm.openvino import export_openvino_lm
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    R = WORK / "smol135m"; R.mkdir(parents=True, exist_ok=True)
    ck = R / "ckpt"
    if not (ck / "config.json").exists():
        cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5,
                                       rope_theta=100000.0)
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(cfg).eval().save_pretrained(ck)
        for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(SHARED / "models" / "stories260K" / "hf" / n, ck / n)
    t = time.time()
    if not (R / "fp32").exists():
        export_openvino_lm(ck, R / "fp32")
    print("export s", round(time.time() - t, 1), flush=True)
    t = time.time()
    if not (R / "int4").exists():
        quantize(R / "fp32", R / "int4", QuantizeConfig.from_flat(precision="int4"))
    print("quantize s", round(time.time() - t, 1), flush=True)
    P, N, ROUNDS = 128, 128, ARGS.rounds
    rng = np.random.default_rng(0)
    prompt = np.concatenate([[1], rng.integers(3, 512, P - 1)]).astype(np.int64)[None]
    backends = {n: load_runtime(load_artifact(R / n), "openvino", RuntimeSettings(threads=2)) for n in ("fp32", "int4")}
    print({n: b.properties for n, b in backends.items()}, flush=True)

    # edgecompress's prefill/step loop through the runtime contract, the two side by side (the order flipped each round)
    samples = measure_generations({n: StepsLoop(b) for n, b in backends.items()}, [int(t) for t in prompt[0]], N,
                                  warmup=1, min_rounds=ROUNDS, max_rounds=ROUNDS)
    res = {n: list(zip(s.first, (N / run for run in s.runs))) for n, s in samples.items()}
    out = {}
    for n, v in res.items():
        dec = [x[1] for x in v]; tt = [x[0] for x in v]
        out[n] = {"decode_tok_s_median": median(dec), "decode_tok_s": [round(x, 1) for x in dec],
                  "prefill_tok_s_median": P / median(tt), "ttft_ms_median": 1000 * median(tt),
                  "model_bin_bytes": (R / n / "model.bin").stat().st_size}
        print(n, json.dumps(out[n]), flush=True)
    print("int4/fp32 decode", out["int4"]["decode_tok_s_median"] / out["fp32"]["decode_tok_s_median"])
    write_results(RESULTS / "lm_openvino_speed.json", out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=("quality", "speed"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/lm-ov"))
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    quality(a.work) if a.part == "quality" else speed(a.work, a)
