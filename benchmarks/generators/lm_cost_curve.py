"""Issue 76's cost curve: what edgecompress's default chain for a causal LM costs (wall seconds, peak resident memory)
as the model grows from 135M to 1.7B parameters, the sizes a laptop-class machine is asked to take.

Models (``--models``, short names, default all): SmolLM2-135M, Gemma 3 270M, Qwen3-0.6B, Llama 3.2 1B, Qwen3-1.7B,
each made here as a Hugging Face checkpoint (FP32 safetensors) from its published config (``MODELS``; the repo each
comes from is named there) with random weights (normal, std 0.02): the cost of export, quantize and validate depends
on the shapes, not the values, so random weights are enough for seconds and memory (and say nothing of quality). The
tokenizer is ``--tokenizer``'s for every model (default: the repository's stories260K tokenizer, 512 tokens; the
published runs used SmolLM2's, 49,152, from its GGUF's checkpoint, for WikiText-2 token counts as a real BPE makes
them): no larger than any config's ``vocab_size``, so the extra embedding rows just go unused (the embedding table, the head and the
cost are still the full model's). One stage's cost does depend on the values: quantize's default
(``--int4-algorithm auto``) measures the model to choose each matrix's bits, and on random weights it may choose
otherwise than on trained ones (SmolLM2-135M: every one of its 150 matrices at 8 bits), so its seconds are that choice's.

The chain, as a user runs it, each stage a separate process of the CLI under ``/usr/bin/time -v`` (its "Maximum
resident set size": the largest of the process and the children it waited for, not their sum; its "Elapsed"):

- ``export``: ``edgecompress export CKPT --format onnx -o WORK/NAME/onnx-fp32``;
- ``quantize``: ``edgecompress quantize WORK/NAME/onnx-fp32 --precision int4 -o WORK/NAME/onnx-int4``;
- (``--route openvino|gguf|executorch``: the same chain with ``--format ROUTE``, its stages recorded as
  ``export@ROUTE``, ... beside ONNX's; GGUF needs llama.cpp's tree, ``EDGECOMPRESS_LLAMA_CPP``);
- ``validate``: ``edgecompress validate WORK/NAME/onnx-int4 -p host --data TEXT`` on the first ``--chars`` characters
  of WikiText-2 test, its work bounded (``--limit`` windows and prompts, ``--window``, ``--prompt-tokens``,
  ``--new-tokens``); its exit code is its verdict (1: a budget failed, 4: some unverified), not a failure.

A stage (and the checkpoint) starts only where ``psutil.virtual_memory().available`` is at least ``--max-ratio`` times
the model's FP32 weight bytes; otherwise it is recorded as skipped with the memory it would need (no swap storm on a
shared machine). A stage whose output is already in ``WORK`` is not run again (its figure from the results file is
kept; ``--force`` runs it again). Figures per model and stage: parameters (every weight once, the tied head with the
embedding), FP32 weight bytes, seconds, peak RSS and its ratio to the FP32 bytes, the peak of the stage's anonymous
memory (``RssAnon`` of its process tree, sampled every 0.2 s: RSS also counts the pages of files it maps, such as the
weights, which the kernel drops and reads again rather than run out), the exit code, the last line of stderr on a
failure. ``--memory-limit-gb N`` (root, cgroup v1) runs each stage in a memory cgroup of N GB, page cache included,
as a machine of that size would hold it, and records the group's peak and whether the limit killed the stage. Then, per stage, a least-squares line of peak RSS against FP32 bytes and of seconds against
parameters over the models measured, and from it the largest model whose peak fits 16 GB and 8 GB (1 GB = 1e9
bytes; the whole peak, nothing else running). Writes ``benchmarks/results/lm_cost_curve.json`` after every stage
and prints a markdown table.

    HF_HUB_OFFLINE=1 python benchmarks/generators/lm_cost_curve.py --work /tmp/costcurve \\
        --text ../shared/data/wikitext-2/wiki.test.raw --models smollm2-135m,gemma3-270m,qwen3-0.6b \\
        --tokenizer DIR   # the published run: SmolLM2's tokenizer files (from its GGUF's checkpoint)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
import compress  # noqa: F401 - first: the torchvision shim before transformers
from benchmarks.harness.results import host_and_versions, write_results

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "lm_cost_curve.json"
CLI = [sys.executable, "-m", "compress"]
#: the tokenizer every model gets unless --tokenizer names another (the repository's: stories260K's, vocabulary 512)
TOKENIZER = ROOT / "tests" / "assets" / "stories260K"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
STAGES = ("export", "quantize", "validate")
GB = 1e9
BUDGETS_GB = (16, 8)
_ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
#: short name -> (Hugging Face repo whose config.json the values are, transformers model_type, config values)
MODELS = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M", "llama", dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        intermediate_size=1536, vocab_size=49152, rope_theta=100000.0, tie_word_embeddings=True,
        max_position_embeddings=8192, rms_norm_eps=1e-5)),
    "gemma3-270m": ("google/gemma-3-270m", "gemma3_text", dict(
        hidden_size=640, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        intermediate_size=2048, vocab_size=262144, sliding_window=512, query_pre_attn_scalar=256, rope_theta=1e6,
        rope_local_base_freq=10000.0, tie_word_embeddings=True, max_position_embeddings=32768, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)])),
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B", "qwen3", dict(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        intermediate_size=3072, vocab_size=151936, rope_theta=1e6, tie_word_embeddings=True,
        max_position_embeddings=40960, rms_norm_eps=1e-6)),
    "llama3.2-1b": ("meta-llama/Llama-3.2-1B", "llama", dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        intermediate_size=8192, vocab_size=128256, rope_theta=500000.0, rope_scaling=_ROPE_LLAMA3,
        tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5)),
    "qwen3-1.7b": ("Qwen/Qwen3-1.7B", "qwen3", dict(
        hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        intermediate_size=6144, vocab_size=151936, rope_theta=1e6, tie_word_embeddings=True,
        max_position_embeddings=40960, rms_norm_eps=1e-6)),
}


def _config(name: str):
    from transformers import AutoConfig

    _, model_type, values = MODELS[name]
    return AutoConfig.for_model(model_type, initializer_range=0.02, **values)


def parameters(name: str) -> int:
    """Every weight of the model its config describes, counted once (the tied head is the embedding): built on the
    meta device, so nothing is allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_config(name), dtype=torch.float32)
    return sum(p.numel() for p in model.parameters())


