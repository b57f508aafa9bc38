"""Where a generator's INT4 spends its bits, decided per model by measurement (the INT4 default, ``--int4-algorithm auto``).

A fixed recipe (one algorithm, one bit width for every MatMul) is a fit to the model it was chosen on: HQQ's float
zero points land exactly on a Q4_1 source's grid (SmolLM2-135M: +0.6% perplexity) and cost Gemma 3 270M, whose weights
carry Q5_0's symmetric 5-bit grid, +23%. llama.cpp's Q4_K_M spends bits by a fixed rule instead (6 bits on ``attn_v``
and ``ffn_down`` in some layers, 5 where a row does not fit a 256-block). Here the rule is a measurement:

1. **Each weight matrix's error under each candidate** the runtime can run (:data:`ONNX_CANDIDATES`: 4-bit round to
   nearest, symmetric; 4-bit HQQ, asymmetric with float zero points; 8-bit round to nearest), as the relative error
   of the layer's *output*: ``Σ_j h_j ||ΔW_j||² / Σ_j h_j ||W_j||²``, ``h_j`` the mean square of input channel ``j``
   (the diagonal of the inputs' second moment, as llama.cpp's importance matrix) over a small built-in text
   (:data:`IMPORTANCE_TEXT`, a few hundred tokens of plain prose: no user data), so a channel the model drives hard
   (an outlier) weighs what it weighs in the output.
2. **A byte budget**: what llama.cpp's Q4_K_M would spend on the same matrices (:func:`q4_k_m_bytes`, from their
   shapes and roles alone, llama.cpp's own type rule with its fall-backs), less nothing: the artifact's body is no
   larger than Q4_K_M's body of the same weights.
3. **The allocation** (:func:`allocate`): every matrix starts at its cheapest candidate; then, while the budget lasts,
   the step that removes the most output error per byte is taken (a greedy walk on each matrix's convex hull of
   (bytes, error), the classic multiple-choice knapsack heuristic). Each matrix's relative output error counts the
   same: each adds its noise to the residual stream through the same kind of layer.

What it chose, each matrix's errors and the budget are the step's record (:func:`plan_record`); quantize's summary line
says how many matrices took each candidate.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.progress import Progress, note

log = logging.getLogger(__name__)

__all__ = ["BISECTIONS", "GROWTH", "IMPORTANCE_TEXT", "IMPORTANCE_TOKENS", "ONNX_CANDIDATES", "PHASE", "TARGET_KL",
           "TARGET_TOP1", "Candidate", "Coded", "agreement", "allocate", "candidate_bytes", "choose", "coded", "counts",
           "dequantized",
           "importance_ids", "plan_record", "q4_k_m_bytes", "relative_error", "role_of", "summary", "use_more_bits"]


@dataclass(frozen=True)
class Candidate:
    """One way to store a weight matrix: ``bits`` in blocks along the input dimension, by ``algorithm``."""

    name: str
    bits: int
    algorithm: str  # rtn | hqq
    symmetric: bool

    def bytes_per_block(self, block: int) -> float:
        """Bytes a block of ``block`` weights takes: the codes, an FP16 scale, and HQQ's FP16 offset (its float zero
        point, folded out of the node: :func:`.matmul_nbits_graph.fold_zero_points`)."""
        return block * self.bits / 8 + 2 + (2 if self.algorithm == "hqq" else 0)


#: what ONNX Runtime's MatMulNBits runs fast on a CPU (integer zero points; HQQ's folded out), cheapest first
ONNX_CANDIDATES = (Candidate("int4-rtn", 4, "rtn", True), Candidate("int4-hqq", 4, "hqq", False),
                   Candidate("int8", 8, "rtn", True))

#: the built-in text the inputs' importance is measured on: plain encyclopaedic and narrative prose, no user data
IMPORTANCE_TEXT = (
    "The river rises in the hills to the north of the town and flows south for about forty miles before it reaches "
    "the sea. In the eighteenth century it carried coal and timber to the port, and the mills along its banks made "
    "cloth, paper and flour. The railway arrived in 1848, and within twenty years most of the trade had moved to it. "
    "Today the old warehouses are flats and offices, and the river is used mainly by rowing clubs and anglers.\n\n"
    "She opened the letter slowly, as if the words inside might change if she hurried. It was from her brother, who "
    "had not written in three years. He said he was well, that he had found work in a hospital in the city, and that "
    "he would like to visit in the spring if she would have him. She read it twice, folded it, and put it on the "
    "table beside the window, where the afternoon light fell across the floor.\n\n"
    "A prime number is a natural number greater than one that has no positive divisors other than one and itself. "
    "The first few are 2, 3, 5, 7, 11 and 13. Euclid proved that there are infinitely many of them: given any finite "
    "list of primes, multiply them together and add one, and the result has a prime factor that is not on the list. "
    "How the primes are distributed among the integers is one of the oldest questions in mathematics.\n\n"
    "To make the bread, mix the flour, salt and yeast in a large bowl, then add the warm water and stir until a soft "
    "dough forms. Knead it on a floured surface for ten minutes, until it is smooth and elastic. Cover it and leave "
    "it somewhere warm for an hour, or until it has doubled in size, then shape it, let it rise again, and bake it "
    "for thirty-five minutes.\n\n"
    "def mean(values):\n    \"\"\"Return the arithmetic mean of a non-empty list.\"\"\"\n    return sum(values) / "
    "len(values)\n\nprint(mean([3, 4, 5]))  # 4.0\n")

#: the byte cost of llama.cpp's types a block of 32 / 256 weights: bits per weight
_GGML_BPW = {"Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "Q4_0": 4.5}
#: llama.cpp's fall-back where a row does not fit a 256-block (llama-quant.cpp, ``llama_tensor_get_type``)
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_ROLE = re.compile(r"layers\.(\d+)/(?:attn|mlp|self_attn)/(\w+?)(?:_proj)?/MatMul")


def role_of(name: str) -> tuple[int, str] | None:
    """``(layer, role)`` of a builder graph's MatMul name (``/model/layers.3/attn/v_proj/MatMul`` -> ``(3, "v")``;
    roles q, k, v, qkv, o, gate, up, gate_up, down); None for another name."""
    m = _ROLE.search(name)
    return (int(m.group(1)), m.group(2)) if m else None


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_bytes(shapes: dict[str, tuple[int, int]], *, kv_width: int | None = None) -> dict[str, float]:
    """What llama.cpp's Q4_K_M spends on each of the body's matrices (``shapes``: name -> (K in, N out), builder
    names), by llama.cpp's own rule: Q4_K, Q6_K on ``attn_v`` and ``ffn_down`` in :func:`use_more_bits` layers, and the
    fall-back to Q5_0 / Q8_0 where the input width is not a multiple of 256. A fused QKV's V part (``kv_width``
    outputs) is costed as ``attn_v``. Names without a role are costed at Q4_K."""
    layers = 1 + max((r[0] for r in map(role_of, shapes) if r), default=0)
    out: dict[str, float] = {}
    for name, (k, n) in shapes.items():
        r = role_of(name)
        more = r is not None and use_more_bits(r[0], layers)
        parts = [(n, "Q6_K" if more and r[1] in ("v", "down") else "Q4_K")]
        if r is not None and r[1] == "qkv" and kv_width:
            parts = [(n - kv_width, "Q4_K"), (kv_width, "Q6_K" if more else "Q4_K")]
        total = 0.0
        for width, kind in parts:
            if k % 256:
                kind = _FALLBACK.get(kind, kind)
            total += k * width * _GGML_BPW[kind] / 8
        out[name] = total
    return out


def candidate_bytes(k: int, n: int, cand: Candidate, block: int) -> float:
    """Bytes a [K, N] matrix takes as ``cand`` (blocks of ``block`` along K, the last padded)."""
    return n * -(-k // block) * cand.bytes_per_block(block)


@dataclass
class Coded:
    """A [K, N] weight matrix as a 4-bit (or narrower) candidate stores it, a quarter of its FP16 values' bytes: the
    codes two to a byte along K (``packed`` [N, blocks * block / 2]), each block's scale and zero point [N, blocks]
    (float32, holding what the file holds: FP16 where it writes FP16)."""

    packed: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    k: int
    block: int

    @classmethod
    def of(cls, q, scale, zero, k: int, block: int) -> Coded:
        """From codes ``q`` [N, blocks * block] (0..15) and scale / zero point [N, blocks] (torch or numpy)."""
        q = np.asarray(q, dtype=np.float32).astype(np.uint8).reshape(q.shape[0], -1)
        return cls(q[:, 0::2] | (q[:, 1::2] << 4), np.asarray(scale, np.float32).reshape(q.shape[0], -1),
                   np.asarray(zero, np.float32).reshape(q.shape[0], -1), k, block)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scale.nbytes + self.zero.nbytes

    def decode(self, out: np.ndarray | None = None) -> np.ndarray:
        """The dequantized weights [K, N] (float32 values rounded to FP16, as the check has always fed them), written
        into ``out`` where given."""
        n = self.packed.shape[0]
        q = np.empty((n, self.packed.shape[1] * 2), np.float32)
        q[:, 0::2], q[:, 1::2] = self.packed & 15, self.packed >> 4
        q = q.reshape(n, -1, self.block)
        q -= self.zero[..., None]
        q *= self.scale[..., None]
        d = q.reshape(n, -1)[:, :self.k].astype(np.float16).T
        if out is None:
            return d.astype(np.float32)
        out[...] = d
        return out


def coded(w: np.ndarray, cand: Candidate, block: int) -> Coded:
    """``w`` [K, N] through the 4-bit ``cand`` as ONNX Runtime's quantizer writes it (:class:`Coded`)."""
    import torch

    if cand.bits > 4 or block % 2:
        raise ValueError(f"{cand.name} in blocks of {block}: only 4 bits or fewer, in even blocks, are coded")
    wt = torch.from_numpy(np.ascontiguousarray(w.T, dtype=np.float32))  # [N, K]: blocks along K
    if cand.algorithm == "hqq":
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

        hqq = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=block, bits=cand.bits))
        q, scale, zero = hqq.quantize_internal(wt, bits=cand.bits, group_size=block)
        return Coded.of(q.float(), scale.half().float(), zero.half().float(), w.shape[0], block)  # FP16 as written
    from compress.stages.quantize.lm.fake_quant import rtn_codes

    q, scale, zero = rtn_codes(wt, cand.bits, block, cand.symmetric)
    return Coded.of(q, scale, zero, w.shape[0], block)


