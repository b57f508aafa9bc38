"""A forward-pass teacher's search space (:class:`compress.search.encoder.EncoderSpace` reads it): what a candidate
is, how Optuna samples one, the recipe that builds it, and its roofline.

A candidate of a text (BERT-family) teacher is a student depth and width, head and FFN pruning levels, vocabulary
pruning, a precision (INT8 dynamic with INT8 or INT4 embeddings, INT8 static, INT4), a runtime (ONNX Runtime;
OpenVINO where the profile's device runs it; an ExecuTorch program, INT8 dynamic or static, on a phone's profile or
where ``--space`` asks for it) and a number of intra-op threads. A ViT's is a depth, head and FFN
pruning levels, static or dynamic INT8; a CNN's the share of its convolution channels pruned and static INT8. It
becomes a recipe (:mod:`compress.recipes`) whose step names are the same in every candidate, so two candidates that
share a step (the same student, pruned the same way) share its output in the search's store: no step is computed
twice.

Before anything is trained, :func:`roofline` gives the candidate's size and an optimistic latency from its shape
alone (parameter counts; MatMul, attention and elementwise costs at the profile's batch × sequence length, a ViT's
patches for its tokens; the profile's, or this machine's, peaks; a CNN's size from its checkpoint's parameters).
The search discards a candidate whose optimistic estimate cannot meet the budget, and tightens the estimate with
each candidate it measures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compress.stages.distill.config import DistillConfig
from compress.stages.export.config import ExportConfig
from compress.stages.prune.config import PruneConfig
from compress.stages.quantize.config import QuantizeConfig

#: the dimensions a text search explores, with their choices (``--space`` may narrow them)
TEXT_SPACE: dict[str, list[Any]] = {
    "layers": [1, 2, 3, 4, 6],  # student depth; the teacher's own depth keeps every layer (no distillation)
    "width": [1.0, 0.67, 0.5],  # hidden size as a share of the teacher's (student_config; heads of the same size)
    "heads": [0.0, 0.25, 0.5],  # share of attention heads removed (transformers 4)
    "ffn": [0.0, 0.3, 0.5, 0.7, 0.85],  # share of FFN neurons removed (0.85: fast students recovered from the teacher)
    "vocab": [False, True],  # keep only the tokens the training texts use
    # ONNX Runtime; int8-dynamic-emb4: INT8 MatMuls with an INT4 embedding table (most of a small model's size)
    "quant": ["int8-dynamic", "int8-dynamic-emb4", "int8-static", "int4"],
    "runtime": ["onnxruntime", "openvino", "executorch"],
    # ExecuTorch's INT8 (PT2E, lowered to XNNPACK): activations quantized per call, or calibrated
    "et_quant": ["int8-dynamic", "int8-static"],
    # intra-op threads: 0 is the profile's (one per core); 1 saves a small model the threads' hand-offs
    "threads": [0, 1],
}
#: a ViT teacher: depth (layers copied from the teacher), heads and FFN neurons; static INT8 (the image default) or
#: dynamic (a ViT's weights are MatMuls)
VIT_SPACE: dict[str, list[Any]] = {
    "layers": [1, 2, 3, 4, 6, 8, 12],
    "heads": [0.0, 0.25, 0.5],
    "ffn": [0.0, 0.3, 0.5, 0.7],
    "quant": ["int8-static", "int8-dynamic"],
    "runtime": ["onnxruntime", "openvino", "executorch"],
    "et_quant": ["int8-static", "int8-dynamic"],
    "threads": [0, 1],
}
#: a convolutional teacher: the share of every convolution's output channels removed (Torch-Pruning, with the
#: coupled layers); static INT8 (dynamic INT8 of a conv net is refused by quantize)
CNN_SPACE: dict[str, list[Any]] = {
    "channels": [0.0, 0.25, 0.5, 0.75],
    "quant": ["int8-static"],
    "runtime": ["onnxruntime", "openvino", "executorch"],
    "et_quant": ["int8-static"],  # XNNPACK's dynamic INT8 covers linear layers only: a conv net stays FP32
    "threads": [0, 1],
}

#: a model file (an adopted ONNX or OpenVINO IR): nothing to train, so precision, runtime and threads only; INT8
#: dynamic applies to a text model's file (image and array models quantize statically). No ExecuTorch: a program is
#: exported from PyTorch, which a model file is not
FILE_SPACE: dict[str, list[Any]] = {
    "quant": ["int8-static", "int8-dynamic"],
    "runtime": ["onnxruntime", "openvino"],
    "threads": [0, 1],
}


@dataclass(frozen=True)
class Kind:
    """What a kind of teacher searches, and how its candidates train. ``distill`` / ``prune`` are defaults the
    search's own settings override: images train at the rates benchmarks/vision/images.py uses; text keeps distill's."""

    space: dict[str, list[Any]]
    distill: dict[str, Any] = field(default_factory=dict)
    prune: dict[str, Any] = field(default_factory=dict)
    augments: bool = False  # full fidelity adds embedding-neighbour and joined copies of the training texts
    #: full fidelity keeps the mean of the weights over the second half of training (--full-average; measured on text)
    averages: bool = False
    #: full fidelity recovers a pruned student by distilling from the teacher (not from the unpruned student)
    recovers_from_teacher: bool = False
    counts_ops: bool = True  # the roofline counts a candidate's operations (latency and energy before training)


_IMAGE_RATES = {"distill": {"lr": 1e-3}, "prune": {"recover_lr": 1e-3}}
KINDS = {"text": Kind(TEXT_SPACE, augments=True, averages=True, recovers_from_teacher=True),
         "tokens": Kind(TEXT_SPACE, averages=True, recovers_from_teacher=True),  # no sentence augmentations
         "vit": Kind(VIT_SPACE, **_IMAGE_RATES), "cnn": Kind(CNN_SPACE, **_IMAGE_RATES, counts_ops=False),
         "file": Kind(FILE_SPACE, counts_ops=False)}
#: the dimensions that shape a candidate's model (the rest choose its precision, runtime and threads)
SHAPE_DIMS = ("layers", "width", "heads", "ffn", "channels", "vocab")
OPENVINO_QUANT = ["int8", "int8-weights"]  # NNCF post-training INT8, or INT8 weight compression only
#: how a candidate's label names its runtime (ONNX Runtime's candidates carry no prefix)
_RUNTIME_PREFIX = {"openvino": "ov-", "executorch": "et-"}


def quant_choices(runtime: str, space: dict[str, list[Any]]) -> tuple[str, list[Any]]:
    """The Optuna parameter a candidate's precision is drawn as on ``runtime``, and its choices (each runtime has
    its own: a parameter's choices must not change between trials)."""
    if runtime == "openvino":
        return "ov_quant", OPENVINO_QUANT
    if runtime == "executorch":
        return "et_quant", space.get("et_quant", ["int8-static"])
    return "quant", space["quant"]


