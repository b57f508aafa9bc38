"""The INT4 default of a generator's ONNX artifact, decided per model (:mod:`.bit_allocation`).

1. One FP32 run over the built-in text (:data:`.bit_allocation.IMPORTANCE_TEXT`) gives each MatMul's inputs' mean
   square (the importance) and the reference logits.
2. Each MatMul's output error under each candidate (:func:`.bit_allocation.output_error`); each 4-bit candidate's
   dequantized weights are kept (FP16) for step 4.
3. The budget starts at what llama.cpp's Q4_K_M spends on the same matrices; :func:`.bit_allocation.allocate` spends it.
4. The allocation is *checked*: the FP32 graph with each matrix's weights replaced by what its candidate makes of
   them (8 bits: the float weights, whose 8-bit error is ~1e-5 of the output) is run over the built-in text, and its
   KL to the FP32 logits and top-1 agreement read. Where they miss :data:`TARGET_KL` / :data:`TARGET_TOP1`, the budget
   grows (x :data:`GROWTH` a step, up to every matrix at 8 bits), then the smallest budget that holds is found by
   bisection (:data:`BISECTIONS` steps). The file is then no larger than Q4_K_M's where the model allows, and larger,
   said so, where 4 and 8 bits cannot hold the model within it (ONNX Runtime's MatMulNBits has no 5- or 6-bit kernel:
   a model whose weights carry llama.cpp's Q5_0 grid, Gemma 3's, needs more 8-bit matrices than Q4_K_M's bytes buy).

:func:`plan` returns ``{MatMul: candidate name}`` and the step's record; :func:`.onnx.weight_only` writes it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from compress.progress import Progress, note, start_phase
from compress.stages.quantize.lm import bit_allocation as ba

log = logging.getLogger(__name__)

#: tokens of the built-in text the importance and the check are measured on
IMPORTANCE_TOKENS = 384
#: the check's bars on the built-in text (KL in nats, FP32 -> candidate, positions 16 on; top-1 agreement): set under
#: the default gate's (KL 0.10, top-1 0.80, +5% perplexity on the user's text) so that a mix that holds them passes
#: it on other text too (the panel's figures: docs/generators.md, "The INT4 default")
TARGET_KL = 0.015
TARGET_TOP1 = 0.90
GROWTH = 1.25  #: the budget's step while the check misses
BISECTIONS = 3  #: steps of bisection between the last miss and the first hold
_SKIP = 16  #: the first positions, with little context, are not scored
PHASE = "INT4 mix: measuring each matrix"  #: the counted phase's key and label


def importance_ids(art) -> np.ndarray:
    """The built-in text (:data:`.bit_allocation.IMPORTANCE_TEXT`) in the generator ``art``'s own tokens [1, T] (its
    ``tokenizer.json``): BOS first where the model has one, at most :data:`IMPORTANCE_TOKENS` and the model's
    context."""
    from tokenizers import Tokenizer

    post = art.manifest.postprocess
    tok = Tokenizer.from_file(str(art.path / "tokenizer.json"))
    limit = min(IMPORTANCE_TOKENS, post.cache.max_length if post.cache else IMPORTANCE_TOKENS)
    bos = [post.bos_token_id] if post.bos_token_id is not None else []
    return np.asarray([(bos + tok.encode(ba.IMPORTANCE_TEXT).ids)[:limit]], dtype=np.int64)


def _session(model):
    import tempfile

    import onnx
    import onnxruntime as ort

    if model.ByteSize() < 1_800_000_000:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="lm-mix.") as tmp:
        onnx.save(copy.deepcopy(model), f"{tmp}/m.onnx", save_as_external_data=True, location="m.data")
        return ort.InferenceSession(f"{tmp}/m.onnx", providers=["CPUExecutionProvider"])


def _feed(sess, ids: np.ndarray, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    inputs = {i.name for i in sess.get_inputs()}
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **state}
    if "position_ids" in inputs:
        feed["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
    return {k: v for k, v in feed.items() if k in inputs}


def reference_run(model, names: list[str], ids: np.ndarray,
                  state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One run of the FP32 ``model`` over the token window ``ids`` [1, T] with its MatMuls' inputs as extra outputs
    (taken off the graph again after): each MatMul of ``names`` -> its input channels' mean square [K], and the
    logits [T, V]."""
    import onnx

    nodes = {n.name: n for n in model.graph.node}
    wanted = sorted({nodes[n].input[0] for n in names})
    have = {o.name for o in model.graph.output}
    extra = [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in wanted if t not in have]
    model.graph.output.extend(extra)
    try:
        sess = _session(model)
    finally:
        for _ in extra:
            model.graph.output.pop()
    got = sess.run(["logits", *wanted], _feed(sess, ids, state))
    values = dict(zip(wanted, got[1:], strict=True))
    importance = {}
    for n in names:
        x = values[nodes[n].input[0]].astype(np.float64)
        importance[n] = (x.reshape(-1, x.shape[-1]) ** 2).mean(axis=0)
    return importance, got[0][0]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def agreement(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """KL(ref || cand) per position (mean, nats) and top-1 agreement of two logits [T, V], positions :data:`_SKIP`
    on."""
    p, q = _log_softmax(ref[_SKIP:]), _log_softmax(cand[_SKIP:])
    kl = float((np.exp(p) * (p - q)).sum(axis=-1).mean())
    return {"kl": kl, "top1": float((p.argmax(-1) == q.argmax(-1)).mean())}


class _Check:
    """The FP32 graph with each matrix's weights replaced by its candidate's (the 4-bit ones' dequantized weights,
    kept from the error pass; 8 bits: the float weights), run over the built-in text against the FP32 logits."""

    def __init__(self, model, ids, state, ref, weights: dict[str, str], deq: dict[str, dict[str, np.ndarray]]):
        self.model, self.ids, self.state, self.ref, self.weights, self.deq = model, ids, state, ref, weights, deq

    def __call__(self, choice: dict[str, str]) -> dict[str, float]:
        from onnx import numpy_helper

        m = copy.deepcopy(self.model)
        inits = {t.name: t for t in m.graph.initializer}
        for name, cand in choice.items():
            w = self.deq[name].get(cand)
            if w is not None:
                inits[self.weights[name]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), self.weights[name]))
        sess = _session(m)
        del m
        logits = sess.run(["logits"], _feed(sess, self.ids, self.state))[0][0]
        return agreement(self.ref, logits)