def dequantized(w: np.ndarray, cand: Candidate, block: int) -> np.ndarray:
    """``w`` [K, N] through ``cand`` and back to float, as ONNX Runtime's quantizer writes it ([K, N]; the values
    rounded to FP16)."""
    import torch

    if cand.bits <= 4 and block % 2 == 0:
        return coded(w, cand, block).decode()
    from compress.stages.quantize.lm.fake_quant import rtn_grid

    wt = torch.from_numpy(np.ascontiguousarray(w.T, dtype=np.float32))  # [N, K]: blocks along K
    if cand.algorithm == "hqq":  # wider than 4 bits, or an odd block
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

        hqq = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=block, bits=cand.bits))
        q, scale, zero = hqq.quantize_internal(wt, bits=cand.bits, group_size=block)
        blocks = q.shape[1] // block
        deq = (q.reshape(-1, blocks, block).float() - zero.reshape(-1, blocks, 1).half().float()) * \
            scale.reshape(-1, blocks, 1).half().float()  # FP16 scales and offsets, as written
        return deq.reshape(q.shape[0], -1)[:, :w.shape[0]].T.numpy()
    return rtn_grid(wt, cand.bits, block, cand.symmetric).half().float().T.numpy()


def relative_error(w: np.ndarray, approx: np.ndarray, importance: np.ndarray | None = None) -> float:
    """The relative error ``approx`` (a candidate's dequantized weights) makes in the output of a layer with weight
    ``w`` [K, N]: ``Σ_j h_j ||ΔW_j||² / Σ_j h_j ||W_j||²`` over input channels ``j`` (``importance`` h [K], the
    inputs' mean square; uniform without it)."""
    d = (approx - w).astype(np.float64)
    h = np.ones(w.shape[0]) if importance is None else np.asarray(importance, np.float64)
    num = float(h @ (d * d).sum(axis=1))
    den = float(h @ (w.astype(np.float64) ** 2).sum(axis=1))
    return num / den if den > 0 else 0.0