def make_checkpoint(name: str, out: Path, tokenizer: Path = TOKENIZER) -> None:
    """The random-weight FP32 checkpoint (one copy of the weights in memory: transformers' own init, normal with std
    ``initializer_range`` 0.02; saved in 1 GB shards so safetensors' serialising copy stays one shard) with SmolLM2's
    tokenizer and a generation config naming its bos / eos."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = _config(name)
    cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    cfg.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = cfg.bos_token_id, cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(out, safe_serialization=True, max_shard_size="1GB")
    for f in TOKENIZER_FILES:
        if (tokenizer / f).is_file():
            shutil.copy(tokenizer / f, out / f)
    (out / "made.json").write_text(json.dumps({"config_of": MODELS[name][0], "weights": "random normal, std 0.02",
                                               "tokenizer": str(tokenizer)}) + "\n")


def _elapsed(text: str) -> float:
    """GNU time's "h:mm:ss" or "m:ss.ss" in seconds."""
    secs = 0.0
    for part in text.strip().split(":"):
        secs = secs * 60 + float(part)
    return secs


def _anon_bytes(pid: int) -> int:
    """The anonymous resident bytes (``RssAnon``: what the kernel cannot drop and read again, unlike the file pages
    ``VmRSS`` also counts) of ``pid`` and its descendants, summed; 0 once gone."""
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                total += next((int(x.split()[1]) * 1024 for x in f if x.startswith("RssAnon:")), 0)
        except OSError:
            pass
    return total


#: a cgroup (v1) memory controller's folder: --memory-limit-gb runs each stage in a group of its own under it
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def memory_group(limit_gb: float) -> Path:
    """A cgroup (v1, root only) whose processes may hold ``limit_gb`` GB in all, page cache included (the kernel
    drops clean file pages to stay under it, as on a machine of that size; past it, it kills): the limit a
    ``--memory-limit-gb`` run's stages start in."""
    group = CGROUP_V1 / "edgecompress-cost-curve"
    if not (CGROUP_V1 / "memory.limit_in_bytes").is_file():
        sys.exit("--memory-limit-gb needs the cgroup v1 memory controller at /sys/fs/cgroup/memory (and root)")
    group.mkdir(exist_ok=True)
    limit = str(int(limit_gb * GB))
    files = ["memory.limit_in_bytes"]
    if (group / "memory.memsw.limit_in_bytes").is_file():  # no swapping past it either (memsw >= the limit always)
        raising = int(limit) > int((group / "memory.limit_in_bytes").read_text())
        files = ["memory.memsw.limit_in_bytes", *files] if raising else [*files, "memory.memsw.limit_in_bytes"]
    for name in files:
        (group / name).write_text(limit)
    return group


