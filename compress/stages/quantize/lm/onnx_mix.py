"""The INT4 default of a generator's ONNX artifact, decided per model (:mod:`.bit_allocation`).

1. One FP32 run over the built-in text (:data:`.bit_allocation.IMPORTANCE_TEXT`) gives each MatMul's inputs' mean
   square (the importance) and the reference logits.
2. Each MatMul's output error under each candidate (:func:`.bit_allocation.relative_error`); each 4-bit candidate's
   codes are kept (:class:`.bit_allocation.Coded`, two to a byte: a quarter of its FP16 values) for step 4.
3. The budget starts at what llama.cpp's Q4_K_M spends on the same matrices; :func:`.bit_allocation.allocate` spends it.
4. The allocation is *checked*: the FP32 graph with each matrix's weights replaced by what its candidate makes of
   them (8 bits: the float weights, whose 8-bit error is ~1e-5 of the output) is run over the built-in text, and its
   KL to the FP32 logits and top-1 agreement read (:func:`.bit_allocation.choose`, the format-neutral search). Where
   they miss its bars, the budget grows (a quarter a step, up to every matrix at 8 bits), then the smallest budget
   that holds is found by bisection. One session serves every run (:class:`Probe`). The file is then no larger than
   Q4_K_M's where the model allows, and larger, said so, where 4 and 8 bits cannot hold the model within it (ONNX
   Runtime's MatMulNBits has no 5- or 6-bit kernel: a model whose weights carry llama.cpp's Q5_0 grid, Gemma 3's,
   needs more 8-bit matrices than Q4_K_M's bytes buy).

:func:`plan` returns ``{MatMul: candidate name}`` and the step's record; :func:`.onnx.weight_only` writes it.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.host.memory import release_freed
from compress.progress import Progress, note, start_phase
from compress.stages.quantize.lm import bit_allocation as ba
from compress.stages.quantize.lm.probe_buffers import Buffers, read_into

log = logging.getLogger(__name__)


def onnx_graph_only(path: Path):
    """The ModelProto at ``path`` without its external tensors' bytes (each still names where they are)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _external(path: Path) -> dict[str, tuple[Path, int, int, np.dtype, tuple[int, ...]]]:
    """Where each external tensor of the ONNX file at ``path`` lies: name -> (data file, offset, length, dtype, shape);
    empty where the file keeps its tensors inside."""
    from onnx import helper
    from onnx.external_data_helper import uses_external_data

    out = {}
    for t in onnx_graph_only(path).graph.initializer:
        if uses_external_data(t):
            info = {e.key: e.value for e in t.external_data}
            out[t.name] = (Path(path).parent / info["location"], int(info.get("offset", 0)), int(info["length"]),
                           np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)), tuple(t.dims))
    return out


def _mapped(where: dict[str, tuple[Path, int, int, np.dtype, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """The external tensors ``where`` (:func:`_external`) as read-only memory maps of their data file (no byte read
    until used; the pages are the file's, which the system can drop and read again)."""
    files: dict[Path, np.memmap] = {}
    out = {}
    for name, (file, offset, length, dtype, shape) in where.items():
        if file not in files:
            files[file] = np.memmap(file, dtype=np.uint8, mode="r")
        out[name] = files[file][offset:offset + length].view(dtype).reshape(shape)
    return out


def session(model, mapped: dict[str, np.ndarray] | None = None):
    """An ONNX Runtime CPU session of the ModelProto ``model`` (from memory under protobuf's 2 GB limit, else through a
    temporary copy saved with external data). ``mapped``: the model's external tensors (name -> a memory-mapped
    array), given to ONNX Runtime as they are (``add_external_initializers``) instead of read from its data file."""
    import tempfile

    import onnx
    import onnxruntime as ort

    if mapped is not None:
        opts = ort.SessionOptions()
        names = [t.name for t in model.graph.initializer if t.name in mapped]
        opts.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(mapped[n]) for n in names])
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    if model.ByteSize() < 1_800_000_000:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="lm-mix.") as tmp:
        onnx.save(copy.deepcopy(model), f"{tmp}/m.onnx", save_as_external_data=True, location="m.data")
        return ort.InferenceSession(f"{tmp}/m.onnx", providers=["CPUExecutionProvider"])