def allocate(errors: dict[str, dict[str, float]], costs: dict[str, dict[str, float]],
             budget: float) -> dict[str, str]:
    """Each matrix's candidate: start at its cheapest, then while ``budget`` (bytes, all matrices) lasts take the
    step that removes the most error per byte (a step: from a matrix's candidate to a costlier one with less error,
    on the lower convex hull of its (bytes, error) points). ``errors`` / ``costs``: name -> candidate -> value."""
    choice = {name: min(c, key=lambda k: (c[k], errors[name][k])) for name, c in costs.items()}
    spent = sum(costs[n][choice[n]] for n in choice)
    while True:
        best, best_gain = None, 0.0
        for name, cur in choice.items():
            for cand, cost in costs[name].items():
                extra = cost - costs[name][cur]
                gain = errors[name][cur] - errors[name][cand]
                if extra <= 0 or gain <= 0 or spent + extra > budget:
                    continue
                if gain / extra > best_gain:
                    best, best_gain = (name, cand, extra), gain / extra
        if best is None:
            return choice
        name, cand, extra = best
        choice[name] = cand
        spent += extra


def counts(choice: dict[str, str]) -> dict[str, int]:
    """How many matrices took each candidate."""
    out: dict[str, int] = {}
    for c in choice.values():
        out[c] = out.get(c, 0) + 1
    return dict(sorted(out.items()))


