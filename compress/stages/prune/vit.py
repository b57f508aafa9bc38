"""Heads, FFN neurons and layers of a Vision Transformer, through the same code that prunes text encoders.

The importance scores are the text path's (:func:`compress.stages.prune.structured.importance_scores`: Taylor
importance of each head and FFN neuron under the classification loss, and the output change of skipping each
layer), fed with preprocessed image batches instead of tokenized text; heads are removed with transformers'
``prune_heads`` and FFN neurons by slicing both Linears, so the result is again a Hugging Face checkpoint that
reloads with ``from_pretrained`` (transformers 4 for heads, as for text). Recovery is logit distillation from the
unpruned model on shifted images (:mod:`compress.stages.distill.images`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from compress.artifact import Artifact, library_versions
from compress.errors import ConfigError
from compress.progress import Progress
from compress.stages.prune.config import PRUNE, PruneConfig

log = logging.getLogger("compress.stages.prune")  # the verb's logger

#: PruneConfig settings a ViT does not use (text-only, or the CNN's --channels)
NOT_FOR_VIT = ("vocab", "sparsity", "max_length", "text_column", "label_column", "recovery.after_vocab",
               "recovery.teacher_cache", "budget", "recovery.teacher", "channels")


def prune_vit(teacher, out: Path, config: PruneConfig, *, train=None, eval_data=None, force: bool = False,
              progress: Progress | None = None) -> Artifact:
    """Remove ``config.heads`` of the heads, ``config.ffn`` of the FFN neurons and ``config.drop_layers`` layers."""
    import torch

    from compress.stages.distill.images import (
        LogitTraining,
        check_image_options,
        hf_logits,
        image_data,
        predict,
        train_logits,
    )
    from compress.stages.distill.student import count_parameters
    from compress.stages.prune.structured import (
        _check_head_pruning,
        drop_layers,
        importance_scores,
        prune_heads_and_ffn,
    )
    from compress.stages.transfer import encode_all
    from compress.teachers.images import prove_reload, write_student

    check_image_options(config, "head/FFN pruning of an image model", NOT_FOR_VIT)
    output = PRUNE.output(out, config, force=force)
    if teacher.info.kind != "hf" or not hasattr(teacher.model.config, "num_hidden_layers"):
        raise ConfigError(f"{teacher.path} has no transformer layers (--heads/--ffn/--drop-layers prune ViTs)",
                          hint="for a CNN use --channels")
    if config.recovery.steps and train is None:
        raise ConfigError(f"--recover-steps {config.recovery.steps} needs --train data", hint="pass --train IMAGES")
    data = config.importance.data or train
    if data is None:
        raise ConfigError("importance scores need images", hint="pass --train IMAGES (or --data IMAGES)")
    model = copy.deepcopy(teacher.model).eval()
    if config.heads:
        _check_head_pruning(model)
    encoder = teacher.encoder()
    ds = image_data(data, teacher).sample(config.importance.samples, seed=config.seed)
    x = encode_all(encoder, ds.inputs)
    y = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64)) if ds.labels is not None else None
    name = teacher.input_names[0]

    def batches():
        for i in range(0, len(x), 16):
            yield {name: x[i:i + 16]}, (y[i:i + 16] if y is not None else None)

    if progress:
        progress({"phase": "load", "label": f"importance scores on {len(x)} images"})
    importance = importance_scores(model, None, list(range(len(x))), classification=True, seed=config.seed,
                                   batches=batches)
    params_before = count_parameters(model)
    metrics = {"parameters_before": params_before, "importance": {**importance.summary(), "data": str(data)}}
    if config.drop_layers:
        metrics["layers"] = drop_layers(model, importance, config.drop_layers)
        importance = importance.select_layers(metrics["layers"]["kept"])
    if config.heads or config.ffn:
        metrics.update(prune_heads_and_ffn(model, importance, heads=config.heads, ffn=config.ffn))
    metrics["parameters_after"] = count_parameters(model)
    metrics["parameter_ratio"] = params_before / metrics["parameters_after"]

    teacher_call = hf_logits(teacher.model)
    eval_ds = image_data(eval_data, teacher, require_labels=True) if eval_data is not None else None
    x_eval = encode_all(encoder, eval_ds.inputs) if eval_ds is not None else None
    if config.recovery.steps:
        train_ds = image_data(train, teacher)
        rec = config.recovery
        settings = LogitTraining(steps=rec.steps, batch_size=rec.batch_size, lr=rec.lr, seed=config.seed,
                                 eval_every=max(1, rec.steps // 5))
        metrics["recovery"] = train_logits(model, hf_logits(model), teacher_call, encode_all(encoder, train_ds.inputs),
                                           train_ds.labels, None, None, settings, progress=progress)
    model.eval()
    if eval_ds is not None:
        labels = np.asarray(eval_ds.labels)
        metrics["teacher_eval_accuracy"] = float((predict(teacher_call, x_eval).argmax(-1) == labels).mean())
        metrics["eval_accuracy"] = float((predict(hf_logits(model), x_eval).argmax(-1) == labels).mean())
        metrics["retention"] = (metrics["eval_accuracy"] / metrics["teacher_eval_accuracy"]
                                if metrics["teacher_eval_accuracy"] else None)
    with output.writing() as o:
        tmp = o.dir
        manifest = write_student(model, teacher, tmp)
        manifest.versions = library_versions()
        metrics["size_bytes_before"] = sum((teacher.path / w).stat().st_size for w in teacher.info.weights)
        metrics["size_bytes_after"] = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        step = o.describe(manifest, input_digest=teacher.sha256, lineage=teacher.lineage()[1], metrics=metrics)
        o.draft()
        # proof: the written checkpoint reloads (pruned heads and all) and gives the pruned model's logits
        step.metrics["reload_max_abs_diff"] = prove_reload(tmp, hf_logits(model), x[:4], "checkpoint")
    log.info("wrote %s (%s parameters)", out, f"{metrics['parameters_after']:,}")
    return output.artifact
