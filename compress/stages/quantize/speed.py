"""INT8 only where it pays: small GEMMs stay float, and (``speed_aware``) each layer group is timed quantized and in
float, side by side on the target's runtime and threads, and the groups INT8 makes slower return to float.

* **Small GEMMs** (``MatMul`` / ``Gemm`` with a constant weight whose K or N is under :data:`SMALL_GEMM`, the rule
  NVIDIA's ModelOpt applies): quantize/dequantize around them costs more than the integer product saves, and they
  hold a negligible share of the weights. Always left float, and reported.
* **Layer groups** come from the graph: the module a node was exported from (``pkg.torch.onnx.name_scopes``, e.g.
  ``features.8`` of a MobileNetV2, ``blocks.3`` of an EfficientNet), else the transformer block in its name
  (:func:`compress.stages.quantize.accuracy.group_of`).
* **The timing**: the INT8 model and one candidate per group (that group's weight nodes float, the rest as before)
  are loaded in ONNX Runtime with the target's threads and timed at batch 1 in alternating rounds
  (:func:`compress.host.measure.measure_interleaved`), so machine drift hits them alike. A group goes back to float when
  its candidate's median is at least :data:`MIN_GAIN` faster than the INT8 model's; the chosen set is then timed
  once more against the INT8 model and kept only if it is still faster by that margin (otherwise nothing moves:
  noise is not a reason to give up INT8's size).
"""

from __future__ import annotations

import ast
import logging
import time
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Precision, child_manifest, copy_tokenizer_files

log = logging.getLogger(__name__)

#: ModelOpt's rule: a GEMM whose K or N is below this stays float
SMALL_GEMM = 16
#: least relative p50 gain that moves a group to float (and that the final mix must keep)
MIN_GAIN = 0.03