def plan_record(choice: dict[str, str], errors: dict[str, dict[str, float]], costs: dict[str, dict[str, float]],
                reference: float) -> dict[str, Any]:
    """What the step records: each matrix's candidate and errors, the body's bytes and Q4_K_M's for the same
    matrices."""
    return {"rule": "least output error per byte within a byte budget (bit_allocation.allocate), the budget the "
                    "smallest from Q4_K_M's up that holds the check on the built-in text",
            "importance": "mean square of each input channel over the built-in text (bit_allocation.IMPORTANCE_TEXT)",
            "q4_k_m_bytes": round(reference), "body_bytes": round(sum(costs[n][choice[n]] for n in choice)),
            "counts": counts(choice),
            "matrices": {n: {"chose": choice[n], "output_error": {k: float(f"{v:.4g}") for k, v in errors[n].items()}}
                         for n in choice}}


def summary(record: dict[str, Any]) -> str:
    """One phrase for quantize's summary line: ``mixed by measurement: 37 int4-hqq, 89 int8 (body 90.2 MB, 1.32x
    Q4_K_M's 68.1 MB)``."""
    made = ", ".join(f"{v} {k}" for k, v in record["counts"].items())
    return (f"mixed by measurement: {made} (body {record['body_bytes'] / 1e6:.1f} MB, "
            f"{record['body_bytes'] / max(record['q4_k_m_bytes'], 1):.2f}x Q4_K_M's {record['q4_k_m_bytes'] / 1e6:.1f} MB)")


#: tokens of the built-in text the importance and the check are measured on
IMPORTANCE_TOKENS = 384
#: the check's bars on the built-in text (KL in nats, FP32 -> candidate, positions 16 on; top-1 agreement): set under
#: the default gate's (KL 0.10, top-1 0.80, +5% perplexity on the user's text) so that a mix that holds them passes
#: it on other text too (the panel's figures: docs/benchmarks/lm.md, "The INT4 default on three real LMs")
TARGET_KL = 0.015
TARGET_TOP1 = 0.90
GROWTH = 1.25  #: the budget's step while the check misses
BISECTIONS = 2  #: steps of bisection between the last miss and the first hold
_SKIP = 16  #: the first positions, with little context, are not scored
PHASE = "INT4 mix: measuring each matrix"  #: the counted phase's key and label


def importance_ids(art) -> np.ndarray:
    """The built-in text (:data:`IMPORTANCE_TEXT`) in the generator ``art``'s own tokens [1, T] (its
    ``tokenizer.json``): BOS first where the model has one, at most :data:`IMPORTANCE_TOKENS` and the model's
    context."""
    from tokenizers import Tokenizer

    post = art.manifest.postprocess
    tok = Tokenizer.from_file(str(art.path / "tokenizer.json"))
    limit = min(IMPORTANCE_TOKENS, post.cache.max_length if post.cache else IMPORTANCE_TOKENS)
    bos = [post.bos_token_id] if post.bos_token_id is not None else []
    return np.asarray([(bos + tok.encode(IMPORTANCE_TEXT).ids)[:limit]], dtype=np.int64)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


#: positions whose softmax :func:`agreement` holds at once
_ROWS = 32


