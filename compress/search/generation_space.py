"""What a generator search (a causal LM teacher, task text-generation) explores: the model's shape (layers kept, query
heads and FFN neurons removed, the vocabulary cut to the tokens the training text uses), the routes (runtime and
format), each route's INT4 algorithms, group sizes, and how far layers go back to 8 bits; one candidate's prune and
quantize settings.

Every quantization choice is what the route's own quantizer takes (:mod:`compress.stages.quantize.lm.onnx`,
``lm.openvino``, ``lm.gguf``); every shape is what ``prune`` of a causal LM makes (:mod:`compress.stages.prune.
lm.prune`: scored on the text, recovered by distillation from the unpruned model). Nothing here prunes or quantizes.
The shape's dimensions are searched only where ``--space`` names them: each shape costs a pruning and its recovery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Route:
    """One runtime's way to a generator artifact: the format exported once, what its INT4 quantizer takes."""

    runtime: str
    format: str
    algorithms: tuple[str, ...]
    groups: tuple[int, ...]  # () where the format fixes its blocks (GGUF's types)
    int8: tuple[float, ...]  # perplexity targets that move layers back to 8 bits (0.0: none)
    install: str  # how to get it, for the note when it is not here


#: the routes, in the order a search tries them. ONNX Runtime: ``MatMulNBitsQuantizer``'s algorithms, blocks of
#: 32/64/128, and accuracy-aware INT4 (its per-layer error table: MatMuls back to 8 bits, worst first, until the
#: perplexity increase on the ranking text is within the target). OpenVINO: NNCF's compress_weights (groups; ratio 1.0,
#: the one its quantizer takes). llama.cpp: its quantizer's INT4 types, whose blocks and mixes the type fixes (Q4_K_M
#: keeps some tensors at Q6_K).
ROUTES: dict[str, Route] = {
    "onnxruntime": Route("onnxruntime", "onnx", ("rtn", "hqq", "k_quant", "gptq"), (32, 64, 128), (0.0, 0.05, 0.02),
                         "pip install 'edgecompress[genai]' (ONNX Runtime GenAI's model builder)"),
    "openvino": Route("openvino", "openvino", ("rtn", "awq", "scale_estimation", "gptq"), (32, 64, 128), (0.0,),
                      "pip install 'edgecompress[openvino]' (OpenVINO and NNCF)"),
    "llamacpp": Route("llamacpp", "gguf", ("q4_0", "q4_k_s", "q4_k_m"), (), (0.0,),
                      "pip install 'edgecompress[llamacpp]' and a llama.cpp source tree in EDGECOMPRESS_LLAMA_CPP "
                      "(docs/guides/lm.md, GGUF)"),
}
#: every dimension of a generator search with every choice (what ``--space`` may name for a generator)
GENERATOR_SPACE: dict[str, list[Any]] = {
    "runtime": list(ROUTES),
    "algorithm": [a for r in ROUTES.values() for a in r.algorithms],
    "group": [32, 64, 128],
    "int8": [0.0, 0.05, 0.02],
    **{  # the model's shape: the same names and choices as an encoder search's (compress.search.space)
        "layers": [1, 2, 3, 4, 6, 8, 12, 16, 24],  # decoder layers kept (more than the teacher has: all of them)
        "heads": [0.0, 0.25, 0.5],  # share of every layer's query heads removed (prune --heads)
        "ffn": [0.0, 0.3, 0.5, 0.7],  # share of FFN neurons removed (prune --ffn)
        "vocab": [False, True],  # keep only the tokens --train uses (prune --vocab-corpus)
    },
}
#: the shape's dimensions, and the one choice each takes where ``--space`` does not name it (the teacher's shape)
SHAPE_DEFAULTS: dict[str, Any] = {"layers": None, "heads": 0.0, "ffn": 0.0, "vocab": False}
#: algorithms that calibrate on text (--train)
CALIBRATED = ("gptq", "awq", "scale_estimation")