@dataclass(frozen=True)
class Candidate:
    layers: int = 0  # 0: the teacher's depth (a CNN has no depth dimension)
    width: float = 1.0
    heads: float = 0.0
    ffn: float = 0.0
    vocab: bool = False
    quant: str = "int8-dynamic"
    runtime: str = "onnxruntime"
    threads: int = 0  # 0: the profile's
    channels: float = 0.0  # share of a CNN's convolution channels removed

    @property
    def label(self) -> str:
        parts = [f"L{self.layers}"] if self.layers else []
        if self.channels:
            parts.append(f"c{self.channels:g}")
        if self.width != 1.0:
            parts.append(f"w{self.width:g}")
        if self.heads:
            parts.append(f"h{self.heads:g}")
        if self.ffn:
            parts.append(f"f{self.ffn:g}")
        if self.vocab:
            parts.append("vocab")
        if not parts:
            parts.append("teacher")
        parts.append(_RUNTIME_PREFIX.get(self.runtime, "") + self.quant)
        if self.threads:
            parts.append(f"{self.threads} thread{'s' if self.threads > 1 else ''}")
        return " ".join(parts)

    def params(self) -> dict[str, Any]:
        return asdict(self)


_TRANSFORMER_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")


@dataclass(frozen=True)
class TeacherShape:
    """What the search needs from the teacher's config.json: its kind (text, tokens, vit, cnn), the transformer dimensions
    the roofline uses (a ViT's "vocabulary" is its patch embedding: ``patch_in`` inputs per patch, ``positions``
    tokens), how many tokens vocabulary pruning keeps, and a CNN's parameter count (its size estimate)."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    positions: int
    types: int
    labels: int
    vocab_kept: int | None = None
    kind: str = "text"
    patch_in: int = 0
    params: int = 0
    embeds: bool = False  #: a sentence encoder (no classification head): its students keep its width
    text: bool = False  #: a model file fed text (INT8 dynamic applies)

    @classmethod
    def read(cls, teacher: Path | str, vocab_kept: int | None = None) -> TeacherShape:
        from compress.teachers.model_files import is_model_file

        if is_model_file(teacher):
            return cls.of_file(Path(teacher))
        c = json.loads((Path(teacher) / "config.json").read_text(encoding="utf-8"))
        labels = len(c.get("id2label") or {}) or 2
        image = ((c.get("architectures") or [""])[0] or "").endswith("ForImageClassification")
        if image and not all(k in c for k in _TRANSFORMER_KEYS):
            return cls(0, 0, 0, 0, 0, 0, 0, labels, kind="cnn", params=_safetensors_params(Path(teacher)))
        if image:
            side, patch = c.get("image_size", 224), c.get("patch_size", 16)
            side, patch = (side[0] if isinstance(side, list) else side), (patch[0] if isinstance(patch, list) else patch)
            return cls(int(c["num_hidden_layers"]), int(c["hidden_size"]), int(c["num_attention_heads"]),
                       int(c["intermediate_size"]), 0, (int(side) // int(patch)) ** 2 + 1, 0, labels, kind="vit",
                       patch_in=int(c.get("num_channels", 3)) * int(patch) ** 2)
        arch = (c.get("architectures") or [""])[0] or ""
        tokens = arch.endswith("ForTokenClassification")
        return cls(int(c["num_hidden_layers"]), int(c["hidden_size"]), int(c["num_attention_heads"]),
                   int(c["intermediate_size"]), int(c["vocab_size"]), int(c.get("max_position_embeddings", 512)),
                   int(c.get("type_vocab_size", 2)), labels, vocab_kept, kind="tokens" if tokens else "text",
                   embeds=not (tokens or arch.endswith("ForSequenceClassification")))


    @classmethod
    def of_file(cls, path: Path) -> TeacherShape:
        """A model file: its parameter count (the size estimate) and whether it reads text."""
        from compress.teachers.model_files import load_model_file

        teacher = load_model_file(path)
        art = teacher.as_artifact()
        params = sum((art.path / n).stat().st_size for n in art.model_files()) // 4  # FP32 weights
        return cls(0, 0, 0, 0, 0, 0, 0, len(teacher.info.labels or []) or 1, kind="file", params=params,
                   text=teacher.info.preprocess.kind == "text")


def _safetensors_params(teacher: Path) -> int:
    """Parameters in a checkpoint's safetensors files, read from their headers (nothing is loaded)."""
    import math

    from safetensors import safe_open

    total = 0
    for f in sorted(teacher.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def suggest(trial, space: dict[str, list[Any]], shape: TeacherShape) -> Candidate:
    """One candidate from an Optuna trial (define-by-run: the quantization choices depend on the runtime). Only
    the dimensions of this kind of teacher's space are sampled; the others keep the candidate's defaults."""
    p = {dim: trial.suggest_categorical(dim, choices) for dim, choices in _shape_choices(space, shape).items()}
    p["runtime"] = trial.suggest_categorical("runtime", space["runtime"])
    p["quant"] = trial.suggest_categorical(*quant_choices(p["runtime"], space))
    p["threads"] = trial.suggest_categorical("threads", space["threads"])
    return Candidate(**p)


def _shape_choices(space: dict[str, list[Any]], shape: TeacherShape) -> dict[str, list[Any]]:
    """The choices of the space's shape dimensions (depths up to the teacher's), in :func:`suggest`'s order."""
    return {d: [n for n in space[d] if n <= shape.layers] if d == "layers" else space[d]
            for d in SHAPE_DIMS if d in space}


def all_candidates(space: dict[str, list[Any]], shape: TeacherShape) -> list[Candidate]:
    """Every candidate :func:`suggest` can return in ``space`` (the same define-by-run structure)."""
    import itertools

    dims = _shape_choices(space, shape)
    return [Candidate(**dict(zip(dims, combo, strict=True)), runtime=runtime, quant=quant, threads=threads)
            for combo in itertools.product(*dims.values()) for runtime in space["runtime"]
            for quant in quant_choices(runtime, space)[1] for threads in space["threads"]]


def from_params(params: dict[str, Any]) -> Candidate:
    p = dict(params)
    for name in ("ov_quant", "et_quant"):
        if name in p:
            p["quant"] = p.pop(name)
    return Candidate(**{k: v for k, v in p.items() if k in Candidate.__dataclass_fields__})


def trial_params(c: Candidate, space: dict[str, list[Any]]) -> dict[str, Any]:
    """The Optuna parameters of a candidate in ``space`` (for ``enqueue_trial``)."""
    p = {d: getattr(c, d) for d in SHAPE_DIMS if d in space}
    p["runtime"] = c.runtime
    p[quant_choices(c.runtime, space)[0]] = c.quant
    p["threads"] = c.threads
    return p


# -- the recipe -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fidelity:
    """How much training a candidate gets: short for ranking, full for the front."""

    name: str
    distill: dict[str, Any]  # distill options besides the student's shape (max_steps or epochs, ...)
    recover_steps: int  # prune recovery
    prune: dict[str, Any] = field(default_factory=dict)  # other prune options (recover_lr, ...)
    quantize: dict[str, Any] = field(default_factory=dict)  # ONNX Runtime INT8 options (qat_steps at full fidelity)


def _width_config(c: Candidate, shape: TeacherShape) -> dict[str, Any] | None:
    if c.width == 1.0:
        return None
    head_dim = shape.hidden // shape.heads
    heads = max(1, round(shape.heads * c.width))
    return {"hidden_size": heads * head_dim, "num_attention_heads": heads}


def candidate_steps(c: Candidate, shape: TeacherShape, fidelity: Fidelity) -> tuple[dict[str, Any], str]:
    """The recipe steps that build ``c`` and the name of the deployable step. Step names are the same in every
    candidate (student, pruned, onnx, model), so equal steps share one output in the store."""
    steps: dict[str, Any] = {}
    last = "teacher"
    student_cfg = _width_config(c, shape)
    if 0 < c.layers < shape.layers or student_cfg:
        opts: dict[str, Any] = {"layers": c.layers or shape.layers, **fidelity.distill}
        if student_cfg:
            opts["student_config"] = student_cfg
        steps["student"] = {"distill": DistillConfig.nest(opts)}  # settings version 2: flat options nested
        last = "student"
    if c.heads or c.ffn or c.vocab or c.channels:
        opts = {"channels": c.channels} if c.channels else {}
        if c.heads:
            opts["heads"] = c.heads
        if c.ffn:
            opts["ffn"] = c.ffn
        if c.vocab:
            opts["vocab_corpus"] = "train"
        opts["recover_steps"] = fidelity.recover_steps
        opts.update(fidelity.prune)
        steps["pruned"] = {"from": last, "prune": PruneConfig.nest(opts)}
        last = "pruned"
    if c.runtime == "executorch":  # PT2E INT8 is part of the export: the program is the deployable step
        mode = c.quant.split("-")[1]
        steps["model"] = {"from": last, "export": ExportConfig.nest(
            {"format": "executorch", "precision": "int8", "int8_mode": mode,
             **({"calibration": "calibration"} if mode == "static" else {})})}
        return steps, "model"
    steps["onnx"] = {"from": last, "export": {"format": "openvino"} if c.runtime == "openvino" else {}}
    if c.runtime == "openvino":
        q = {"weights_only": True} if c.quant == "int8-weights" else {"calibration_samples": 300}
    elif c.quant == "int4":
        q = {"precision": "int4"}
    elif c.quant == "int8-dynamic-emb4":
        q = {"mode": "dynamic", "embedding_precision": "int4", "block_size": EMB4_BLOCK}
    else:
        q = {"mode": c.quant.split("-")[1], **fidelity.quantize}
    steps["model"] = {"from": "onnx", "quantize": QuantizeConfig.nest(q)}
    return steps, "model"


# -- the roofline before training ---------------------------------------------------------------------------------

#: block of an INT4 embedding table (values along the hidden dimension per FP32 scale)
EMB4_BLOCK = 64
#: bytes per weight of a MatMul and of an embedding row element, by quantization
_MATMUL_BYTES = {"int8-dynamic": 1.0, "int8-dynamic-emb4": 1.0, "int8-static": 1.0, "int4": 0.5 + 2 / 128, "int8": 1.0,
                 "int8-weights": 1.0}
#: INT4 mode keeps the embedding table in INT8 by default, dynamic INT8 and NNCF quantize it to INT8, static INT8 (QDQ
#: on MatMul inputs) leaves the Gather's table in FP32; emb4: 4 bits and one FP32 scale per block
_EMBED_BYTES = {"int4": 1.0, "int8-static": 4.0, "int8-dynamic-emb4": 0.5 + 4 / EMB4_BLOCK}
#: operation energies (pJ) for the energy proxy: Horowitz, "Computing's energy problem" (ISSCC 2014), 45 nm
PJ_PER_FP32_OP, PJ_PER_INT8_OP, PJ_PER_DRAM_BYTE = 2.3, 0.115, 160.0


@dataclass
class Shape:
    """A candidate's dimensions after distillation and pruning."""

    layers: int
    hidden: int
    attn: int  # all heads' width (heads kept × head size)
    ffn: int
    vocab: int


def candidate_shape(c: Candidate, t: TeacherShape) -> Shape:
    head_dim = t.hidden // t.heads
    heads = max(1, round(t.heads * c.width)) if c.width != 1.0 else t.heads
    hidden = heads * head_dim
    kept_heads = max(1, heads - int(heads * c.heads)) if c.heads else heads
    ffn = t.ffn - int(t.ffn * c.ffn)
    vocab = t.vocab_kept if c.vocab and t.vocab_kept else t.vocab
    return Shape(c.layers or t.layers, hidden, kept_heads * head_dim, ffn, vocab)


def roofline(c: Candidate, t: TeacherShape, batch: int, seq: int, peaks) -> dict[str, float | None]:
    """Size (MB), optimistic latency (ms, :mod:`compress.estimates.roofline`'s roofline with its calibrated efficiencies) and
    an energy proxy (mJ) of one inference of ``c``, from its shape alone. No ``peaks``: no latency (None)."""
    from compress.estimates.cost import GraphCost, NodeCost
    from compress.estimates.roofline import DEFAULT_EFFICIENCY
    from compress.estimates.roofline import roofline as graph_roofline

    if t.kind in ("cnn", "file"):  # no analytic graph: the size from the parameters (a CNN's convs pruned at both ends)
        keep = 1.0 - c.channels
        return {"size_mb": t.params * keep * keep * _MATMUL_BYTES[c.quant] / 2**20, "p50_ms": None,
                "energy_mj": None, "gops": None}
    s = candidate_shape(c, t)
    mm_b = _MATMUL_BYTES[c.quant]
    # an ExecuTorch program's INT8 keeps its tables in INT8 whatever the activations (export: quantize_embeddings)
    emb_b = 1.0 if c.runtime == "executorch" else _EMBED_BYTES.get(c.quant, 1.0)
    if t.kind == "vit":  # tokens are the image's patches (and [CLS]); the patch embedding is a MatMul over pixels
        seq = t.positions
    tokens = batch * seq
    nodes: list[NodeCost] = []
    act = 4.0  # activations stay FP32 between operators

    def matmul(name: str, k: int, n: int, rows: int = tokens) -> None:
        w = k * n * mm_b
        nodes.append(NodeCost(name, "MatMulInteger", int8_ops=2.0 * rows * k * n,
                              bytes=w + act * rows * (k + n), weight_bytes=w))

    def elementwise(name: str, op: str, numel: int, per: float = 1.0) -> None:
        nodes.append(NodeCost(name, op, flops=per * numel, bytes=act * 2 * numel))

    small_b = 1.0 if c.quant == "int8-dynamic-emb4" else emb_b  # INT4 embeddings: positions/types stay INT8
    nodes.append(NodeCost("embeddings", "Gather", bytes=emb_b * s.hidden * 3 * tokens + act * tokens * s.hidden,
                          weight_bytes=(emb_b * s.vocab + small_b * (t.positions + t.types)) * s.hidden))
    if t.kind == "vit":
        matmul("patches", t.patch_in, s.hidden)
    elementwise("embeddings/norm", "LayerNormalization", tokens * s.hidden, 5)
    for i in range(s.layers):
        for proj in ("q", "k", "v"):
            matmul(f"l{i}/{proj}", s.hidden, s.attn)
        nodes.append(NodeCost(f"l{i}/scores", "MatMul", flops=2.0 * batch * seq * seq * s.attn,
                              bytes=act * (2 * tokens * s.attn + batch * seq * seq * (s.attn // 32 or 1))))
        elementwise(f"l{i}/softmax", "Softmax", batch * seq * seq * max(1, s.attn // 32), 5)
        nodes.append(NodeCost(f"l{i}/context", "MatMul", flops=2.0 * batch * seq * seq * s.attn,
                              bytes=act * 2 * tokens * s.attn))
        matmul(f"l{i}/out", s.attn, s.hidden)
        elementwise(f"l{i}/norm1", "LayerNormalization", tokens * s.hidden, 5)
        matmul(f"l{i}/up", s.hidden, s.ffn)
        elementwise(f"l{i}/gelu", "Gelu", tokens * s.ffn, 8)
        matmul(f"l{i}/down", s.ffn, s.hidden)
        elementwise(f"l{i}/norm2", "LayerNormalization", tokens * s.hidden, 5)
    if t.kind != "vit":  # ViT classifies its [CLS] token directly
        matmul("pooler", s.hidden, s.hidden, rows=batch)
    matmul("classifier", s.hidden, t.labels, rows=batch)
    cost = GraphCost("candidate", batch, seq, nodes)
    est = graph_roofline(cost, peaks, DEFAULT_EFFICIENCY) if peaks is not None else None
    norms = 4.0 * (2 * s.layers + 1) * 2 * s.hidden + 4.0 * s.layers * (3 * s.attn + s.ffn + 2 * s.hidden)
    size_mb = (cost.weight_bytes + norms) / 2**20
    energy_mj = (cost.flops * PJ_PER_FP32_OP + cost.int8_ops * PJ_PER_INT8_OP
                 + cost.weight_bytes * PJ_PER_DRAM_BYTE) * 1e-9
    return {"size_mb": size_mb, "p50_ms": est.latency_ms if est else None, "energy_mj": energy_mj, "gops": (cost.flops + cost.int8_ops) / 1e9}
