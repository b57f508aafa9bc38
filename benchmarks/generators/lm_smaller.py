"""A small language model made smaller (issue 55): the teacher LM -> LoRA and QLoRA fine-tunes -> a half-depth student
distilled -> pruned heads, FFN and vocabulary -> post-training INT4 vs quantization-aware INT4, each artifact
validated on this host and estimated on a phone. Writes benchmarks/results/lm_smaller.json.

Material (test material, say so wherever the figures go): the teacher is ``benchmarks/generators/lm_teacher.py``'s Llama
(8 layers, grouped-query attention, ~2M parameters) pretrained here on WikiText-2's validation split and 90 % of
tiny-shakespeare, on two CPU cores shared with seven other sessions: a real LM on real text, but a weak one. Text:

* task (fine-tune data, distillation and recovery transfer text, QAT data): TinyStories ``valid-first500.txt``,
  which neither the teacher nor its tokenizer saw: its first ``TASK_CHARS`` characters after the first (partial)
  story (``--task-chars N``: the first N; ``--transfer-chars N``: the distillation reads the first N instead);
* task held out (every perplexity, KL and top-1 agreement): the file's last ``EVAL_CHARS`` characters, cut at a
  paragraph;
* forgetting (the base's own domain, held out from pretraining): the first ``RETAIN_CHARS`` of WikiText-2's test split.

Every step goes through the library's API (the same functions the CLI verbs call): ``finetune`` (``--lora-rank 32
--lora-alpha 64``, and ``--qlora``: bitsandbytes on ``PYTHONPATH`` where it is not installed), ``distill``
(``--layers N``, evenly spaced or ``--layer-choice scored``; ``--divergence``, ``--top-k``, ``--on-policy``,
``--teacher-samples`` passed on),
``prune`` (``--heads --ffn --vocab-corpus --recover-steps``), ``export --format onnx``, ``quantize --precision int4``
(post-training, and ``--qat-steps``), ``validate`` (on a profile that extends pixel-8 with ONNX Runtime: quality
measured on this host against the step's reference, its timings taken here, ``*_this_host``, beside the phone's
estimate; the student's top-1 agreement also window by window with a bootstrap interval,
:func:`agreement_spread`). A step whose API or backend is not here is recorded as ``{"status": "not available",
"why": ...}``; ``--stop-at`` records the stages not begun by then as not run. Nothing is guessed.

    OMP_NUM_THREADS=2 PYTHONPATH=/path/to/bitsandbytes python benchmarks/generators/lm_smaller.py \
        --teacher /tmp/s62/lm-teacher --work /tmp/s64/chain --distill-steps 12000 --layer-choice scored \
        --top-k 128 --transfer-chars 377000 --teacher-samples 6000 --recover-steps 20 --qat-steps 20

Two torch threads on an otherwise idle VM (20 minutes); where other sessions share the two cores, one thread
(``OMP_NUM_THREADS=1``): the 200-step distillation took 482 s with two threads there, 56 s with one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import compress  # noqa: F401 - first: the torchvision hook transformers needs beside CPU torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks.harness
from benchmarks.harness.results import write_results

DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "lm_smaller.json"
#: the task's training text: ~9k tokens (70 windows of 128), what the steps below read once or twice; every distillation
#: labels all of it with the teacher first (its top-k cache), so no more
TASK_CHARS = 30_000
#: ~9k tokens: 70 windows of 128, so that a top-1 agreement is judged on 64 windows (4,032 scored positions), not a
#: handful (4 windows, 252 positions, put the last run's student at 0.897 where all 20 then held out gave 0.838)
EVAL_CHARS = 28_000
RETAIN_CHARS = 12_000  # ~3.5k tokens of WikiText-2 test: the forgetting windows
#: the phone: pixel-8's device, ONNX Runtime's runtime (the generator artifact is ONNX)
PHONE = {"name": "pixel-8-onnxruntime", "extends": "pixel-8",
         "description": "a Pixel 8 running ONNX Runtime: the phone's speed estimated, quality measured here",
         "runtime": {"name": "onnxruntime", "provider": "CPUExecutionProvider", "options": {}},
         "budgets": {"max_perplexity_increase": 1.0, "min_decode_tokens_per_s": 1.0}}


def split_text(data: Path, work: Path, transfer_chars: int | None = None,
               task_chars: int = TASK_CHARS) -> dict[str, str]:
    """Write the task, held-out and retained texts (see the module's docstring) under ``work``; their paths. With
    ``transfer_chars``, also the distillation's transfer text: the stories' first ``transfer_chars`` characters
    (the task text and more; never the held-out part)."""
    stories = (data / "tinystories" / "valid-first500.txt").read_text(encoding="utf-8")
    stories = stories[stories.index("\n\n") + 2:]  # the first story starts mid-way
    cut = stories.rfind("\n\n", 0, len(stories) - EVAL_CHARS)
    retain = (data / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")[:RETAIN_CHARS]
    if max(task_chars, transfer_chars or 0) > cut:
        raise SystemExit(f"--task-chars/--transfer-chars: at most {cut} (the held-out text follows)")
    head = stories.rfind("\n\n", 0, task_chars)
    texts = {"task": stories[:head].strip() + "\n", "eval": stories[cut:].strip() + "\n",
             "retain": retain[:retain.rfind("\n")] + "\n"}
    if transfer_chars:
        texts["transfer"] = stories[:stories.rfind("\n\n", 0, transfer_chars)].strip() + "\n"
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, v in texts.items():
        (work / f"{k}.txt").write_text(v, encoding="utf-8")
        out[k] = str(work / f"{k}.txt")
    return out


def timed(fn, *a, **kw) -> tuple[Any, float]:
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, round(time.perf_counter() - t, 1)


#: when set (--stop-at), stages not begun by then are recorded as not run; after every stage the figures so far are
#: written to this file
STOP: dict[str, Any] = {"at": None, "write": None}


def step(results: dict[str, Any], name: str, fn) -> Any:
    """Run one stage; its figures (or its error, one line, or 'not available') go to ``results[name]``."""
    from compress.errors import EdgeCompressError, MissingBackendError

    print(f"== {name} ({time.strftime('%H:%M:%S')})", flush=True)
    if STOP["at"] is not None and time.time() >= STOP["at"]:
        results[name] = {"status": "not run", "why": f"--stop-at {time.strftime('%H:%M', time.gmtime(STOP['at']))} "
                         "UTC passed before it began"}
        return None
    try:
        out = fn()
    except (NotAvailable, MissingBackendError) as e:
        results[name] = {"status": "not available", "why": str(e)}
    except (EdgeCompressError, Exception) as e:  # noqa: BLE001 - a stage's failure is a figure of the benchmark
        results[name] = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        traceback.print_exc()
    else:
        results[name] = {"status": "ok", **out}
        print(json.dumps(results[name], default=str)[:600], flush=True)
        if STOP["write"]:
            STOP["write"]()
        return out
    print(json.dumps(results[name]), flush=True)
    if STOP["write"]:
        STOP["write"]()
    return None


class NotAvailable(Exception):
    """This edgecompress does not have the stage's API."""


def needs(module: str, attr: str | None = None, field: tuple[str, str] | None = None) -> None:
    """Refuse (NotAvailable) when ``module`` (``attr``; a settings model's flat ``field``) is not here."""
    import importlib

    try:
        m = importlib.import_module(module)
    except ImportError as e:
        raise NotAvailable(f"{module}: {e}") from None
    if attr and not hasattr(m, attr):
        raise NotAvailable(f"{module}.{attr} is not here")
    if field:
        cls = getattr(m, field[0])
        flat = set(cls.model_fields) | set(getattr(cls, "MOVED", {}))
        if field[1] not in flat:
            raise NotAvailable(f"{field[0]} has no {field[1]!r}")


def finetune_stage(a, texts, qlora: bool) -> dict[str, Any]:
    needs("compress.stages.finetune.lm", "finetune_causal_lm")
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig

    out = a.work / ("qlora" if qlora else "lora")
    cfg = FinetuneConfig.from_flat(lora_rank=32, lora_alpha=64, qlora=qlora or None, max_steps=a.finetune_steps,
                                   batch_size=a.batch, lr=a.finetune_lr, max_length=a.window,
                                   eval_every=a.finetune_steps, seed=0)
    res, s = timed(finetune, a.teacher, texts["task"], out, cfg, eval_data=texts["eval"],
                   retain_data=texts["retain"], run_dir=a.work / "runs" / out.name, force=True)
    m = res.metrics
    return {"path": str(out), "seconds": s, "mode": m.get("mode"), "trainable_parameters": m.get("trainable_parameters"),
            "parameters": m.get("parameters") or m.get("total_parameters"), "memory": m.get("memory"),
            "task_perplexity": m.get("eval_perplexity"), "base_task_perplexity": m.get("base_eval_perplexity"),
            "forgetting": m.get("forgetting"), "lora": m.get("lora"), "steps": a.finetune_steps,
            "batch": a.batch, "window": a.window}


def distill_options(a) -> dict[str, Any]:
    """The distill settings (flat names) this run's options give; the loss defaults (a causal LM's: KL at T = 1)
    stay the library's where an option is not given."""
    flat = {"layer_choice": a.layer_choice, "divergence": a.divergence, "top_k": a.top_k, "on_policy": a.on_policy,
            "teacher_samples": a.teacher_samples, "temperature": a.distill_temperature,
            "hard_weight": a.distill_hard_weight}
    return {k: v for k, v in flat.items() if v is not None}


def distill_stage(a, texts, teacher: str, layers: int) -> dict[str, Any]:
    """The half-depth student. Evaluated once, after the last step (``eval_every`` = the steps): the held-out text
    is what validate judges it on, so no weights are picked by it."""
    needs("compress.stages.distill.lm", "distill_causal_lm")
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig

    out = a.work / "student"
    options = distill_options(a)
    cfg = DistillConfig.from_flat(layers=layers, max_steps=a.distill_steps, batch_size=a.batch,
                                  lr=a.distill_lr, max_length=a.window, eval_every=a.distill_steps, seed=0, **options)
    res, s = timed(distill, teacher, texts.get("transfer", texts["task"]), out, cfg, eval_data=texts["eval"], run_dir=a.work / "runs" / "student",
                   teacher_cache=a.work / "teacher-cache", force=True)
    return {"path": str(out), "seconds": s, "layers": layers, "steps": a.distill_steps, "lr": a.distill_lr,
            "options": options, "metrics": _plain(res.metrics)}


#: the margin between the teacher's two likeliest next tokens that splits positions into groups (agreement_spread)
MARGINS = (0.0, 0.1, 0.25, 0.5)


def agreement_spread(student: str, teacher: str, eval_text: str, window: int, limit: int, *,
                     resamples: int = 2000) -> dict[str, Any]:
    """Top-1 agreement of the PyTorch ``student`` with ``teacher`` window by window on the windows validate reads
    (llama-perplexity's cut of ``eval_text``, BOS first, the library's scored positions: the second half of each, as
    :func:`~compress.stages.distill.lm.evaluate_lm` scores them), a bootstrap 95 % interval of the pooled figure
    over windows (``resamples`` draws of as many windows, with replacement; seed 0), and the agreement by how decided
    the teacher is (the margin between its two likeliest tokens, groups from :data:`MARGINS`: where a weak teacher's
    top two are nearly tied, which one a student ranks first is close to a coin toss)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.data.text import read_texts, token_windows
    from compress.tasks.generation import scored_positions

    tok = AutoTokenizer.from_pretrained(teacher)
    t = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    s = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    ids = token_windows(tok, read_texts(eval_text), window, max_windows=limit,
                        context=t.config.max_position_embeddings)
    agree, margin = [], []
    with torch.inference_mode():
        for w in torch.from_numpy(np.asarray(ids)):
            sl = scored_positions(len(w))
            lt, ls = (m(input_ids=w[None], use_cache=False).logits[0, sl].float() for m in (t, s))
            top2 = lt.softmax(-1).topk(2, -1).values
            agree.append((lt.argmax(-1) == ls.argmax(-1)).numpy())
            margin.append((top2[:, 0] - top2[:, 1]).numpy())
    per = np.array([a.mean() for a in agree])
    boot = per[np.random.default_rng(0).integers(0, len(per), (resamples, len(per)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    a, m = np.concatenate(agree), np.concatenate(margin)
    groups = {}
    for low, high in zip(MARGINS, (*MARGINS[1:], 1.0), strict=True):
        k = (m >= low) & (m < high) if high < 1 else m >= low
        groups[f"{low}-{high}"] = {"share": round(float(k.mean()), 3),
                                   "agreement": round(float(a[k].mean()), 3) if k.any() else None}
    return {"windows": len(per), "positions_per_window": len(agree[0]), "top1_agreement": float(a.mean()),
            "bootstrap_95": [round(float(lo), 4), round(float(hi), 4)], "bootstrap_resamples": resamples,
            "per_window": {"min": round(float(per.min()), 4), "median": round(float(np.median(per)), 4),
                           "max": round(float(per.max()), 4), "std": round(float(per.std(ddof=1)), 4)},
            "by_teacher_margin": {"what": "positions by the teacher's top-1 minus top-2 probability: their share and "
                                  "the student's top-1 agreement there", **groups},
            "measured_on": "the PyTorch checkpoints (validate's figure is the exported ONNX model's)",
            "per_window_agreement": [round(float(x), 4) for x in per]}


def prune_stage(a, texts, source: str) -> dict[str, Any]:
    needs("compress.stages.prune.lm.prune", "prune_causal_lm")
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    out = a.work / "pruned"
    cfg = PruneConfig.from_flat(heads=0.5, head_unit="query", ffn=0.3, vocab_corpus=texts["task"],
                                recover_steps=a.recover_steps, recover_lr=a.distill_lr, recover_batch_size=a.batch,
                                max_length=a.window, importance_data=texts["task"], samples=64)
    art, s = timed(prune, source, out, cfg, train=texts["task"], eval_data=texts["eval"], force=True)
    return {"path": str(out), "seconds": s, "metrics": _plain(art.manifest.steps[-1].metrics),
            "parameters": _parameters(out)}


def export_stage(a, source: str, name: str) -> dict[str, Any]:
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    out = a.work / "onnx" / name
    art, s = timed(export, source, out, ExportConfig(format="onnx"), force=True)
    return {"path": str(out), "seconds": s, "size_mb": round(art.size_bytes() / 2**20, 3)}


def int4_stage(a, texts, onnx: str, qat: bool) -> dict[str, Any]:
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    flat: dict[str, Any] = {"precision": "int4", "int4_algorithm": "rtn", "block_size": 32}
    if qat:
        needs("compress.stages.quantize.lm.qat")
        needs("compress.stages.quantize.config", field=("QuantizeConfig", "qat_steps"))
        flat |= {"qat_steps": a.qat_steps, "qat_data": texts["task"], "qat_batch_size": a.batch}
    out = a.work / ("int4-qat" if qat else "int4-ptq")
    art, s = timed(quantize, onnx, out, QuantizeConfig.from_flat(**flat), force=True)
    return {"path": str(out), "seconds": s, "size_mb": round(art.size_bytes() / 2**20, 3), "settings": flat,
            "metrics": _plain(art.manifest.steps[-1].metrics)}


def validate_stage(a, texts, artifact: str, teacher: str, phone: Path) -> dict[str, Any]:
    """Quality against ``teacher`` on the held-out text, timings on this host, the phone's speed estimated."""
    from compress.artifact import load_artifact
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    cfg = ValidateConfig.from_flat(profile=str(phone), data=texts["eval"], teacher=teacher, limit=a.limit,
                                   prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens, window=a.window,
                                   estimate="always", baseline=False, cold_start=False)
    report, s = timed(validate, load_artifact(artifact), cfg)
    m = report.metrics
    keep = ("perplexity", "teacher_perplexity", "perplexity_increase", "top1_agreement", "kl_mean", "size_mb",
            "decode_tokens_per_s", "time_to_first_token_ms", "decode_tokens_per_s_this_host",
            "time_to_first_token_ms_this_host", "prefill_tokens_per_s_this_host")
    return {"seconds": s, "verdict": report.verdict, "reference": teacher, "windows": a.limit,
            **{k: m.get(k) for k in keep if k in m}, "estimate": (m.get("estimate") or {}),
            "warnings": list(report.warnings)[:5]}


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """A step's metrics without bulky per-layer lists (JSON-safe)."""
    return json.loads(json.dumps({k: v for k, v in metrics.items() if not (isinstance(v, list) and len(v) > 16)},
                                 default=str))


def _parameters(path: Path | str) -> int | None:
    """The parameter count of a checkpoint folder's model.safetensors (a tied head counted once)."""
    from safetensors import safe_open

    f = Path(path) / "model.safetensors"
    if not f.is_file():
        return None
    n = 0
    with safe_open(str(f), "np") as st:
        for k in st.keys():
            count = 1
            for d in st.get_slice(k).get_shape():
                count *= int(d)
            n += count
    return n


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, from the stages' figures (None where a stage is missing)."""
    def get(*path):
        x: Any = r
        for p in path:
            x = x.get(p) if isinstance(x, dict) else None
        return x

    out: dict[str, Any] = {}
    lora, qlora = get("lora", "task_perplexity"), get("qlora", "task_perplexity")
    if lora and qlora:
        peak_l, peak_q = get("lora", "memory", "train_peak_rss_mb"), get("qlora", "memory", "train_peak_rss_mb")
        held_l, held_q = get("lora", "memory", "base_weight_bytes"), get("qlora", "memory", "base_weight_bytes")
        out["qlora_vs_lora"] = {
            "perplexity_gap": qlora - lora, "relative_gap": qlora / lora - 1,
            "within_1_point_or_2pct": qlora - lora <= 1.0 or qlora / lora - 1 <= 0.02,
            "base_weight_bytes_fraction": held_q / held_l if held_l and held_q else None,
            "train_peak_rss_fraction": peak_q / peak_l if peak_l and peak_q else None}
    t_dec = get("validate", "teacher_fp32", "decode_tokens_per_s_this_host") or get("validate", "teacher_fp32",
                                                                                  "decode_tokens_per_s")
    s_dec = get("validate", "student_fp32", "decode_tokens_per_s_this_host") or get("validate", "student_fp32",
                                                                                  "decode_tokens_per_s")
    if t_dec and s_dec:
        agree = get("validate", "student_fp32", "top1_agreement")
        spread = get("validate", "student_fp32", "agreement_spread") or {}
        out["student"] = {"decode_speedup_this_host": s_dec / t_dec, "target_1_8x": s_dec / t_dec >= 1.8,
                          "top1_agreement": agree, "target_0_90": agree is not None and agree >= 0.90,
                          "windows": get("validate", "student_fp32", "windows"),
                          "top1_agreement_bootstrap_95": spread.get("bootstrap_95")}
    fp, ptq, qat = (get("validate", k, "perplexity") for k in ("pruned_fp32", "int4_ptq", "int4_qat"))
    if fp and ptq and qat:
        lost = ptq - fp
        out["qat_vs_ptq"] = {"fp32": fp, "ptq": ptq, "qat": qat, "ptq_loss": lost,
                             "recovered_fraction": (ptq - qat) / lost if lost > 0 else None,
                             "target_half": lost > 0 and (ptq - qat) / lost >= 0.5}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", type=Path, default=Path("/tmp/s61/lm-teacher"), help="lm_teacher.py's checkpoint")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--work", type=Path, default=Path("/tmp/s61/lm-smaller"), help="artifacts (outside the repository)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--window", type=int, default=128, help="tokens per training window and perplexity window")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--finetune-steps", type=int, default=10)
    p.add_argument("--finetune-lr", type=float, default=2e-3)
    p.add_argument("--distill-steps", type=int, default=20)
    p.add_argument("--distill-lr", type=float, default=2e-3)
    p.add_argument("--task-chars", type=int, default=TASK_CHARS, help="the fine-tunes read the stories' first N "
                   "characters (default %(default)s)")
    p.add_argument("--transfer-chars", type=int, help="distil on the stories' first N characters (default: the "
                   "task text, --task-chars)")
    p.add_argument("--layer-choice", choices=("evenly", "scored"), help="distill --layer-choice (default evenly)")
    p.add_argument("--divergence", choices=("forward", "reverse"), help="distill --divergence (default forward)")
    p.add_argument("--top-k", type=int, help="distill --top-k: the teacher's tokens cached per position (default 32)")
    p.add_argument("--on-policy", type=float, help="distill --on-policy: share of batches on the student's samples")
    p.add_argument("--teacher-samples", type=int, help="distill --teacher-samples: windows the teacher writes")
    p.add_argument("--distill-temperature", type=float, help="distill --temperature (a causal LM's default 1)")
    p.add_argument("--distill-hard-weight", type=float, help="distill --hard-weight (a causal LM's default 0)")
    p.add_argument("--recover-steps", type=int, default=8)
    p.add_argument("--qat-steps", type=int, default=10)
    p.add_argument("--limit", type=int, default=64, help="held-out windows each validation reads")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--stop-at", help="HH:MM (UTC): stages not begun by then are recorded as not run")
    p.add_argument("--only", default="", help="comma-separated stages to run again (lora, qlora, distill, prune, "
                   "validate, validate_student_fp32, int4), the others' figures kept from --out (default: all)")
    p.add_argument("--agreement", nargs=2, metavar=("STUDENT", "EVAL_TEXT"), help="only measure STUDENT's top-1 "
                   "agreement with --teacher on EVAL_TEXT (the spread and the groups by the teacher's margin), print it")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.agreement:
        spread = agreement_spread(a.agreement[0], str(a.teacher), a.agreement[1], a.window, a.limit)
        print(json.dumps({k: v for k, v in spread.items() if k != "per_window_agreement"}, indent=1))
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    texts = split_text(a.data, a.work / "data", a.transfer_chars, a.task_chars)
    phone = a.work / "pixel-8-onnxruntime.yaml"
    import torch
    import yaml

    phone.write_text(yaml.safe_dump(PHONE, sort_keys=False), encoding="utf-8")
    teacher_cfg = json.loads((a.teacher / "config.json").read_text())
    layers = int(teacher_cfg["num_hidden_layers"])
    pre = a.teacher / "pretraining.json"
    r: dict[str, Any] = {
        "what": "issue 55's chain on test material: a ~2M-parameter Llama pretrained here (benchmarks/generators/lm_teacher.py)",
        "command": (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} nice -n {os.nice(0)} python "
                    "benchmarks/generators/lm_smaller.py " + " ".join(sys.argv[1:] if argv is None else argv)),
        "host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()[0],
                 "note": "CPU cores shared with other sessions: timings move by tens of percent"},
        "teacher": {"path": str(a.teacher), "layers": layers, "parameters": _parameters(a.teacher),
                    "pretraining": json.loads(pre.read_text()) if pre.is_file() else None},
        "data": {k: str(v) for k, v in texts.items()}, "settings": {k: v for k, v in vars(a).items()
                                                                      if isinstance(v, (int, float, str))},
        "validate": {}}
    only = set(filter(None, a.only.split(",")))
    if only and a.out.is_file():  # a stage run again: the other stages' figures (and paths) stay
        old = json.loads(a.out.read_text(encoding="utf-8"))
        r = {**old, "reruns": [*old.get("reruns", []), {"command": r["command"], "only": sorted(only),
                                                        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}]}

    def write() -> None:
        r["summary"] = summary(r)
        tmp = write_results(a.out.with_suffix(".json.tmp"), r)  # its own command and host kept
        tmp.replace(a.out)

    STOP["write"] = write
    if a.stop_at:
        hh, mm = (int(x) for x in a.stop_at.split(":"))
        now = time.gmtime()
        STOP["at"] = time.time() + ((hh * 60 + mm) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec

    def want(name: str) -> bool:
        return not only or name in only

    if want("lora"):
        step(r, "lora", lambda: finetune_stage(a, texts, qlora=False))
    if want("qlora"):
        step(r, "qlora", lambda: finetune_stage(a, texts, qlora=True))
    tuned = r.get("lora", {}).get("path") or str(a.teacher)  # the task's teacher from here on
    if want("distill"):
        step(r, "student", lambda: distill_stage(a, texts, tuned, layers // 2))
    student = r.get("student", {}).get("path")
    if want("prune") and student:
        step(r, "pruned", lambda: prune_stage(a, texts, student))
    pruned = r.get("pruned", {}).get("path")
    v = r["validate"]
    for name, src, ref in (("teacher_fp32", tuned, tuned), ("student_fp32", student, tuned),
                           ("pruned_fp32", pruned, pruned)):
        if src and (want("validate") or want(f"validate_{name}")):
            e = step(r, f"export_{name}", lambda src=src, name=name: export_stage(a, src, name))
            if e:
                step(v, name, lambda e=e, ref=ref: validate_stage(a, texts, e["path"], str(Path(ref).resolve()), phone))
            if name == "student_fp32" and v.get(name, {}).get("status") == "ok":
                v[name]["agreement_spread"] = agreement_spread(src, str(Path(ref).resolve()), texts["eval"], a.window,
                                                               a.limit)
                print(json.dumps({k: x for k, x in v[name]["agreement_spread"].items() if k != "per_window_agreement"}),
                      flush=True)
    onnx = r.get("export_pruned_fp32", {}).get("path")
    if onnx and want("int4"):
        for name, qat in (("int4_ptq", False), ("int4_qat", True)):
            q = step(r, name, lambda qat=qat: int4_stage(a, texts, onnx, qat))
            if q:  # against the pruned checkpoint: its vocabulary is the artifact's
                step(v, name, lambda q=q: validate_stage(a, texts, q["path"], str(Path(pruned).resolve()), phone))
    write()
    print(f"wrote {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
