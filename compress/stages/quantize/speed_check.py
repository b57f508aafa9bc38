"""Is the INT8 model faster than its input? An INT8 model that runs slower than the FP32 one it came from is not a
result for a user compressing for speed, and ``validate -p host`` (``min_speedup``) would only say so later.

So INT8 quantization with ONNX Runtime times what it wrote against its input, side by side at batch 1 in alternating
rounds (:func:`compress.stages.quantize.speed.time_models`, the ``--speed-aware`` machinery), whenever the target can
be timed on this host: no ``--profile`` names it (the host is the target), or the profile's CPU is this host's kind
(x86 or not, VNNI or not) and its runtime ONNX Runtime on the CPU; a stream model (its state carried call to call)
is not timed. The ratio goes into the step's
``speed_vs_input`` and quantize's summary line. Below 1.0x it warns, naming what costs: the quantize/dequantize
boundaries around float layers (the fall-back's, by layer group) and around operators with no integer kernel
between INT8 ones (hard-swish, squeeze-excitation's multiply, ...), and what would pay. ``--strict`` refuses an INT8
model slower than its input beyond the timing's margin (:data:`SLOWER`), nothing written (``speed.refuse_slower``
says otherwise; a recipe, strict about collapses, leaves speed to its validate's ``min_speedup``).

Measured figures: docs/guides/quantize.md ("An INT8 slower than FP32").
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from compress.artifact import Artifact
from compress.errors import SlowerThanInput

log = logging.getLogger(__name__)

#: INT8 at under this ratio of its input's speed is slower beyond the side-by-side timing's margin (--strict refuses)
SLOWER = 0.97
#: least timed seconds per model (each model's share of the alternating rounds)
SECONDS = 0.5


def not_timed_here(config) -> str | None:
    """Why the INT8 model cannot be timed against its input on this host for ``config``'s target, or None."""
    from compress.host.cpu import has_vnni, is_x86

    t = config.target
    if t.runtime not in (None, "onnxruntime"):
        return f"the target runs {t.runtime}, not ONNX Runtime"
    if t.provider not in (None, "CPUExecutionProvider"):
        return f"the target's execution provider is {t.provider}"
    if t.x86 is not None and t.x86 != is_x86():
        return "the target's CPU is not this host's kind (x86 or not)"
    if t.vnni is not None and t.vnni != has_vnni():
        return "the target's CPU " + ("has" if t.vnni else "lacks") + " VNNI, this host's " + \
            ("lacks" if t.vnni else "has") + " it"
    return None


def float_islands(model_path: Path, quantized_types: tuple[str, ...], float_layers: list[str]) -> dict[str, Any]:
    """What puts quantize/dequantize boundaries into the INT8 graph at ``model_path``: the layers kept float
    (``float_layers``, by layer group) and the operators with no integer kernel that read a dequantized activation
    (by type), most first."""
    import onnx

    from compress.stages.quantize.speed import node_group

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    dequantized = {n.output[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] not in weights}
    between = Counter(n.op_type for n in model.graph.node
                      if n.op_type not in ("QuantizeLinear", "DequantizeLinear", *quantized_types)
                      and any(i in dequantized for i in n.input))
    nodes = {n.name: n for n in model.graph.node}
    groups = Counter(node_group(nodes.get(name), name) for name in float_layers)
    if set(groups) <= {"other"}:  # a file made elsewhere names no exporting module: its runs of float layers instead
        groups = Counter(_runs([n.name for n in model.graph.node if n.op_type in quantized_types], set(float_layers)))
    return {"float_layers": len(float_layers), "float_layer_groups": dict(groups.most_common()),
            "float_operators_between_int8": dict(between.most_common())}


def _runs(layers: list[str], floating: set[str]) -> dict[str, int]:
    """The runs of consecutive float layers among ``layers`` (graph order), named ``first..last``, with their
    lengths."""
    runs: dict[str, int] = {}
    start = None
    for i, name in enumerate([*layers, None]):
        if name is not None and name in floating:
            start = i if start is None else start
            continue
        if start is not None:
            first, last = layers[start], layers[i - 1]
            runs[first if first == last else f"{first}..{last}"] = i - start
            start = None
    return runs


def check_speed(art: Artifact, written: Artifact, items: list, config, float_layers: list[str],
                quantized_types: tuple[str, ...]) -> dict[str, Any]:
    """Time ``written`` (the INT8 artifact, staged) against its input ``art`` on this host (module doc); the record
    for the step's ``speed_vs_input``. Slower: a warning in the record (and the log); with ``config.strict`` slower
    than :data:`SLOWER`, :class:`~compress.errors.SlowerThanInput`."""
    from compress.stages.quantize.speed import time_models

    threads = config.speed.threads
    p50 = time_models({"input": art, "int8": written}, items, threads, SECONDS)
    ratio = p50["input"] / p50["int8"]
    record: dict[str, Any] = {"p50_ms_input": round(p50["input"], 4), "p50_ms_int8": round(p50["int8"], 4),
                              "speedup": round(ratio, 3), "threads": threads,
                              "timed": "batch 1, side by side in alternating rounds, on this host"}
    if ratio >= 1.0:
        return record
    islands = float_islands(written.path / written.manifest.model_file, quantized_types, float_layers)
    record["boundaries"] = islands
    said = slower_line(record)
    record["warning"] = said
    refuse = config.strict if config.speed.refuse_slower is None else config.speed.refuse_slower
    if refuse and ratio < SLOWER:
        raise SlowerThanInput(said + "; nothing written (--strict)", hint=remedies(islands))
    log.info("%s; %s", said, remedies(islands))  # the CLI prints it as a warning; the step records it
    return record


def slower_line(record: dict[str, Any]) -> str:
    """The one line saying the INT8 model runs slower than its input, and around what its boundaries are."""
    b = record["boundaries"]
    where = []
    if b["float_layers"]:
        groups = list(b["float_layer_groups"].items())
        where.append(f"{b['float_layers']} float layers ({', '.join(f'{g}: {n}' for g, n in groups[:3])}"
                     + (", ..." if len(groups) > 3 else "") + ")")
    if b["float_operators_between_int8"]:
        ops = list(b["float_operators_between_int8"].items())
        where.append(f"{sum(n for _, n in ops)} float operators between INT8 ones ("
                     + ", ".join(f"{t} x{n}" for t, n in ops[:4]) + (", ..." if len(ops) > 4 else "") + ")")
    return (f"the INT8 model runs at {record['speedup']:.2f}x its input's speed on this host ({record['p50_ms_int8']:.3g} "
            f"vs {record['p50_ms_input']:.3g} ms p50, batch 1, side by side): its quantize/dequantize boundaries, "
            f"around {' and '.join(where) or 'its layers'}, cost more than its INT8 layers save")


def remedies(boundaries: dict[str, Any]) -> str:
    """What would pay, for the boundaries found."""
    out = ["--speed-aware (times each layer group and returns those INT8 makes slower to float)"]
    if boundaries["float_layers"]:
        out.append("fewer float islands (--exclude-nodes first:N,last:M keeps whole runs float)")
    out.append("on x86, the OpenVINO route (export --format openvino, then quantize: NNCF's INT8 fuses more)")
    return "try " + ", or ".join(out)