def timed(argv: list[str], log: Path, group: Path | None = None) -> dict:
    """``argv`` under ``/usr/bin/time -v`` (its output and stderr in ``log``): seconds, peak RSS bytes, the peak of
    its process tree's anonymous bytes (sampled every 0.2 s), exit code, and the last line of its stderr when it
    failed. ``group``: the memory cgroup (:func:`memory_group`) it runs in; then also the group's peak charge (page
    cache included) and whether its limit killed it."""
    import os

    log.parent.mkdir(parents=True, exist_ok=True)
    times = log.with_suffix(".time")
    if group is not None:
        (group / "memory.max_usage_in_bytes").write_text("0")
        kills = _oom_kills(group)
    enter = (lambda: (group / "cgroup.procs").write_text(str(os.getpid()))) if group is not None else None
    anon = 0
    with open(log, "w") as f:
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(times), *argv], stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=enter)
        while proc.poll() is None:
            anon = max(anon, _anon_bytes(proc.pid))
            time.sleep(0.2)
        rc = proc.returncode
    facts = times.read_text() if times.is_file() else ""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", facts)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", facts)
    row = {"seconds": round(_elapsed(wall.group(1)), 1) if wall else None,
           "peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None, "peak_anon_bytes": anon or None,
           "exit_code": rc, "log": str(log)}
    if group is not None:
        row.update(memory_limit_bytes=int((group / "memory.limit_in_bytes").read_text()),
                   group_peak_bytes=int((group / "memory.max_usage_in_bytes").read_text()),
                   killed_at_the_limit=_oom_kills(group) > kills)
    if rc != 0:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        row["last_stderr"] = lines[-1][:500] if lines else ""
    return row


def _oom_kills(group: Path) -> int:
    """How many processes the group's limit has killed (``memory.oom_control``'s ``oom_kill``; 0 where not said)."""
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def stage_keys(route: str, limit_gb: float | None = None) -> tuple[str, ...]:
    """How the results name ``route``'s stages: ``export`` for ONNX (the first runs'), ``export@openvino`` else;
    ``...@16gb`` where they ran under ``--memory-limit-gb 16`` (a limited run's RSS is not an unlimited one's: the
    kernel dropped file pages to keep it under)."""
    limit = f"@{limit_gb:g}gb" if limit_gb else ""
    return tuple((s if route == "onnx" else f"{s}@{route}") + limit for s in STAGES)


def _stages(name: str, work: Path, text: Path, args) -> list[tuple[str, Path, list[str]]]:
    """(stage, the file that says its output is complete, argv) for the checkpoint and ``args.route``'s chain."""
    d, route = work / name, args.route
    force = ["--force"] if args.force else []
    ckpt, fp32, int4 = d / "checkpoint", d / f"{route}-fp32", d / f"{route}-int4"
    report = d / ("validate-host" if route == "onnx" else f"validate-host-{route}")
    export, quantize, validate = stage_keys(route, args.memory_limit_gb)
    return [
        ("checkpoint", ckpt / "made.json",
         [sys.executable, __file__, "--make-checkpoint", name, str(ckpt), str(args.tokenizer)]),
        (export, fp32 / "manifest.json", [*CLI, "export", str(ckpt), "--format", route, "-o", str(fp32), *force]),
        (quantize, int4 / "manifest.json",
         [*CLI, "quantize", str(fp32), "--precision", "int4", "-o", str(int4), *force]),
        (validate, report / "report.json",
         [*CLI, "validate", str(int4), "-p", "host", "--data", str(text), "--report-dir", str(report),
          "--limit", str(args.limit), "--window", str(args.window), "--prompt-tokens", str(args.prompt_tokens),
          "--new-tokens", str(args.new_tokens), *force]),
    ]


