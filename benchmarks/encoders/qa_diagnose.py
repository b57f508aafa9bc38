"""Why dynamic INT8 moves the QA teacher's answers (``qa_xquad.py --diagnose``): the held-out questions one per call,
scored for dynamic INT8 candidates that keep one part of the encoder float (each transformer layer, each kind of
projection, the embeddings) or use 8-bit weights, and the FP32 model's span-score margin of the answers INT8 changes.

For each candidate: F1, retention with a 95% paired bootstrap interval (2,000 rounds over the questions), agreement
F1 with the FP32 answers, and how many answers change. The margin: per question, the FP32 ONNX model's best span
score (start + end logit, spans of at most 30 tokens over the question's windows) less the best score of a different
span; the answers the default INT8 changes are counted by quartile of that margin."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

#: dynamic INT8 candidates: name -> (QuantizeConfig settings, which quantizable layer names stay float)
PARTS = {
    "default": ({}, lambda n: False),
    "8-bit weights (reduce_range off)": ({"reduce_range": False}, lambda n: False),
    "embeddings fp32": ({"embedding_precision": "fp32"}, lambda n: False),
    **{f"layer {k} fp32": ({}, lambda n, k=k: f"/layer.{k}/" in n) for k in range(6)},
    **{f"{kind} fp32": ({}, lambda n, kind=kind: kind in n) for kind in
       ("self/query", "self/key", "self/value", "attention/output", "intermediate")},
    "ffn output fp32": ({}, lambda n: "/output/dense" in n and "attention" not in n),
}


def diagnose(work: Path, held_out: Path, rounds: int = 2000) -> dict:
    from compress.artifact import Artifact, copy_tokenizer_files, load_artifact
    from compress.runtimes.ort_backend import OrtBackend
    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.eval_set import load_eval_set, predict_outputs
    from compress.stages.quantize.ort_quantizer import OnnxQuantizer
    from compress.stages.quantize.speed import small_gemm_layers
    from compress.tasks.qa import answer_texts, token_f1

    fp32 = load_artifact(work / "onnx-fp32")
    eval_set = load_eval_set(held_out, fp32.manifest, 100000, batch_size=1)
    labels = list(eval_set.dataset.labels)

    def answers(art) -> list[str]:
        backend = OrtBackend(art)
        try:
            return answer_texts(predict_outputs(backend, eval_set), labels)
        finally:
            backend.close()

    def f1s(ans) -> np.ndarray:
        return np.array([max(token_f1(p, g) for g in a.answers) for p, a in zip(ans, labels, strict=True)])

    ref = answers(fp32)
    base = f1s(ref)
    draws = np.random.default_rng(0).integers(0, len(base), size=(rounds, len(base)))
    rows, default_dir = {}, None
    for name, (settings, keep) in PARTS.items():
        q = OnnxQuantizer(fp32, QuantizeConfig.from_flat(**settings))
        layers = q.layers()
        out = work / "diagnose" / name.replace(" ", "_").replace("/", "-")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        floats = [lay.name for lay in layers if keep(lay.name)]
        q.write(out / "model.onnx", [*small_gemm_layers(q.model, layers, []), *floats])
        copy_tokenizer_files(fp32.path, out)
        ans = answers(Artifact(out, fp32.manifest.with_model_file("model.onnx")))
        f1 = f1s(ans)
        boot = f1[draws].mean(axis=1) / base[draws].mean(axis=1)
        rows[name] = {"f1": float(f1.mean()), "retention": float(f1.mean() / base.mean()),
                      "retention_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                      "agreement_f1": float(np.mean([token_f1(p, r) for p, r in zip(ans, ref, strict=True)])),
                      "answers_changed": int(sum(a != r for a, r in zip(ans, ref, strict=True))),
                      "float_layers": len(floats)}
        print(f"[qa] diagnose {name}: {rows[name]}", flush=True)
        default_dir = default_dir or out
    return {"fp32_f1": float(base.mean()), "questions": len(base), "one_question_per_call": True, "candidates": rows,
            "margin": margins(fp32, default_dir / "model.onnx", held_out)}


def margins(fp32, int8_model: Path, held_out: Path, max_answer: int = 30, top: int = 20) -> dict:
    """FP32's best-span margin per held-out question, and how many spans the INT8 model changes per margin quartile."""
    import onnxruntime as ort

    from compress.data.squad import load_squad
    from compress.data.tokenization import qa_windows
    from compress.teachers.load import load_teacher

    tok = load_teacher(fp32.path.parent / "teacher").tokenizer
    ds = load_squad(held_out)
    w = qa_windows(tok.backend_tokenizer, ds.questions, ds.contexts, max_length=384, stride=128,
                   pad_id=tok.pad_token_id or 0)
    width = w.offsets.shape[1]

    def best(model: Path) -> list[tuple[int, int, float]]:
        s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        feeds = [i.name for i in s.get_inputs()]
        starts, ends = [], []
        for i in range(len(w.example)):  # one window per call
            m = int(w.arrays["attention_mask"][i].sum())
            st, en = s.run(None, {k: w.arrays[k][i:i + 1, :m] for k in feeds})[:2]
            starts.append(np.pad(st[0], (0, width - m), constant_values=-1e9))
            ends.append(np.pad(en[0], (0, width - m), constant_values=-1e9))
        found = []
        for question in range(len(ds.questions)):
            spans = []
            for i in np.where(w.example == question)[0]:
                inside = w.offsets[i, :, 0] >= 0
                st, en = np.where(inside, starts[i], -1e9), np.where(inside, ends[i], -1e9)
                spans += [(st[a] + en[b], int(w.offsets[i, a, 0]), int(w.offsets[i, b, 1]))
                          for a in np.argsort(st)[-top:] for b in np.argsort(en)[-top:] if a <= b < a + max_answer]
            spans.sort(reverse=True)
            other = next((sp for sp in spans[1:] if sp[1:] != spans[0][1:]), None)
            found.append((spans[0][1], spans[0][2], float(spans[0][0] - other[0]) if other else float("inf")))
        return found

    ref, q8 = best(fp32.path / fp32.manifest.model_file), best(int8_model)
    gap = np.array([r[2] for r in ref])
    changed = np.array([r[:2] != c[:2] for r, c in zip(ref, q8, strict=True)])
    edges = np.quantile(gap, [0.25, 0.5, 0.75])
    return {"spans_changed": int(changed.sum()), "gap_quartiles": [round(float(e), 3) for e in edges],
            "median_gap_changed": round(float(np.median(gap[changed])), 3),
            "median_gap_unchanged": round(float(np.median(gap[~changed])), 3),
            "changed_by_gap_quartile": [int(changed[(gap >= lo) & (gap < hi)].sum())
                                        for lo, hi in zip([-np.inf, *edges], [*edges, np.inf], strict=True)]}