def small_gemms(model) -> list[dict[str, Any]]:
    """``MatMul`` / ``Gemm`` nodes with a constant 2-D weight whose K or N is under :data:`SMALL_GEMM`."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        dims = [int(d) for d in inits[node.input[1]].dims]
        if len(dims) != 2:
            continue
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        k, n = (dims[1], dims[0]) if trans_b else (dims[0], dims[1])
        if min(k, n) < SMALL_GEMM:
            out.append({"node": node.name, "op_type": node.op_type, "K": k, "N": n,
                        "reason": f"K or N below {SMALL_GEMM} (ModelOpt's rule): the integer product saves less "
                                  "than the quantize/dequantize around it costs"})
    return out


def small_gemm_layers(model, layers: list, exclude: list[str]) -> dict[str, dict[str, Any]]:
    """The quantizable layers (by the name the quantizer knows them: a dynamic Gemm is ``<name>_MatMul``) that are
    small GEMMs, not already excluded, with their record; none when they are all the model has (then there is
    nothing else to quantize, and saying so is the quantizer's job)."""
    names = {lay.name.removesuffix("_MatMul") if lay.op_type == "Gemm" else lay.name: lay.name for lay in layers}
    small = {names[g["node"]]: g for g in small_gemms(model) if g["node"] in names and names[g["node"]] not in exclude}
    return small if len(small) < len(layers) else {}


def _scope_group(node) -> str | None:
    """The exporting module of a node, one level under the model (``features.8``, ``blocks.3``, ``classifier``)."""
    for prop in node.metadata_props:
        if prop.key != "pkg.torch.onnx.name_scopes":
            continue
        try:
            scopes = [s for s in ast.literal_eval(prop.value) if s]
        except (ValueError, SyntaxError):
            return None
        modules = scopes[:-1] or scopes  # the last scope is the op itself
        for s in modules:
            if s.rsplit(".", 1)[-1].isdigit():
                return s
        return modules[0] if modules else None
    return None


def node_group(node, name: str, op_type: str | None = None) -> str:
    """The layer group of the graph node ``node`` (None: not in the graph) named ``name``: its exporting module,
    else the transformer block in its name."""
    from compress.stages.quantize.accuracy import group_of

    return (_scope_group(node) if node is not None else None) or group_of(name, op_type or getattr(node, "op_type", ""))


def layer_groups(model, layers: list) -> dict[str, list[str]]:
    """Quantizable layers (``compress.stages.quantize.accuracy.Layer``) by group, in graph order."""
    nodes = {n.name: n for n in model.graph.node}
    groups: dict[str, list[str]] = {}
    for lay in layers:
        groups.setdefault(node_group(nodes.get(lay.name), lay.name, lay.op_type), []).append(lay.name)
    return groups


def time_models(models: dict[str, Artifact], items: list, threads: int | None, seconds: float) -> dict[str, float]:
    """p50 (ms) of each artifact in ONNX Runtime at batch 1, timed in alternating rounds on ``threads``; every one
    reads the first's preprocessing of ``items[:1]``."""
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings
    from compress.runtimes.ort_backend import OrtBackend

    settings = RuntimeSettings(threads=threads)
    backends = {}
    try:
        for key, art in models.items():
            backends[key] = OrtBackend(art, settings)
        batch = next(iter(backends.values())).encode(items[:1])  # every candidate reads the manifest's preprocessing
        stats = measure_interleaved({k: (lambda b=b: b.run(batch)) for k, b in backends.items()}, batch_size=1,
                                    min_runs=60, min_duration_s=seconds, warmup=10, rounds=12)
    finally:
        for b in backends.values():
            b.close()
    return {k: s.p50 for k, s in stats.items()}


def _time(models: dict[str, Path], manifest, items: list, threads: int | None, seconds: float) -> dict[str, float]:
    """:func:`time_models` of model files that share ``manifest``."""
    return time_models({k: Artifact(path.parent, manifest) for k, path in models.items()}, items, threads, seconds)


def speed_search(art: Artifact, q, layers: list, exclude: list[str], scratch: Path, items: list) -> dict[str, Any]:
    """The groups whose float version runs faster (see the module doc); returns the record, with ``float_nodes``."""
    config = q.config
    t0 = time.perf_counter()
    groups = {g: [n for n in names if n not in exclude] for g, names in layer_groups(q.model, layers).items()}
    groups = {g: names for g, names in groups.items() if names}
    manifest = child_manifest(art.manifest, precision=Precision.int8, model_file="model.onnx")

    def candidate(key: str, excluded: list[str]) -> Path:
        d = scratch / "speed" / key
        d.mkdir(parents=True, exist_ok=True)
        copy_tokenizer_files(art.path, d)
        q.write(d / "model.onnx", excluded)
        return d / "model.onnx"

    log.info("speed-aware: timing the INT8 model against %d candidates (one layer group float each) on %s threads",
             len(groups), config.speed.threads or "the runtime's default")
    models = {"int8": candidate("int8", exclude)}
    keys = {}
    for i, (group, names) in enumerate(groups.items()):
        keys[group] = f"g{i}"
        models[f"g{i}"] = candidate(f"g{i}", exclude + names)
    p50 = _time(models, manifest, items, config.speed.threads, config.speed.seconds)
    base = p50["int8"]
    rows = []
    chosen: list[str] = []
    for group, names in groups.items():
        gain = 1 - p50[keys[group]] / base
        slower = gain >= MIN_GAIN
        rows.append({"group": group, "nodes": len(names), "p50_ms_int8": round(base, 4),
                     "p50_ms_group_float": round(p50[keys[group]], 4), "gain": round(gain, 4),
                     "kept": "float" if slower else "int8"})
        if slower:
            chosen += names
    record: dict[str, Any] = {"threads": config.speed.threads, "min_gain": MIN_GAIN, "groups": rows, "float_nodes": []}
    if chosen:
        final = candidate("final", exclude + chosen)
        check = _time({"int8": models["int8"], "final": final}, manifest, items, config.speed.threads,
                      config.speed.seconds)
        gain = 1 - check["final"] / check["int8"]
        record["final"] = {"p50_ms_int8": round(check["int8"], 4), "p50_ms_mixed": round(check["final"], 4),
                           "gain": round(gain, 4)}
        if gain >= MIN_GAIN:
            record["float_nodes"] = chosen
        else:
            record["final"]["note"] = "the mix was not faster by the margin when timed again: everything stays INT8"
            for r in rows:
                r["kept"] = "int8"
    record["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("speed-aware: %d of %d groups back to float (%s)", sum(r["kept"] == "float" for r in rows), len(rows),
             ", ".join(r["group"] for r in rows if r["kept"] == "float") or "none")
    return record