def _ok(stage: str, row: dict, done: Path) -> bool:
    """export and quantize succeed with exit code 0; validate's code is its verdict: it ran when its report is there."""
    return done.is_file() and (stage.startswith("validate") or row.get("exit_code") == 0)


def run_model(name: str, work: Path, text: Path, args, result: dict, save) -> None:
    """The checkpoint and the chain for ``name``, each stage recorded (and the results saved) as it ends."""
    import psutil

    m = result["models"].setdefault(name, {})
    if "parameters" not in m:
        m["parameters"] = parameters(name)
    m.update(config_of=MODELS[name][0], fp32_bytes=4 * m["parameters"])
    stages = m.setdefault("stages", {})
    blocked = None
    for stage, done, argv in _stages(name, work, text, args):
        before = stages.get(stage, {})
        need, avail = args.max_ratio * m["fp32_bytes"], psutil.virtual_memory().available
        if done.is_file() and not args.force and not blocked:
            stages[stage] = before if before.get("status") == "ok" else {"status": "reused (made before; no figure)"}
            print(f"[{name}] {stage}: output there, not run again", flush=True)
        elif avail < need:  # checked before the stage (and before the checkpoint is made): nothing is started
            stages[stage] = {"status": f"skipped: needs about {need / GB:.1f} GB, {avail / GB:.1f} GB available"}
        elif blocked:
            stages[stage] = {"status": f"not run: {blocked}"}
        else:
            print(f"[{name}] {stage} ...", flush=True)
            row = timed(argv, work / name / "logs" / f"{stage}.log", args.group)
            row["status"] = "ok" if _ok(stage, row, done) else "failed"
            if row["peak_rss_bytes"]:
                row["peak_over_fp32"] = round(row["peak_rss_bytes"] / m["fp32_bytes"], 2)
            stages[stage] = row
        if not str(stages[stage].get("status", "")).startswith(("ok", "reused")):
            blocked = blocked or f"{stage} {stages[stage]['status'].split(':')[0]}"
        print(f"[{name}] {stage}: {json.dumps(stages[stage])[:300]}", flush=True)
        save()


def _line(xs: list[float], ys: list[float]) -> tuple[float, float, str]:
    """Least-squares slope and intercept; with one point, the ratio through the origin."""
    if len(xs) == 1:
        return ys[0] / xs[0], 0.0, "one model: through the origin"
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx, f"least squares over {n} models"


def fit(result: dict) -> dict:
    """Per stage, peak RSS against FP32 bytes and seconds against parameters over the models measured, and the
    largest parameter count whose peak fits each budget."""
    fits = {}
    keys = dict.fromkeys(k for m in result["models"].values() for k in m.get("stages", {}) if k != "checkpoint")
    for stage in keys:
        rows = [(m, m["stages"][stage]) for m in result["models"].values()
                if m.get("stages", {}).get(stage, {}).get("status") == "ok"
                and m["stages"][stage].get("peak_rss_bytes") and m["stages"][stage].get("seconds") is not None]
        if not rows:
            continue
        a, b, how = _line([m["fp32_bytes"] for m, _ in rows], [r["peak_rss_bytes"] for _, r in rows])
        c, d, _ = _line([m["parameters"] for m, _ in rows], [r["seconds"] for _, r in rows])
        fits[stage] = {"models": len(rows), "fit": how, "peak_bytes_per_fp32_byte": round(a, 3),
                       "peak_intercept_gb": round(b / GB, 3), "seconds_per_billion_parameters": round(c * 1e9, 1),
                       "seconds_intercept": round(d, 1)}
        anon = [(m, r) for m, r in rows if r.get("peak_anon_bytes")]
        if anon:  # the part the kernel cannot drop: what a smaller machine must hold
            e, f, how = _line([m["fp32_bytes"] for m, _ in anon], [r["peak_anon_bytes"] for _, r in anon])
            fits[stage] |= {"anon_models": len(anon), "anon_fit": how, "anon_bytes_per_fp32_byte": round(e, 3),
                            "anon_intercept_gb": round(f / GB, 3)}
        for budget in BUDGETS_GB:
            fits[stage][f"largest_parameters_within_{budget}_gb"] = (
                int((budget * GB - b) / a / 4) if a > 0 and budget * GB > b else None)
    return fits