def agreement(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """KL(ref || cand) per position (mean, nats) and top-1 agreement of two logits [T, V], positions :data:`_SKIP`
    on."""
    ref, cand = ref[_SKIP:], cand[_SKIP:]
    kl, same = [], []
    for at in range(0, len(ref), _ROWS):  # a few positions at a time: a 262,144-token vocabulary's float64 softmax
        p, q = _log_softmax(ref[at:at + _ROWS]), _log_softmax(cand[at:at + _ROWS])  # over 384 rows is 0.8 GB each
        kl.append((np.exp(p) * (p - q)).sum(axis=-1))
        same.append(p.argmax(-1) == q.argmax(-1))
    return {"kl": float(np.concatenate(kl).mean()), "top1": float(np.concatenate(same).mean())}


def _on_builtin_text(got: dict[str, float]) -> tuple[bool, str]:
    """The default's check: KL and top-1 on the built-in text against :data:`TARGET_KL` / :data:`TARGET_TOP1`."""
    return (got["kl"] <= TARGET_KL and got["top1"] >= TARGET_TOP1,
            f"KL {got['kl']:.4f}, top-1 {got['top1']:.3f} on the built-in text (KL <= {TARGET_KL}, "
            f"top-1 >= {TARGET_TOP1})")


def most_checks(reference: float, top: float) -> int:
    """The most checks :func:`choose` makes from ``reference`` bytes to ``top`` (every matrix at its costliest):
    the growth steps, the first, and the bisection (a progress bar's total)."""
    import math

    grow = 0 if top <= reference else math.ceil(math.log(top / reference) / math.log(GROWTH))
    return 1 + grow + BISECTIONS


def choose(errors: dict[str, dict[str, float]], costs: dict[str, dict[str, float]], reference: float,
           check: Callable[[dict[str, str]], dict[str, float]], *, progress: Progress | None = None,
           t0: float | None = None, judge: Callable[[dict[str, float]], tuple[bool, str]] | None = None,
           label: str = "INT4 mix") -> tuple[dict[str, str], dict[str, Any]]:
    """The budget search, neutral of the format (steps 3 and 4 of the module's docstring; each format's module
    measures and checks: :mod:`.onnx_mix`, :mod:`.openvino_mix`): the allocation
    (:func:`allocate`) of ``errors`` / ``costs`` (matrix -> candidate -> value) within a budget that
    starts at ``reference`` (Q4_K_M's bytes), grows by :data:`GROWTH` while ``check(choice)`` (KL and top-1 on the
    built-in text) misses :data:`TARGET_KL` / :data:`TARGET_TOP1`, then bisects. ``progress`` hears a line per check
    (``t0``: when the measuring began, for the lines' seconds; ``label`` starts them). ``judge(got)``: (held, what
    to say of it) in place of the built-in text's bars (accuracy-aware INT4 judges perplexity on the user's text).
    Returns (choice, record: the :func:`plan_record`, the targets, whether the check held and each budget
    tried)."""
    judge = judge or _on_builtin_text
    t0 = time.monotonic() if t0 is None else t0

    def say(text: str) -> None:
        log.info("%s", text)
        note(progress, text, "int4-mix-check")

    top = sum(max(c.values()) for c in costs.values())
    tried: list[dict[str, Any]] = []
    seen: dict[tuple, dict[str, float]] = {}  # a budget that buys the same choice is not checked again

    def attempt(budget: float) -> tuple[dict[str, str], bool]:
        choice = allocate(errors, costs, budget)
        key = tuple(sorted(choice.items()))
        if key not in seen:
            seen[key] = check(choice)
        got = seen[key]
        held, said = judge(got)
        body_bytes = sum(costs[n][choice[n]] for n in choice)
        tried.append({"budget_bytes": round(budget), "body_bytes": round(body_bytes),
                      **{k: round(v, 5) for k, v in got.items()}, "held": held, "counts": counts(choice)})
        say(f"{label}: body {body_bytes / 1e6:.1f} MB ({body_bytes / max(reference, 1):.2f}x Q4_K_M's): {said}: "
            f"{'holds' if held else 'misses'} ({time.monotonic() - t0:.0f} s)")
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
    record = plan_record(choice, errors, costs, reference)
    record |= {"target_kl": TARGET_KL, "target_top1": TARGET_TOP1, "held": held, "tried": tried}
    return choice, record
