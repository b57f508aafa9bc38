"""The INT4 default of a generator's stateful OpenVINO IR, decided per model (:mod:`.bit_allocation`), as
:mod:`.onnx_mix` decides the ONNX artifact's.

The candidates (:data:`CANDIDATES`) are what NNCF and :func:`.openvino.hqq_groups` write and OpenVINO's CPU plugin
runs: ``int4-hqq`` (NNCF's INT4_ASYM groups of the block size, or of NNCF's adjusted group where the block does not
divide a matrix's input width, with HQQ's values: an FP16 scale and a float FP16 zero point a group) and ``int8``
(NNCF's INT8_ASYM: per output channel, a u8 zero point and an FP16 scale a row). A matrix no 4-bit group fits (NNCF
would write it at 8 bits, its backup mode) has ``int8`` only.

1. One FP32 run (a fresh state) over the built-in text (:func:`.bit_allocation.importance_ids`) with each body MatMul's
   activation input added as an output gives each input channel's mean square (the importance) and the reference
   logits. That run and every check of step 4 are runs of one compiled copy of the IR whose body weights are inputs
   (:class:`Probe`), fed from one FP32 buffer per matrix: the model is compiled once and never changed.
2. Each MatMul's output error under each candidate (:func:`.bit_allocation.relative_error`; the IR's weights are
   [N, K] behind ``transpose_b``, the helpers take [K, N]); each 4-bit candidate's codes are kept
   (:class:`.bit_allocation.Coded`, two to a byte) for the check.
3. and 4. :func:`.bit_allocation.choose`: the budget starts at Q4_K_M's bytes for the same matrices (their names read as the
   ONNX builder's for llama.cpp's roles), the check is the probe with each matrix's buffer holding its candidate's
   dequantized values (8 bits too: per channel, coarser than ONNX Runtime's 8-bit blocks; on SmolLM2's Q4_1 weights
   HQQ's 4-bit groups err less than it), run on the CPU plugin in f32 over the built-in text against the FP32
   logits.

:func:`plan` returns ``{MatMul: candidate name}`` and the step's record; :func:`.openvino.quantize_lm_openvino` writes
it with NNCF (INT4_ASYM with the 8-bit choices ignored, INT8_ASYM over those, HQQ's values into the u4 groups) and
:func:`check_written` reads each planned matrix's element type back from the IR.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import StageError
from compress.host.memory import release_freed
from compress.progress import Progress, start_phase
from compress.stages.quantize.lm import bit_allocation as ba
from compress.stages.quantize.lm.probe_buffers import Buffers, read_into

log = logging.getLogger(__name__)

#: what NNCF (+ HQQ's values, :func:`.openvino.hqq_groups`) writes and the CPU plugin runs, cheapest first
CANDIDATES = (ba.Candidate("int4-hqq", 4, "hqq", False), ba.Candidate("int8", 8, "rtn", False))
#: the element type each candidate is written in (what :func:`check_written` reads back)
WRITTEN = {"int4-hqq": "u4", "int8": "u8"}
#: the CPU plugin in float32 throughout, its KV cache too (its default would be u8): the check measures the weights
COMPILE = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
#: an OpenVINO (PyTorch-converted) MatMul's layer and role: ``__module.model.model.layers.3.self_attn.v_proj/...``
_ROLE = re.compile(r"layers\.(\d+)\.(self_attn|attn|mlp)\.(\w+?)(?:_proj)?/")
#: the smallest group NNCF may fall back to where the group size does not divide a layer's input width (stories260K's
#: MLP down projection is 172 wide: no group of 16 or more divides it, so that layer goes to the backup INT8_ASYM)
MIN_GROUP = 16
_NARROW_FIRST = ("u4", "i4", "u8", "i8", "f16", "bf16", "f32")  #: element types, narrowest first


def weight_type(node) -> str:
    """The narrowest element type among the constants a weight input (its producer ``node``) comes from (the
    quantized integers, not their scales), through Convert/Subtract/Multiply/Reshape/Transpose; "none" for an
    activation."""
    seen, found = [node], set()
    while seen:
        n = seen.pop()
        if n.get_type_name() == "Constant" and n.get_output_partial_shape(0).rank.get_length() >= 2:
            found.add(n.get_output_element_type(0).get_type_name())
        elif n.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
            seen += [i.get_source_output().get_node() for i in n.inputs()]
    rank = {t: i for i, t in enumerate(_NARROW_FIRST)}
    return min(found, key=lambda t: rank.get(t, len(rank))) if found else "none"


def nncf_group(k: int, block: int) -> int | None:
    """The group NNCF's INT4 gives a matrix of input width ``k`` with ``group_size=block`` and its ADJUST fall-back
    (:func:`.openvino.compress`): ``block`` where it divides ``k``, else the largest power of two dividing ``k`` when
    at least ``min(MIN_GROUP, block)``; None where none fits (NNCF's backup mode, 8 bits)."""
    if k % block == 0:
        return block
    adjusted = k & -k
    return adjusted if adjusted >= min(MIN_GROUP, block) else None


def _weight(op):
    """The MatMul ``op``'s weight: (its 2-D constant, directly or behind a Convert from FP16, and whether it is
    stored [N, K] (``transpose_b``)); None for a MatMul of two activations or another layout."""
    attrs = op.get_attributes()
    if attrs.get("transpose_a"):
        return None
    src = op.input(1).get_source_output().get_node()
    if src.get_type_name() == "Convert":
        src = src.input(0).get_source_output().get_node()
    if src.get_type_name() != "Constant" or src.get_output_partial_shape(0).rank.get_length() != 2:
        return None
    return src, bool(attrs.get("transpose_b"))


def body_matmuls(model, exclude: tuple[str, ...] = ()) -> list[str]:
    """The MatMuls of the FP32 IR the mix plans: those with a 2-D constant weight, but the LM head (the last of them,
    as :func:`.openvino.weight_types` reads it) and ``exclude`` (friendly names)."""
    found = [op.get_friendly_name() for op in model.get_ordered_ops()
             if op.get_type_name() == "MatMul" and _weight(op) is not None]
    return [n for n in found[:-1] if n not in set(exclude)]


def _builder_name(name: str) -> str:
    """An OpenVINO MatMul's name as the ONNX builder's (``/model/layers.3/attn/v_proj/MatMul``), which
    :func:`.bit_allocation.q4_k_m_bytes` reads llama.cpp's roles from; the name itself where it has no role."""
    m = _ROLE.search(name)
    return f"/model/layers.{m.group(1)}/{m.group(2)}/{m.group(3)}_proj/MatMul" if m else name


def _compile(model):
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", COMPILE)


def ir_constants(xml: Path) -> dict[str, tuple[Path, int, np.dtype]]:
    """Where each constant of the IR at ``xml`` lies in its ``.bin``: name -> (file, offset, dtype), for the float
    constants whose name is the IR's only one (those a probe reads itself)."""
    import xml.etree.ElementTree as ET

    dtypes = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16)}
    found: dict[str, tuple[Path, int, np.dtype] | None] = {}
    for _, el in ET.iterparse(str(xml)):
        if el.tag == "layer" and el.get("type") == "Const":
            data = el.find("data")
            name = el.get("name")
            if data is not None and data.get("element_type") in dtypes:
                where = (Path(xml).with_suffix(".bin"), int(data.get("offset")), dtypes[data.get("element_type")])
                found[name] = None if name in found else where
            el.clear()
    return {n: w for n, w in found.items() if w is not None}