@dataclass(frozen=True)
class GenCandidate:
    """One INT4 generator: the route, its algorithm, its group size (None: the format's), the perplexity target that
    moves layers back to 8 bits (0.0: none); and the model's shape (``layers`` kept, None: all; shares of query
    heads and FFN neurons removed; the vocabulary cut to the training text's)."""

    runtime: str
    algorithm: str
    group: int | None = None
    int8: float = 0.0
    layers: int | None = None
    heads: float = 0.0
    ffn: float = 0.0
    vocab: bool = False

    @property
    def shape_key(self) -> str | None:
        """The shape's name (a directory name: ``L4-h25-f30-v``), None for the teacher's own shape."""
        parts = [f"L{self.layers}" if self.layers else "", f"h{round(self.heads * 100)}" if self.heads else "",
                 f"f{round(self.ffn * 100)}" if self.ffn else "", "v" if self.vocab else ""]
        return "-".join(p for p in parts if p) or None

    @property
    def label(self) -> str:
        return ((f"[{self.shape_key}] " if self.shape_key else "") + f"{self.runtime} {self.algorithm}"
                + (f" g{self.group}" if self.group else "") + (f" 8-bit until +{self.int8:.0%}" if self.int8 else ""))

    def prune_settings(self, *, teacher_layers: int, train: str, recover_steps: int) -> dict[str, Any]:
        """The flat prune settings (``edgecompress prune``'s options) that make this candidate's shape from the
        teacher: layers dropped, heads and FFN removed, scored and recovered on ``train``, its vocabulary kept."""
        s: dict[str, Any] = {"recover_steps": recover_steps, "importance_data": train}
        if self.layers and self.layers < teacher_layers:
            s["drop_layers"] = teacher_layers - self.layers
        if self.heads:
            s["heads"] = self.heads
        if self.ffn:
            s["ffn"] = self.ffn
        if self.vocab:
            s["vocab_corpus"] = train
        return s

    @property
    def route(self) -> Route:
        return ROUTES[self.runtime]

    def quantize_settings(self, *, calibration: str, windows: int, data: str, samples: int) -> dict[str, Any]:
        """The flat quantize settings (``edgecompress quantize``'s options) that make this candidate from the route's
        FP32 export. ``calibration``: text for the data-aware algorithms (``windows`` windows); ``data``: text the
        accuracy-aware target is measured on (``samples`` windows)."""
        if self.runtime == "llamacpp":
            return {"precision": "int4", "gguf_type": self.algorithm}
        s: dict[str, Any] = {"precision": "int4", "int4_algorithm": self.algorithm, "block_size": self.group}
        if self.algorithm in CALIBRATED:
            s.update(calibration=calibration, calibration_samples=windows)
        if self.int8:
            s.update(max_perplexity_increase=self.int8, data=data, eval_samples=max(10, samples))
        return s


def space_for(asked: dict[str, list[Any]], routes: list[str]) -> dict[str, dict[str, list[Any]]]:
    """Per route, the choices left after ``asked`` (``--space``) narrows them: {runtime: {algorithm, group, int8}}.
    A route none of whose algorithms is asked drops out."""
    out = {}
    for name in routes:
        r = ROUTES[name]
        algs = [a for a in r.algorithms if a in asked.get("algorithm", r.algorithms)]
        groups = [g for g in r.groups if g in asked.get("group", r.groups)] or ([None] if not r.groups else [])
        int8 = [x for x in r.int8 if x in asked.get("int8", r.int8)] or [0.0]
        if algs and groups:
            out[name] = {"algorithm": algs, "group": groups, "int8": int8}
    return out


def shapes_for(asked: dict[str, list[Any]], teacher_layers: int) -> dict[str, list[Any]]:
    """The shape's choices: each dimension ``asked`` names (``layers`` up to the teacher's depth, which is "all"),
    the teacher's own shape otherwise."""
    out = {k: list(asked.get(k, [v])) for k, v in SHAPE_DEFAULTS.items()}
    if "layers" in asked:
        kept = sorted({None if n >= teacher_layers else n for n in asked["layers"]}, key=lambda n: n or teacher_layers)
        out["layers"] = kept[::-1]  # the deepest first: the plainest candidate
    return out


def generator_candidates(space: dict[str, dict[str, list[Any]]],
                   shapes: dict[str, list[Any]] | None = None) -> list[GenCandidate]:
    shapes = shapes or {k: [v] for k, v in SHAPE_DEFAULTS.items()}
    return [GenCandidate(rt, a, g, x, n, h, f, v) for n in shapes["layers"] for h in shapes["heads"]
            for f in shapes["ffn"] for v in shapes["vocab"] for rt, d in space.items() for a in d["algorithm"]
            for g in d["group"] for x in d["int8"]]


def suggest_generator(trial, space: dict[str, dict[str, list[Any]]], shapes: dict[str, list[Any]] | None = None) -> GenCandidate:
    """Draw a candidate in ``trial``: the shape (each dimension with a choice), the runtime, then that runtime's own
    parameters (each runtime's choices are its own Optuna parameters, so a parameter's choices never change between
    trials)."""
    shapes = shapes or {k: [v] for k, v in SHAPE_DEFAULTS.items()}
    shape = {k: trial.suggest_categorical(k, v) if len(v) > 1 else v[0] for k, v in shapes.items()}
    rt = trial.suggest_categorical("runtime", list(space))
    d = space[rt]
    alg = trial.suggest_categorical(f"{rt}_algorithm", d["algorithm"])
    group = trial.suggest_categorical(f"{rt}_group", d["group"]) if d["group"] != [None] else None
    int8 = trial.suggest_categorical(f"{rt}_int8", d["int8"]) if len(d["int8"]) > 1 else d["int8"][0]
    return GenCandidate(rt, alg, group, float(int8), **shape)


def params_of(c: GenCandidate, space: dict[str, dict[str, list[Any]]],
              shapes: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The trial parameters that draw ``c`` (to enqueue it)."""
    d = space[c.runtime]
    p: dict[str, Any] = {k: getattr(c, k) for k, v in (shapes or {}).items() if len(v) > 1}
    p |= {"runtime": c.runtime, f"{c.runtime}_algorithm": c.algorithm}
    if d["group"] != [None]:
        p[f"{c.runtime}_group"] = c.group
    if len(d["int8"]) > 1:
        p[f"{c.runtime}_int8"] = c.int8
    return p