def feeds(sess, ids: np.ndarray, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A builder graph's feeds for the token window ``ids`` [1, T] from the empty cache ``state`` (position_ids too,
    where the graph takes them)."""
    inputs = {i.name for i in sess.get_inputs()}
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), **state}
    if "position_ids" in inputs:
        feed["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
    return {k: v for k, v in feed.items() if k in inputs}


class Probe:
    """One ONNX Runtime session of the FP32 ``model`` in which the body's weights (``weights``: MatMul -> its weight
    initializer) are graph inputs and the MatMuls' activations extra outputs: the reference run and every check are
    runs of it with other weights fed, not sessions of their own (a 270M model's session takes a minute to make on
    two busy cores). Each body weight has one FP32 buffer, fed to every run: it holds the original or what a
    candidate's codes decode to (:meth:`load`), so a check adds no copy of the weights. ``source``: the model's file,
    whose other weights are then handed to the session as memory maps of its data file and whose body weights are
    read from it into the buffers (again wherever a check puts an original back): no copy of the model is made
    (Gemma 3 270M's probe: a 3.9 GB peak, not 5.4)."""

    def __init__(self, model, weights: dict[str, str], ids: np.ndarray, state: dict[str, np.ndarray],
                 source: Path | None = None):
        from onnx import TensorProto, helper, numpy_helper

        where = _external(source) if source is not None else {}
        # the graph alone where the weights are on disk (each read through a memory map, never copied), else a copy
        m = onnx_graph_only(source) if where else copy.deepcopy(model)
        graph = m.graph
        nodes = {n.name: n for n in graph.node}
        self.acts = {name: nodes[name].input[0] for name in weights}
        names = set(weights.values())
        at = [i for i, t in enumerate(graph.initializer) if t.name in names]
        self._where = {n: where[n] for n in names if n in where}
        self._kept = {graph.initializer[i].name: numpy_helper.to_array(graph.initializer[i]) for i in at
                      if graph.initializer[i].name not in self._where}  # a model whose weights are inside
        shapes = {graph.initializer[i].name: tuple(graph.initializer[i].dims) for i in at}
        graph.input.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, list(d)) for n, d in shapes.items())
        for i in reversed(at):
            del graph.initializer[i]
        have = {o.name for o in graph.output}
        graph.output.extend(helper.make_tensor_value_info(a, TensorProto.FLOAT, None)
                            for a in sorted(set(self.acts.values())) if a not in have)
        self.sess = session(m, _mapped({n: w for n, w in where.items() if n not in names}) if where else None)
        del m
        release_freed()  # what making the session took for a while (a tied table's transpose folded), given back
        # before the buffers are: the session's peak and theirs do not add up
        self.weights = Buffers(shapes, self._read)
        self.buffers = self.weights.arrays
        self.state = state
        self.feed = feeds(self.sess, ids, state)

    def _read(self, name: str, buffer: np.ndarray) -> None:
        if name in self._where:
            file, offset, _, dtype, _ = self._where[name]
            if dtype != np.float32:
                raise ValueError(f"{name} is {dtype}, not float32: the probe reads FP32 weights")
            read_into(buffer, file, offset)
        else:
            buffer[...] = self._kept[name]

    def original(self, name: str) -> np.ndarray:
        """The weight ``name``'s FP32 values (its buffer, the original put back where a check had replaced it; read
        it, do not write it)."""
        return self.weights.original(name)

    def load(self, replaced: dict[str, ba.Coded]) -> None:
        """Each buffer holds what ``replaced`` (weight -> a candidate's codes) decodes to, every other the original."""
        self.weights.load(replaced)

    def reference(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each MatMul -> its input channels' mean square [K], and the FP32 logits [T, V]."""
        self.load({})
        acts = sorted(set(self.acts.values()))
        got = self.sess.run(["logits", *acts], {**self.feed, **self.buffers})
        values = dict(zip(acts, got[1:], strict=True))
        importance = {}
        for name, act in self.acts.items():
            x = values[act].astype(np.float64)
            importance[name] = (x.reshape(-1, x.shape[-1]) ** 2).mean(axis=0)
        return importance, got[0][0]

    def logits(self, replaced: dict[str, ba.Coded], ids: np.ndarray | None = None) -> np.ndarray:
        """The logits [T, V] with the weights ``replaced`` (name -> a candidate's codes) decoded in place of the FP32
        ones, over the built-in text (or the token window ``ids`` [1, T])."""
        self.load(replaced)
        feed = self.feed if ids is None else feeds(self.sess, ids, self.state)
        return self.sess.run(["logits"], {**feed, **self.buffers})[0][0]


@dataclass
class Measured:
    """What :func:`measure` found: the probe and the FP32 logits on the built-in text, each matrix's weight name,
    errors, costs and 4-bit candidates' codes, and Q4_K_M's bytes for the same matrices."""

    probe: Probe
    ref: np.ndarray
    weights: dict[str, str]
    errors: dict[str, dict[str, float]]
    costs: dict[str, dict[str, float]]
    codes: dict[str, dict[str, ba.Coded]]
    reference: float

    def replaced(self, choice: dict[str, str]) -> dict[str, ba.Coded]:
        """The weights ``choice`` replaces in the probe (the 4-bit matrices' codes; 8 bits: the float ones)."""
        return {self.weights[n]: self.codes[n][c] for n, c in choice.items() if c in self.codes[n]}


def measure(model, body: list[str], *, block: int, ids: np.ndarray, state: dict[str, np.ndarray],
            kv_width: int | None, candidates: tuple[ba.Candidate, ...] = ba.ONNX_CANDIDATES,
            progress: Progress | None = None, source: Path | None = None) -> Measured:
    """Steps 1-2 of the module's docstring for the MatMuls ``body`` of the FP32 ``model``; ``progress`` hears the
    matrices measured (a counted phase)."""
    nodes = {n.name: n for n in model.graph.node}
    weights = {name: nodes[name].input[1] for name in body}
    probe = Probe(model, weights, ids, state, source)
    importance, ref = probe.reference()
    advance = start_phase(progress, ba.PHASE, len(body))
    errors, costs, shapes, codes = {}, {}, {}, {}
    for name in body:
        w = probe.original(weights[name])
        k, n = shapes[name] = w.shape
        errors[name], codes[name] = {}, {}
        for c in candidates:
            if c.bits <= 4:  # kept as codes for the check (blocks are even: the config takes 16 to 256)
                codes[name][c.name] = coded = ba.coded(w, c, block)
                d = coded.decode()
            else:
                d = ba.dequantized(w, c, block)
            errors[name][c.name] = ba.relative_error(w, d, importance[name])
            del d
        costs[name] = {c.name: ba.candidate_bytes(k, n, c, block) for c in candidates}
        advance(1)
        if len(costs) % 16 == 0:  # the quantizers' scratch (HQQ's, in PyTorch's threads) handed back as it goes
            release_freed()
    reference = sum(ba.q4_k_m_bytes(shapes, kv_width=kv_width).values())
    return Measured(probe, ref, weights, errors, costs, codes, reference)


def plan(model, body: list[str], *, block: int, ids: np.ndarray, state: dict[str, np.ndarray],
         kv_width: int | None, candidates: tuple[ba.Candidate, ...] = ba.ONNX_CANDIDATES,
         progress: Progress | None = None, source: Path | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """The candidate of each MatMul of ``body`` (names) of the FP32 ``model`` (see the module's docstring);
    ``progress`` hears the matrices measured (a counted phase) and a line per check. Returns (choice, record)."""
    t0 = time.monotonic()
    m = measure(model, body, block=block, ids=ids, state=state, kv_width=kv_width, candidates=candidates,
                progress=progress, source=source)
    choice, record = ba.choose(m.errors, m.costs, m.reference, lambda c: ba.agreement(m.ref, m.probe.logits(
        m.replaced(c))), progress=progress, t0=t0)
    record |= {"block_size": block, "check_tokens": int(ids.shape[1]), "seconds": round(time.monotonic() - t0, 1)}
    return choice, record


def within_perplexity(model, body: list[str], *, block: int, ids: np.ndarray, state: dict[str, np.ndarray],
                      kv_width: int | None, windows: np.ndarray, budget: float, verify,
                      progress: Progress | None = None,
                      source: Path | None = None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Accuracy-aware INT4 (``--max-perplexity-increase``): the default's measurement and budget search, judged by
    the perplexity increase on ``windows`` (the user's text, llama-perplexity's rule) against ``budget``: each check
    a run of the one probe per window, so a 270M model's search is minutes, not a session per matrix. The choice is
    then written and measured for real (``verify(choice) -> (model, made, perplexity)``: the kernels' 8-bit
    activations and the 8-bit head are not in the probe); where the written model misses, the budget grows by
    :data:`.bit_allocation.GROWTH` and it is written again, up to every matrix at 8 bits. Returns (model, made,
    record: the budget search's, the FP32 perplexity, the target and each written model's figure)."""
    from compress.tasks.generation import GenerationStream

    t0 = time.monotonic()
    m = measure(model, body, block=block, ids=ids, state=state, kv_width=kv_width, progress=progress, source=source)

    def perplexity(choice: dict[str, str] | None) -> dict[str, float]:
        stream = GenerationStream()
        feed = {} if choice is None else m.replaced(choice)
        for w in windows:
            stream.update(m.probe.logits(feed, w[None])[None], w[None])
        return stream.result()

    base = perplexity(None)["perplexity"]
    top = sum(max(c.values()) for c in m.costs.values())
    advance = start_phase(progress, "accuracy-aware INT4: checks", ba.most_checks(m.reference, top))

    def check(choice: dict[str, str]) -> dict[str, float]:
        got = perplexity(choice)
        advance(1)
        return {"perplexity": got["perplexity"], "increase": got["perplexity"] / base - 1}

    def judge(got: dict[str, float]) -> tuple[bool, str]:
        return (got["increase"] <= budget, f"perplexity {got['increase']:+.2%} on {len(windows)} windows "
                f"(within +{budget:.1%})")

    choice, record = ba.choose(m.errors, m.costs, m.reference, check, progress=progress, t0=t0, judge=judge,
                               label="accuracy-aware INT4")
    written = []
    while True:
        model, made, ppl = verify(choice)
        spent = sum(m.costs[n][c] for n, c in choice.items())
        written.append({"body_bytes": round(spent), "perplexity": ppl, "increase": ppl / base - 1,
                        "counts": ba.counts(choice)})
        note(progress, f"accuracy-aware INT4: written with body {spent / 1e6:.1f} MB: perplexity "
             f"{ppl / base - 1:+.2%} (within +{budget:.1%}: {'holds' if ppl / base - 1 <= budget else 'misses'})",
             "int4-mix-check")
        grown = ba.allocate(m.errors, m.costs, spent * ba.GROWTH)
        if ppl / base - 1 <= budget or spent >= top or grown == choice:  # held, or more bytes buy nothing more
            break
        choice = grown
    record.update(ba.plan_record(choice, m.errors, m.costs, m.reference))
    record |= {"block_size": block, "budget": budget, "windows": len(windows), "fp32_perplexity": base,
               "written": written, "held": written[-1]["increase"] <= budget,
               "at_8_bits": sorted(n for n, c in choice.items() if c == "int8"),
               "seconds": round(time.monotonic() - t0, 1)}
    return model, made, record