class Probe:
    """One compiled copy of the FP32 IR in which each body MatMul's weight is an input (a Parameter) and each body
    MatMul's activation input an extra output: the reference run and every check are runs of it with other weights
    fed, not a copy of the model with constants replaced and compiled again per check. The weights' inputs have no
    fixed shape, so the compiled model keeps no memory of its own for them (a fixed shape costs one more copy of the
    weights: 1.8 GB at 0.6B). Each body weight has one FP32 buffer in the IR's layout (:class:`.probe_buffers.Buffers`),
    shared with the request (no copy on feeding): it holds the original or what a candidate makes of it, so a check
    adds no copy of the weights. ``source``: the IR's ``.xml``, from whose ``.bin`` the originals are read (not through
    the model's map of it: those pages would count too); without it they are copied from the model's constants.
    Close it (:meth:`close`) before the model is written: the compiled copy and the buffers go."""

    def __init__(self, model, names: list[str], ids: np.ndarray, source: Path | None = None):
        import openvino as ov
        from openvino import opset13 as ops

        from compress.device.shipped import decoder_feeds

        copy = model.clone()  # the constants' data shared with ``model``; the weights' inputs rewired on the copy alone
        cops = {op.get_friendly_name(): op for op in copy.get_ordered_ops()}
        sources = {n: cops[n].input(0).get_source_output() for n in names}
        keys = {n: (s.get_node().get_friendly_name(), s.get_index()) for n, s in sources.items()}
        unique = {keys[n]: sources[n] for n in names}
        added = dict(zip(unique, copy.add_outputs(list(unique.values())), strict=True))
        originals = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_friendly_name() in names}
        self.consts = {n: _weight(originals[n]) for n in names}  # name -> (the original constant, transposed)
        params, self.inputs = [], {}
        for i, n in enumerate(names):
            p = ops.parameter(ov.PartialShape([-1, -1]), ov.Type.f32, name=f"edgecompress_probe_w{i}")
            p.output(0).get_tensor().set_names({p.get_friendly_name()})
            cops[n].input(1).replace_source_output(p.output(0))
            params.append(p)
            self.inputs[n] = p.get_friendly_name()
        copy.add_parameters(params)
        copy.validate_nodes_and_infer_types()
        self.compiled = _compile(copy)
        del copy, cops, sources, unique
        self.ports = {n: self.compiled.output(added[keys[n]].get_any_name()) for n in names}
        self.logits_port = self.compiled.output("logits")
        self.request = self.compiled.create_infer_request()
        names_in = {n for p in self.compiled.inputs for n in p.get_names()}
        self.feed = {k: v for k, v in decoder_feeds({"input_ids": ids, "attention_mask": np.ones_like(ids)},
                                                    names_in).items() if k in names_in}
        release_freed()  # what compiling took for a while, given back before the buffers are made
        on_disk = ir_constants(source) if source is not None else {}
        self._where = {n: on_disk[c.get_friendly_name()] for n, (c, _) in self.consts.items()
                       if c.get_friendly_name() in on_disk}
        self.weights = Buffers({n: tuple(self.consts[n][0].get_output_shape(0)) for n in names}, self._read,
                               frozenset(n for n in names if self.consts[n][1]))
        self.buffers = self.weights.arrays

    def _read(self, name: str, buffer: np.ndarray) -> None:
        if name in self._where:
            read_into(buffer, *self._where[name])
        else:
            buffer[...] = self.consts[name][0].get_data()

    def original(self, name: str) -> np.ndarray:
        """The weight ``name``'s FP32 values as the helpers take them ([K, N]; a view of its buffer, the original put
        back where a check had replaced it: read it, do not write it)."""
        return self.weights.original(name)

    def load(self, replaced: dict[str, Any]) -> None:
        """Each buffer holds what ``replaced`` (MatMul -> a 4-bit candidate's :class:`.bit_allocation.Coded`, or an
        8-bit :class:`.bit_allocation.Candidate`) makes of it, every other the original."""
        self.weights.load(replaced)

    def _run(self) -> Any:
        """One run; its outputs are the request's own tensors (no copy: a 262,144-token vocabulary's logits over the
        built-in text are 0.4 GB), valid until the next run."""
        self.request.reset_state()
        return self.request.infer({**self.feed, **{self.inputs[n]: b for n, b in self.buffers.items()}},
                                  share_inputs=True, share_outputs=True)

    def reference(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each MatMul -> its input channels' mean square [K], and the FP32 logits [T, V]."""
        self.load({})
        result = self._run()
        importance = {}
        for name, port in self.ports.items():
            x = np.asarray(result[port]).astype(np.float64)
            importance[name] = (x.reshape(-1, x.shape[-1]) ** 2).mean(axis=0)
        return importance, np.asarray(result[self.logits_port])[0].copy()

    def logits(self, replaced: dict[str, Any]) -> np.ndarray:
        """The logits [T, V] with the weights ``replaced`` (see :meth:`load`) in place of the FP32 ones (the request's
        tensor: read it before the next run)."""
        self.load(replaced)
        return self._run()[self.logits_port][0]

    def close(self) -> None:
        self.request = self.compiled = self.buffers = self.weights = self.ports = self.logits_port = None
        release_freed()


def plan(model, body: list[str], *, block: int, ids: np.ndarray, kv_width: int | None,
         progress: Progress | None = None, source: Path | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """The candidate of each MatMul of ``body`` (friendly names) of the FP32 ``openvino.Model`` ``model`` (see the
    module's docstring; the model is left as it was); ``progress`` hears the matrices measured (counted) and a line
    per check; ``source``: the IR's ``.xml``, whose ``.bin`` the probe reads the originals from (:class:`Probe`).
    Returns (choice, record)."""
    t0 = time.monotonic()
    probe = Probe(model, body, ids, source)
    try:
        importance, ref = probe.reference()
        advance = start_phase(progress, ba.PHASE, len(body))
        errors, costs, shapes, codes = {}, {}, {}, {}
        by_name = {c.name: c for c in CANDIDATES}
        for name in body:
            w = probe.original(name)
            k, n = shapes[name] = w.shape
            group = nncf_group(k, block)
            errors[name], codes[name], costs[name] = {}, {}, {}
            for c in CANDIDATES:
                if c.bits < 8 and group is None:
                    continue  # no 4-bit group fits: NNCF would write it at 8 bits
                if c.bits < 8:  # kept as codes for the check (NNCF's groups are even: powers of two, 16 or more)
                    codes[name][c.name] = coded = ba.coded(w, c, group)
                    d = coded.decode()
                else:
                    d = ba.dequantized(w, c, k)  # 8 bits: one group a row (per channel)
                errors[name][c.name] = ba.relative_error(w, d, importance[name])
                del d
                # 8 bits: a u8 zero point a row beside the FP16 scale candidate_bytes counts
                costs[name][c.name] = ba.candidate_bytes(k, n, c, group if c.bits < 8 else k) + (
                    n if c.bits == 8 else 0)
            advance(1)
            if len(costs) % 16 == 0:  # the quantizers' scratch (HQQ's, in PyTorch's threads) handed back as it goes
                release_freed()
        reference = sum(ba.q4_k_m_bytes({_builder_name(n): s for n, s in shapes.items()}, kv_width=kv_width).values())

        def check(choice: dict[str, str]) -> dict[str, float]:
            replaced = {n: codes[n].get(c) or by_name[c] for n, c in choice.items()}
            return ba.agreement(ref, probe.logits(replaced))

        choice, record = ba.choose(errors, costs, reference, check, progress=progress, t0=t0)
    finally:
        probe.close()
    record |= {"block_size": block, "check_tokens": int(ids.shape[1]), "runtime": "openvino (CPU plugin, f32)",
               "seconds": round(time.monotonic() - t0, 1)}
    return choice, record


def check_written(model, choice: dict[str, str]) -> dict[str, int]:
    """Each planned MatMul's weight element type as the written ``model`` holds it (:func:`weight_type`)
    against the plan (:data:`WRITTEN`); the counts per type, or a :class:`StageError` naming a matrix written
    otherwise (nothing is written then)."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_friendly_name() in choice}
    made = {n: weight_type(ops[n].input(1).get_source_output().get_node()) for n in choice}
    wrong = {n: t for n, t in made.items() if t != WRITTEN[choice[n]]}
    if wrong:
        name = next(iter(wrong))
        raise StageError(f"NNCF wrote {len(wrong)} of the INT4 mix's {len(choice)} matrices otherwise than planned "
                         f"({name}: {wrong[name]}, planned {choice[name]})",
                         hint="report it; --int4-algorithm hqq writes every matrix in 4-bit groups")
    return ba.counts(made)