def plan(model, body: list[str], *, block: int, ids: np.ndarray, state: dict[str, np.ndarray],
         kv_width: int | None, candidates: tuple[ba.Candidate, ...] = ba.ONNX_CANDIDATES,
         progress: Progress | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """The candidate of each MatMul of ``body`` (names) of the FP32 ``model`` (see the module's docstring);
    ``progress`` hears the matrices measured (phase ``int4-mix``, counted) and a line per check. Returns (choice,
    record)."""
    from onnx import numpy_helper

    t0 = time.monotonic()
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    importance, ref = reference_run(model, body, ids, state)
    advance = start_phase(progress, PHASE, len(body))
    errors, costs, shapes, deq, weights = {}, {}, {}, {}, {}
    for name in body:
        weights[name] = nodes[name].input[1]
        w = numpy_helper.to_array(inits[weights[name]]).astype(np.float32)
        k, n = shapes[name] = w.shape
        errors[name], deq[name] = {}, {}
        for c in candidates:
            d = ba.dequantized(w, c, block)
            errors[name][c.name] = ba.relative_error(w, d, importance[name])
            if c.bits < 8:
                deq[name][c.name] = d.astype(np.float16)
        costs[name] = {c.name: ba.candidate_bytes(k, n, c, block) for c in candidates}
        advance(1)
    reference = sum(ba.q4_k_m_bytes(shapes, kv_width=kv_width).values())
    choice, record = choose(errors, costs, reference, _Check(model, ids, state, ref, weights, deq), progress=progress,
                            t0=t0)
    record |= {"block_size": block, "check_tokens": int(ids.shape[1]), "seconds": round(time.monotonic() - t0, 1)}
    return choice, record


def choose(errors: dict[str, dict[str, float]], costs: dict[str, dict[str, float]], reference: float,
           check: Callable[[dict[str, str]], dict[str, float]], *, progress: Progress | None = None,
           t0: float | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """The budget search, neutral of the format (steps 3 and 4 of the module's docstring): the allocation
    (:func:`.bit_allocation.allocate`) of ``errors`` / ``costs`` (matrix -> candidate -> value) within a budget that
    starts at ``reference`` (Q4_K_M's bytes), grows by :data:`GROWTH` while ``check(choice)`` (KL and top-1 on the
    built-in text) misses :data:`TARGET_KL` / :data:`TARGET_TOP1`, then bisects. ``progress`` hears a line per check
    (``t0``: when the measuring began, for the lines' seconds). Returns (choice, record: the
    :func:`.bit_allocation.plan_record`, the targets, whether the check held and each budget tried)."""
    t0 = time.monotonic() if t0 is None else t0

    def say(text: str) -> None:
        log.info("%s", text)
        note(progress, text, "int4-mix-check")

    top = sum(max(c.values()) for c in costs.values())
    tried: list[dict[str, Any]] = []

    def attempt(budget: float) -> tuple[dict[str, str], bool]:
        choice = ba.allocate(errors, costs, budget)
        got = check(choice)
        held = got["kl"] <= TARGET_KL and got["top1"] >= TARGET_TOP1
        body_bytes = sum(costs[n][choice[n]] for n in choice)
        tried.append({"budget_bytes": round(budget), "body_bytes": round(body_bytes), "kl": round(got["kl"], 5),
                      "top1": round(got["top1"], 4), "held": held, "counts": ba.counts(choice)})
        say(f"INT4 mix: body {body_bytes / 1e6:.1f} MB ({body_bytes / reference:.2f}x Q4_K_M's): KL {got['kl']:.4f}, "
            f"top-1 {got['top1']:.3f} on the built-in text: {'holds' if held else 'misses'} "
            f"(KL <= {TARGET_KL}, top-1 >= {TARGET_TOP1}; {time.monotonic() - t0:.0f} s)")
        return choice, held

    budget = reference
    choice, held = attempt(budget)
    low = None
    while not held and budget < top:
        low, budget = budget, min(top, budget * GROWTH)
        choice, held = attempt(budget)
    if held and low is not None:  # the smallest budget between the last miss and the first hold
        high = budget
        for _ in range(BISECTIONS):
            mid = (low + high) / 2
            c, ok = attempt(mid)
            if ok:
                choice, high = c, mid
            else:
                low = mid
    record = ba.plan_record(choice, errors, costs, reference)
    record |= {"target_kl": TARGET_KL, "target_top1": TARGET_TOP1, "held": held, "tried": tried}
    return choice, record
