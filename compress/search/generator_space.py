"""What a generator search (a causal LM teacher, task text-generation) explores: the routes (runtime and format), each
route's INT4 algorithms, group sizes, and how far layers go back to 8 bits; one candidate's quantize settings.

Every choice is what the route's own quantizer takes (:mod:`compress.stages.quantize.lm_onnx`, ``lm_openvino``,
``lm_gguf``); nothing here quantizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the budgets a generator's validation measures that say how it generates (compress.validation.generation); a
#: generator search needs at least one of them
GENERATOR_BUDGETS = ("min_decode_tokens_per_s", "max_time_to_first_token_ms", "max_perplexity_increase",
                     "min_top1_agreement")
#: the budgets the held-out text judges (quality, not speed: the speed was measured on the ranking run)
QUALITY_BUDGETS = ("max_perplexity_increase", "min_top1_agreement")


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
                      "(docs/generators.md, GGUF)"),
}
#: every dimension of a generator search with every choice (what ``--space`` may name for a generator)
GENERATOR_SPACE: dict[str, list[Any]] = {
    "runtime": list(ROUTES),
    "algorithm": [a for r in ROUTES.values() for a in r.algorithms],
    "group": [32, 64, 128],
    "int8": [0.0, 0.05, 0.02],
}
#: algorithms that calibrate on text (--train)
CALIBRATED = ("gptq", "awq", "scale_estimation")


@dataclass(frozen=True)
class GenCandidate:
    """One INT4 generator: the route, its algorithm, its group size (None: the format's), the perplexity target that
    moves layers back to 8 bits (0.0: none)."""

    runtime: str
    algorithm: str
    group: int | None = None
    int8: float = 0.0

    @property
    def label(self) -> str:
        return (f"{self.runtime} {self.algorithm}" + (f" g{self.group}" if self.group else "")
                + (f" 8-bit until +{self.int8:.0%}" if self.int8 else ""))

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


def all_candidates(space: dict[str, dict[str, list[Any]]]) -> list[GenCandidate]:
    return [GenCandidate(rt, a, g, x) for rt, d in space.items() for a in d["algorithm"] for g in d["group"]
            for x in d["int8"]]


def suggest(trial, space: dict[str, dict[str, list[Any]]]) -> GenCandidate:
    """Draw a candidate in ``trial``: the runtime, then that runtime's own parameters (each runtime's choices are its
    own Optuna parameters, so a parameter's choices never change between trials)."""
    rt = trial.suggest_categorical("runtime", list(space))
    d = space[rt]
    alg = trial.suggest_categorical(f"{rt}_algorithm", d["algorithm"])
    group = trial.suggest_categorical(f"{rt}_group", d["group"]) if d["group"] != [None] else None
    int8 = trial.suggest_categorical(f"{rt}_int8", d["int8"]) if len(d["int8"]) > 1 else d["int8"][0]
    return GenCandidate(rt, alg, group, float(int8))


def params_of(c: GenCandidate, space: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """The trial parameters that draw ``c`` (to enqueue it)."""
    d = space[c.runtime]
    p: dict[str, Any] = {"runtime": c.runtime, f"{c.runtime}_algorithm": c.algorithm}
    if d["group"] != [None]:
        p[f"{c.runtime}_group"] = c.group
    if len(d["int8"]) > 1:
        p[f"{c.runtime}_int8"] = c.int8
    return p

