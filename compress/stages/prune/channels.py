"""Structured pruning of image CNNs that really removes channels, on Torch-Pruning's DependencyGraph.

A convolution's output channels cannot go alone: its BatchNorm, a depthwise convolution that follows it, the
residual branch it is added to and the next layer's input channels must lose the same ones. Torch-Pruning
(DepGraph, Fang et al., CVPR 2023) finds those groups by tracing the model, scores each group (L2 magnitude of
every tensor in it) and removes the same fraction from every group (``--channels``, rounded to multiples of 8
channels so the kernels stay vector-friendly); the classifier's outputs are never touched. A hand-written graph
walk would have to know every architecture; DepGraph knows the operators.

The pruned network no longer matches any config, so it is kept as what it is: a ``torch.export`` program
(``model.pt2``, loaded without unpickling) in a pytorch artifact, with the teacher's labels and preprocessing in
its manifest. Recovery (``--recover-steps`` with ``--train``) is logit distillation from the unpruned teacher on
shifted images (:mod:`compress.stages.distill.images`). Whether it is faster is measured, not assumed: validate it
against a profile with ``min_speedup`` like anything else.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact, Format, Precision, library_versions
from compress.errors import ConfigError
from compress.progress import Progress
from compress.stages.prune.config import PRUNE, PruneConfig

log = logging.getLogger("compress.stages.prune")  # the verb's logger

#: PruneConfig settings a CNN does not use (text pruning's, and the ViT's heads/FFN/layers)
NOT_FOR_CNN = ("heads", "ffn", "drop_layers", "vocab", "sparsity", "max_length", "text_column", "label_column",
             "recovery.after_vocab", "recovery.teacher_cache", "budget", "importance.data", "recovery.teacher")
ROUND_TO = 8


def _logits_module(teacher, model):
    """``model`` as a module of one tensor returning logits: what Torch-Pruning traces, the trainer calls and
    torch.export saves."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return teacher.call(self.model, {teacher.input_names[0]: pixel_values})

    return Logits()


def _macs_params(model, example) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune_channels(teacher, out: Path, config: PruneConfig, *, train=None, eval_data=None, force: bool = False,
                   progress: Progress | None = None) -> Artifact:
    """Remove ``config.channels`` of every prunable convolution's channels (see the module doc)."""
    import torch

    from compress._optional import require
    from compress.stages.distill.images import (
        LogitTraining,
        check_image_options,
        image_data,
        predict,
        train_logits,
    )
    from compress.stages.transfer import encode_all
    from compress.teachers.programs import save_program

    check_image_options(config, "channel pruning of a CNN", NOT_FOR_CNN)
    output = PRUNE.output(out, config, force=force)
    if not config.channels:
        raise ConfigError("nothing to prune in an image model", hint="pass --channels FRACTION (e.g. 0.5)")
    if teacher.info.kind not in ("hf", "timm"):
        raise ConfigError(f"{teacher.path} is a torch.export program: its graph has no modules to remove channels from",
                          hint="prune the nn.Module before exporting it, or start from a Hugging Face checkpoint")
    tp = require("torch_pruning", "pruning the channels of an image model (pip install edgecompress[images])")
    if config.recovery.steps and train is None:
        raise ConfigError(f"--recover-steps {config.recovery.steps} needs --train data", hint="pass --train IMAGES")
    train_ds = image_data(train, teacher) if train is not None else None
    eval_ds = image_data(eval_data, teacher, require_labels=True) if eval_data is not None else None

    if progress:
        progress({"phase": "load", "label": "tracing the channel dependencies (Torch-Pruning DepGraph)"})
    name = teacher.input_names[0]
    model = copy.deepcopy(teacher.model).eval()
    example = teacher.example_inputs()
    n_labels = len(teacher.info.labels)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_labels]
    pruned = _logits_module(teacher, model)  # pruned in place by the step below
    macs_before, params_before = _macs_params(pruned, example[name])
    pruner = tp.pruner.MetaPruner(
        pruned, example[name], importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=config.channels, ignored_layers=ignored, round_to=ROUND_TO,
    )
    groups = sum(1 for _ in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                     root_module_types=pruner.root_module_types))
    pruner.step()
    macs_after, params_after = _macs_params(pruned, example[name])
    log.info("removed %.0f%% of the channels: %s -> %s parameters, %s -> %s MACs per image", config.channels * 100,
             f"{params_before:,}", f"{params_after:,}", f"{macs_before // 2:,}", f"{macs_after // 2:,}")
    metrics: dict[str, Any] = {
        "method": "Torch-Pruning DependencyGraph, group L2 magnitude, uniform ratio",
        "channels": config.channels, "round_to": ROUND_TO, "groups": groups,
        "parameters_before": params_before, "parameters_after": params_after,
        "macs_before": macs_before // 2, "macs_after": macs_after // 2,
        "torch_pruning": getattr(tp, "__version__", None),
    }

    encoder = teacher.encoder()
    x_eval = encode_all(encoder, eval_ds.inputs) if eval_ds is not None else None

    def accuracy(module) -> float:
        return float((predict(module, x_eval).argmax(-1) == np.asarray(eval_ds.labels)).mean())

    teacher_call = _logits_module(teacher, teacher.model)
    if eval_ds is not None:
        metrics["teacher_eval_accuracy"] = accuracy(teacher_call)
        metrics["eval_accuracy_before_recovery"] = accuracy(pruned.eval())
    if config.recovery.steps:
        if progress:
            progress({"phase": "load", "label": "recovering by distillation from the unpruned teacher"})
        rec = config.recovery
        settings = LogitTraining(steps=rec.steps, batch_size=rec.batch_size, lr=rec.lr, seed=config.seed,
                                 eval_every=max(1, rec.steps // 5))
        metrics["recovery"] = train_logits(
            pruned, pruned, teacher_call, encode_all(encoder, train_ds.inputs), train_ds.labels, x_eval,
            eval_ds.labels if eval_ds is not None else None, settings, progress=progress)
    pruned.eval()
    if eval_ds is not None:
        metrics["eval_accuracy"] = accuracy(pruned)
        metrics["retention"] = (metrics["eval_accuracy"] / metrics["teacher_eval_accuracy"]
                                if metrics["teacher_eval_accuracy"] else None)

    if progress:
        progress({"phase": "write", "label": "writing the pruned program"})
    with output.writing() as o:
        tmp = o.dir
        save_program(pruned, example[name], tmp / "model.pt2")
        manifest = teacher.manifest()
        manifest.format, manifest.precision, manifest.model_file = Format.pytorch, Precision.fp32, "model.pt2"
        manifest.files = {}
        manifest.versions = library_versions()
        metrics["size_bytes"] = metrics["size_bytes_after"] = (tmp / "model.pt2").stat().st_size
        metrics["parameter_ratio"] = params_before / params_after
        metrics["size_bytes_before"] = sum((teacher.path / w).stat().st_size for w in teacher.info.weights)
        manifest.source, prior = teacher.lineage()
        step = o.describe(manifest, input_digest=teacher.sha256, lineage=prior, metrics=metrics)
        o.draft()
        # proof: the written program loads (tensors only) and gives the pruned model's logits
        from compress.teachers.images import prove_reload

        step.metrics["reload_max_abs_diff"] = prove_reload(tmp, pruned, example[name], "program")
    log.info("wrote %s (%.1f MB, %s parameters)", out, metrics["size_bytes"] / 1e6, f"{params_after:,}")
    return output.artifact
