"""Which operators of a LiteRT model static INT8 keeps float, chosen by measurement on the calibration rows.

INT8 activations are one scale per tensor. Where one tensor carries most of a model's precision (the raw-pixel stem of
a small CNN: MediaPipe's selfie segmenter's first convolutions) that one scale costs the output more than every other
layer together, and no range setting wins it back. :func:`choose_float_ops` finds such operators with
ai-edge-quantizer's own means and keeps them float (``NO_QUANTIZE`` scopes of the recipe):

1. **Bar.** The output SQNR against FP32 on the calibration rows (every model output, in dB) of the INT8 model
   (``static_wi8_ai8`` with the recipe's exceptions) and of ai-edge-quantizer's 16-bit-activation recipe
   (``static_wi8_ai16``, the best static recipe it has). INT8 within :data:`MARGIN_DB` of it, or at
   :data:`GOOD_DB`: nothing changes.
2. **Sensitivity.** Each operator quantized alone (every other one float): the output SQNR that its INT8 input and
   output tensors leave (the per-layer table of AIMET's or ONNX Runtime's QDQ debugging). Lowest first.
3. **Greedy.** The most sensitive operator kept float together with its neighbours (a tensor is quantized while any
   operator that writes or reads it is), then the next, until the INT8 model's SQNR reaches the bar, at most
   :data:`MAX_FLOAT_SHARE` of the operators and while the model stays smaller than the file it is made from (FP16
   weights kept float grow to FP32); the best model of the walk is kept when the bar is out of reach
   (recorded as not met).

Everything is measured on the calibration rows only (never on the data a result is judged on); the choice, the SQNRs
and the sensitivity table's head are returned for the artifact's manifest. Measured on the selfie segmenter (views of
photos with a person that no calibration view came from): ``benchmarks/vision/selfie_litert.py``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: INT8 is good enough when its output SQNR on the calibration rows is within this many dB of 16-bit activations'
MARGIN_DB = 1.0
#: ... and always when it reaches this many dB (16-bit activations may be far better than INT8 needs to be)
GOOD_DB = 20.0
#: at most this share of a model's operators kept float
MAX_FLOAT_SHARE = 0.25
#: calibration rows the SQNRs are measured on (evenly spaced over the set)
ROWS = 16

Rows = dict[str, list[dict[str, np.ndarray]]]


@dataclass
class Choice:
    """The operators kept float (ai-edge-quantizer's scopes: their output tensors' names, each followed by ``;``) and the measurements behind them."""

    float_ops: list[str] = field(default_factory=list)
    int8_sqnr_db: float | None = None
    int16_sqnr_db: float | None = None
    chosen_sqnr_db: float | None = None
    met: bool = True
    most_sensitive: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0

    def record(self) -> dict[str, Any]:
        return {"rule": f"operators kept float with their neighbours, most sensitive first, until INT8's output SQNR on "
                        f"the calibration rows is within {MARGIN_DB} dB of 16-bit activations' or {GOOD_DB} dB (at "
                        f"most {MAX_FLOAT_SHARE:.0%} of the operators)",
                "float_ops": self.float_ops, "rows": self.rows, "int8_sqnr_db": self.int8_sqnr_db,
                "int16_sqnr_db": self.int16_sqnr_db, "chosen_sqnr_db": self.chosen_sqnr_db, "bar_met": bool(self.met),
                "most_sensitive": self.most_sensitive}


def scope_regex(scope: str) -> str:
    """The recipe regex of exactly one operator (a scope: its output tensors' names, each followed by ``;``)."""
    return f"^{re.escape(scope)}$"


def operator_scopes(model: bytes) -> dict[str, set[str]]:
    """The scopes of ``model``'s operators that ai-edge-quantizer can quantize, in graph order, each with the scopes of
    its neighbours among them (the operators that write its inputs or read its outputs)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.utils.tfl_flatbuffer_utils import get_op_scope

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    supported = {op.value for op in qtyping.TFLOperationName}
    m = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    sg = m.subgraphs[0]
    ops = []
    for op in sg.operators:
        code = m.operatorCodes[op.opcodeIndex]
        if names.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode))) in supported:
            ops.append((get_op_scope(op, sg.tensors), {t for t in op.outputs if t >= 0}, {t for t in op.inputs if t >= 0}))
    return {scope: {other for other, o2, i2 in ops if other != scope and (o2 & ins or outs & i2)}
            for scope, outs, ins in ops}


def outputs(model: bytes, rows: Rows) -> np.ndarray:
    """Every output of ``model`` on ``rows`` (float inputs quantized where it takes integers, integer outputs
    dequantized), flattened and joined in a fixed order."""
    from ai_edge_litert.interpreter import Interpreter

    key, batch = next(iter(rows.items()))
    runner = Interpreter(model_content=model, num_threads=1).get_signature_runner(key)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    got = []
    for row in batch:
        fed = {}
        for name, value in row.items():
            d = ins[name]
            scale, zero = d.get("quantization", (0.0, 0))
            if scale and not np.issubdtype(d["dtype"], np.floating):
                info = np.iinfo(d["dtype"])
                value = np.clip(np.round(value / scale + zero), info.min, info.max)
            fed[name] = np.asarray(value, dtype=d["dtype"])
        result = runner(**fed)
        for name in sorted(result):
            v, d = result[name], outs[name]
            scale, zero = d.get("quantization", (0.0, 0))
            if scale and not np.issubdtype(v.dtype, np.floating):
                v = (v.astype(np.float32) - zero) * scale
            got.append(np.asarray(v, dtype=np.float64).ravel())
    return np.concatenate(got)


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``got`` against ``reference``, in dB (capped at 100)."""
    noise = float(np.sum((got - reference) ** 2))
    return round(float(min(100.0, 10 * np.log10(max(float(np.sum(reference ** 2)), 1e-30) / max(noise, 1e-30)))), 3)


def spaced(rows: Rows, n: int = ROWS) -> Rows:
    """At most ``n`` of the calibration rows, evenly spaced over the set."""
    key, batch = next(iter(rows.items()))
    pick = np.unique(np.linspace(0, len(batch) - 1, min(n, len(batch))).round().astype(int))
    return {key: [batch[i] for i in pick]}


def choose_float_ops(model: bytes, build: Callable[..., bytes], rows: Rows, *, kept: list[str],
                     max_bytes: int | None = None) -> Choice:
    """The operators of ``model`` to keep float under static INT8 (see the module doc). ``build(float_scopes=...,
    only=None, int16=False)`` returns the quantized model: INT8 with ``float_scopes`` float, or only the scope ``only``
    quantized, or 16-bit activations; ``kept``: scopes float already (the recipe's own exceptions); ``max_bytes``: the
    walk stops before a model this large (an INT8 artifact stays smaller than the file it was made from)."""
    rows = spaced(rows)
    reference = outputs(model, rows)
    choice = Choice(rows=len(next(iter(rows.values()))))

    def score(**kw) -> float:
        return sqnr_db(reference, outputs(build(**kw), rows))

    def walk_score(scopes: list[str]) -> float | None:
        built = build(float_scopes=scopes)
        return None if max_bytes is not None and len(built) >= max_bytes else sqnr_db(reference, outputs(built, rows))

    choice.int8_sqnr_db = choice.chosen_sqnr_db = score(float_scopes=[])
    choice.int16_sqnr_db = score(int16=True)
    bar = min(choice.int16_sqnr_db - MARGIN_DB, GOOD_DB)
    if choice.int8_sqnr_db >= bar:
        return choice
    graph = {s: n - set(kept) for s, n in operator_scopes(model).items() if s not in kept}
    table = sorted(((score(only=s), s) for s in graph), key=lambda t: t[0])
    choice.most_sensitive = [{"op": s, "sqnr_db_alone": v} for v, s in table[:10]]
    best, chosen = choice.int8_sqnr_db, []
    limit = max(1, int(MAX_FLOAT_SHARE * len(graph)))
    for _, scope in table:
        # the operator and its neighbours: a tensor stays INT8 while any operator beside it is quantized
        unit = [s for s in (scope, *sorted(graph[scope])) if s not in chosen]
        if chosen and len(chosen) + len(unit) > limit:  # the first unit whatever its size
            break
        chosen += unit
        s = walk_score(chosen)
        if s is None:  # as large as the file it is made from: no further
            break
        if s > best:
            best, choice.float_ops = s, list(chosen)
        if s >= bar:
            break
    choice.chosen_sqnr_db, choice.met = best, best >= bar
    log.info("static INT8: %d operator(s) kept float (output SQNR %.1f dB; INT8 %.1f, 16-bit activations %.1f)",
             len(choice.float_ops), best, choice.int8_sqnr_db, choice.int16_sqnr_db)
    return choice