def table(result: dict, keys: tuple[str, ...] = STAGES) -> str:
    """The markdown table of the stages ``keys`` (one route's, :func:`stage_keys`), a row per model run."""
    head = "| model | parameters | FP32 GB | " + " | ".join(f"{s} s | {s} peak GB (x FP32)" for s in keys) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(keys))]
    for name, m in result["models"].items():
        if not any(s in m.get("stages", {}) for s in keys):
            continue
        cells = [name, f"{m['parameters'] / 1e6:.0f}M", f"{m['fp32_bytes'] / GB:.2f}"]
        for s in keys:
            r = m.get("stages", {}).get(s, {})
            if r.get("peak_rss_bytes") and r.get("status") == "ok":
                anon = f"; anon {r['peak_anon_bytes'] / GB:.2f}" if r.get("peak_anon_bytes") else ""
                cells += [f"{r['seconds']:.0f}", f"{r['peak_rss_bytes'] / GB:.2f} ({r['peak_over_fp32']:.1f}x{anon})"]
            else:
                cells += [r.get("status", "not run")[:70], ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def growth(fits: dict) -> str:
    out = []
    for stage, f in fits.items():
        fit_lines = ", ".join(f"{b} GB up to ~{f[f'largest_parameters_within_{b}_gb'] / 1e9:.2f}B parameters"
                              if f[f"largest_parameters_within_{b}_gb"] else f"{b} GB: none" for b in BUDGETS_GB)
        out.append(f"- {stage} ({f['fit']}): peak ~ {f['peak_bytes_per_fp32_byte']:.2f} x FP32 bytes "
                   f"{f['peak_intercept_gb']:+.2f} GB; seconds ~ {f['seconds_per_billion_parameters']:.0f} per B "
                   f"parameters {f['seconds_intercept']:+.0f} s; peak fits {fit_lines}")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--make-checkpoint":  # a stage of its own (its memory, its process)
        make_checkpoint(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="checkpoints and artifacts (reused when there)")
    ap.add_argument("--text", type=Path, required=True, help="WikiText-2 test (wiki.test.raw)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--max-ratio", type=float, default=4.5,
                    help="run a stage only where available memory is at least this many times the FP32 weights")
    ap.add_argument("--chars", type=int, default=120_000, help="validate reads the text's first CHARS characters")
    ap.add_argument("--limit", type=int, default=4, help="validate: perplexity windows and prompts")
    ap.add_argument("--window", type=int, default=128, help="validate: perplexity window in tokens")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--route", default="onnx", choices=("onnx", "openvino", "gguf", "executorch"),
                    help="the export format (and its quantizer and runtime); results keyed export@ROUTE beside ONNX's")
    ap.add_argument("--force", action="store_true", help="run every stage again, replacing its output")
    ap.add_argument("--memory-limit-gb", type=float, default=None,
                    help="run each stage in a memory cgroup of this many GB (cgroup v1, root): what a machine of that "
                         "size allows, page cache included; results keyed STAGE@limit")
    ap.add_argument("--tokenizer", type=Path, default=TOKENIZER,
                    help="a tokenizer folder no larger than any model's vocabulary (default: stories260K's)")
    args = ap.parse_args()
    args.group = memory_group(args.memory_limit_gb) if args.memory_limit_gb else None
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if unknown := [n for n in names if n not in MODELS]:
        ap.error(f"unknown --models {unknown}; choose from {', '.join(MODELS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    text = args.work / "scored.txt"
    text.write_text(args.text.read_text(encoding="utf-8")[:args.chars], encoding="utf-8")
    result = json.loads(OUT.read_text()) if OUT.is_file() else {}
    result.setdefault("models", {})
    if args.route == "onnx":
        result["command"] = " ".join(sys.argv)
    else:  # another route's run: its own command, beside the ONNX one's
        result.setdefault("route_commands", {})[args.route] = " ".join(sys.argv)
    result.update(host_and_versions(), text=f"{args.text}, first {args.chars} characters",
                  validate={k: getattr(args, k) for k in ("limit", "window", "prompt_tokens", "new_tokens")},
                  max_ratio=args.max_ratio, weights="random (normal, std 0.02): cost only, no quality")

    def save() -> None:
        result["fit"] = fit(result)
        result["written"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_results(OUT, result)

    for name in names:
        run_model(name, args.work, text, args, result, save)
    save()
    print(table(result, stage_keys(args.route, args.memory_limit_gb)))
    print(growth(result["fit"]))


if __name__ == "__main__":
    main()
