"""Fine-tuning a ``torch.export`` program base (``model.pt2`` with its ``model.yaml``): an image classifier saved as an
inference graph, its head inside.

* **The cut**: the program's module (a ``GraphModule``) must end in its classifier, a final ``linear`` (or a
  decomposed ``addmm``/``mm`` of a weight's transpose), after which only reshapes, copies or eval-mode dropout may come.
  :func:`cut_head` finds that op with ``torch.fx``, makes the graph return its input (the pooled features, ``[batch,
  D]``) and keeps the op's weight and bias as an ``nn.Linear``: the base's own head, which forgetting puts back on the
  fine-tuned backbone. A program whose output comes from anything else (a softmax, a convolution, several outputs) is
  refused in one line, naming what was found.
* **Training**: the backbone graph and a new seeded ``nn.Linear(D, k)`` (k classes, or k targets for regression)
  in one module. An exported graph cannot be put in train or eval mode: it keeps the semantics it was exported with
  (BatchNorm on its running statistics, which training does not update; no dropout). Its parameters still train
  (gradients flow through the graph's ATen ops); ``--freeze all`` trains the head alone (a linear probe). The graph has
  no blocks finetune can name, so ``--freeze N`` and LoRA are refused.
* **Written as a program**: ``torch.export`` of the backbone and the new head (the batch dimension dynamic, as the
  base's), saved with ``torch.export.save``, and a ``model.yaml`` with the new task and labels and the base's
  preprocessing, so the result loads as any image program teacher.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from compress.errors import ConfigError
from compress.stages.finetune.config import FinetuneConfig, Mode

#: ops a classifier's output may pass through after its final linear layer (reshapes, copies, eval-mode dropout)
PASSTHROUGH = frozenset({"clone", "contiguous", "view", "reshape", "_unsafe_view", "flatten", "squeeze", "alias",
                         "detach", "dropout", "lift_fresh_copy"})
#: ops that transpose a weight into ``addmm``/``mm``'s second operand (a decomposed linear layer)
TRANSPOSES = frozenset({"t", "permute", "transpose", "numpy_T"})
HINT = "export the classifier with its nn.Linear head last (softmax and other post-processing outside the program)"


def _op(node) -> str:
    """A graph node's operator name (``linear`` for ``aten.linear.default``)."""
    if node.op == "placeholder":
        return "the program's input"
    target = node.target
    return getattr(target, "_opname", None) or getattr(target, "__name__", None) or str(target)


def _attr(gm, node):
    """The tensor a ``get_attr`` node reads (a parameter, buffer or constant), else None."""
    import torch

    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    return functools.reduce(getattr, node.target.split("."), gm)


def _weight_of(gm, mat2):
    """The ``[out, in]`` weight whose transpose ``mat2`` (``addmm``/``mm``'s second operand) is, else None."""
    import torch

    if isinstance(mat2, torch.fx.Node) and mat2.op == "get_attr":
        return _attr(gm, mat2).t()
    if isinstance(mat2, torch.fx.Node) and _op(mat2) in TRANSPOSES and mat2.args:
        if _op(mat2) == "permute" and list(mat2.args[1]) != [1, 0]:
            return None
        return _attr(gm, mat2.args[0])
    return None


def _linear(gm, node) -> tuple[Any, Any, Any] | None:
    """``(input node, weight [out, in], bias or None)`` when ``node`` is a linear layer on stored weights."""
    op, args = _op(node), node.args
    if node.op != "call_function":
        return None
    if op == "linear":
        bias = args[2] if len(args) > 2 else node.kwargs.get("bias")
        weight, b = _attr(gm, args[1]), _attr(gm, bias)
        return None if weight is None or (bias is not None and b is None) else (args[0], weight, b)
    scaled = any(v != 1 for v in (*args[3:], *node.kwargs.values()))  # beta / alpha
    if op == "addmm" and not scaled:
        weight, b = _weight_of(gm, args[2]), _attr(gm, args[0])
        return None if weight is None or b is None or b.dim() != 1 else (args[1], weight, b)
    if op == "mm":
        weight = _weight_of(gm, args[1])
        return None if weight is None else (args[0], weight, None)
    return None


def cut_head(module, where: str):
    """``(backbone, head)``: a copy of the program's module that returns the input of its final linear layer (the
    pooled features), and that layer as an ``nn.Linear`` with its weight and bias (see the module doc)."""
    import torch
    from torch.utils._pytree import tree_leaves

    gm = copy.deepcopy(module)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    leaves = [a for a in tree_leaves(out.args[0]) if isinstance(a, torch.fx.Node)]
    if len(leaves) != 1:
        raise ConfigError(f"{where}: the program returns {len(leaves)} outputs; finetune replaces the head of a "
                          "classifier that returns its logits alone", hint=HINT)
    node = leaves[0]
    while node.op == "call_function" and _op(node) in PASSTHROUGH and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    found = _linear(gm, node)
    if found is None:
        raise ConfigError(f"{where}: the program's output comes from {_op(node)} (node {node.name}), not a final "
                          "linear layer: it has no head finetune can replace", hint=HINT)
    features, weight, bias = found
    val = features.meta.get("val") if isinstance(features, torch.fx.Node) else None
    if not isinstance(features, torch.fx.Node) or (val is not None and val.dim() != 2):
        shape = list(val.shape) if val is not None else "?"
        raise ConfigError(f"{where}: the final linear layer reads a {shape} tensor, not pooled features [batch, D]",
                          hint="finetune replaces a head on pooled features; " + HINT)
    out.args = (tuple(features if a is leaves[0] else a for a in out.args[0]),)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight.detach())
        if bias is not None:
            head.bias.copy_(bias.detach())
    return gm, head


@functools.cache
def _classifier_class():
    from torch import nn

    class ProgramClassifier(nn.Module):
        """A program's backbone graph (its head cut off) and a linear head. ``train(mode)`` sets the head's mode only:
        an exported graph refuses it, and keeps the semantics it was exported with (see the module doc)."""

        def __init__(self, backbone, head) -> None:
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, x):
            return self.head(self.backbone(x))

        def features(self, x):
            return self.backbone(x)

        def train(self, mode: bool = True):
            self.training = mode
            self.head.train(mode)
            return self

    return ProgramClassifier


def is_program_classifier(model) -> bool:
    """Is ``model`` a program's backbone with a head (:func:`program_base`, :func:`with_new_head`)?"""
    return isinstance(model, _classifier_class())


def program_base(base_teacher, config: FinetuneConfig):
    """The program base as its backbone and its own head, after the one-line refusals (a fixed batch, ``--freeze N``,
    LoRA), before any data is read."""
    where = str(base_teacher.info.path)
    if config.mode is Mode.lora or (config.mode is Mode.frozen and config.freeze != "all"):
        what = f"--freeze {config.freeze}" if config.mode is Mode.frozen else "--lora-rank"
        raise ConfigError(f"{what}: {where} is a torch.export program, a graph with no blocks or layers finetune can "
                          "name", hint="fine-tune it whole (leave the option out) or --freeze all (a linear probe)")
    batch = base_teacher.info.inputs[0].shape[0] if base_teacher.info.inputs else None
    if not isinstance(batch, str):
        raise ConfigError(f"{where}: the program takes a fixed batch of {batch}; training feeds batches of "
                          f"{config.training.batch_size}",
                          hint="export it again with a dynamic batch: torch.export.export("
                          "model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))")
    return _classifier_class()(*cut_head(base_teacher.model, where)).eval()


def with_new_head(base, outputs: int):
    """A copy of the program base (:func:`program_base`) with a new ``nn.Linear`` of ``outputs`` (seeded by the
    caller), every parameter of the backbone trainable."""
    import torch

    model = copy.deepcopy(base)
    model.head = torch.nn.Linear(base.head.in_features, outputs)
    model.backbone.requires_grad_(True)
    return model.train()


def save_program_classifier(model, base_teacher, labels: list[str], task, directory: Path, probe) -> None:
    """Write ``model`` as the base's kind: ``model.pt2`` (``torch.export``, batch dynamic, eval semantics) and a
    ``model.yaml`` with ``task``, ``labels`` and the base's preprocessing."""
    import torch
    import yaml

    from compress.teachers.images import PROGRAM_CONFIG, PROGRAM_FILE
    from compress.teachers.programs import program_inputs

    model.eval()
    program = torch.export.export(model, (probe,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    batch = program_inputs(program)[0].shape[0]
    if not isinstance(batch, str) or batch.isdigit():
        raise ConfigError(f"the fine-tuned program's batch came out fixed ({batch})",
                          hint="rerun with --debug and report it; no artifact was written")
    torch.export.save(program, str(Path(directory) / PROGRAM_FILE))
    meta = {"task": str(task), "labels": [str(n) for n in labels],
            "preprocess": base_teacher.info.preprocess.model_dump(mode="json", exclude={"kind"}),
            "architecture": base_teacher.info.architecture}
    (Path(directory) / PROGRAM_CONFIG).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
