"""Fine-tuning an image base: a Hugging Face image classifier or backbone (MobileNetV2, ViT, ResNet, ConvNeXt, ...),
a timm checkpoint or a ``torch.export`` program (:mod:`compress.stages.finetune.programs`) gets a new head for the
data's classes (or, with ``--task regression``, one output per target: :mod:`compress.stages.finetune.regression`) and
trains on the base's own preprocessing.

* **Inputs** are made once by the base's pinned preprocessing (:class:`compress.device.feeds.ImageFeeds`, what every
  later step runs); each training batch is moved by a random shift of up to ``shift`` of the side (no flips).
* **``--freeze N``** keeps the stem and the first N blocks as pretrained, in eval mode (their BatchNorm statistics
  and dropout too). A timm model's stem and blocks are timm's own (``group_matcher``: a ResNet's 4 stages,
  MobileNetV2's 7, a ViT's layers); a Hugging Face model's blocks are its largest ``ModuleList``/``Sequential``
  (MobileNetV2's 16 inverted residuals, a ViT's layers). N = all of them leaves the layers after the blocks (a CNN's
  last 1×1 convolution, a ViT's final norm) and the head to train; ``--freeze all`` trains the head alone.
* **LoRA** wraps the linear layers (a ViT's attention and MLP), the new head trained whole.
* **Forgetting** (``retain_data``: images of the base's own domain): the cosine and nearest-neighbour agreement of
  the fine-tuned backbone's pooled features with the base's, and, when the base is a trained classifier, how often
  the base's own head on the fine-tuned backbone still gives the base's answer (``head_agreement``).

A program base has its head cut off its graph and is written back as a program; its graph keeps the semantics it was
exported with (BatchNorm statistics fixed, no dropout), and has no blocks for ``--freeze N`` or LoRA
(:mod:`compress.stages.finetune.programs`). TorchScript and pickled modules are refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError
from compress.stages.finetune.config import IMAGE_TASKS, FinetuneConfig, Mode
from compress.tasks import TASKS, task_for

#: retained images measured at most (a deterministic sample beyond)
RETAIN_IMAGES = 500


class ImageBatches:
    """Preprocessed images in memory; ``collate`` gives a shifted training batch (every image is one length)."""

    def __init__(self, x, y, shift: float, seed: int) -> None:
        self.x, self.y, self.shift, self.seed = x, y, shift, seed
        self.lengths = np.zeros(len(x), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.x)

    def collate(self, idx: list[int]) -> dict[str, Any]:
        from compress.stages.transfer import shift_images

        # the shifts follow from the batch (its images, in the loop's seeded order), not from how many batches this
        # process has drawn: a resumed run draws what the uninterrupted one would have
        rng = np.random.default_rng([self.seed, *map(int, idx)])
        return {"pixel_values": shift_images(self.x[list(idx)], rng, self.shift), "labels": self.y[list(idx)]}


def image_label_names(train: Path) -> list[str]:
    """The data's classes: class folder names (sorted), an .npz's ids 0..k-1, or a table's label column."""
    from compress.data.images import load_image_dataset

    if train.is_dir() or train.suffix.lower() == ".npz":
        ds = load_image_dataset(train, require_labels=True)
        return ds.label_names or [str(i) for i in range(int(max(ds.labels)) + 1)]
    from compress.stages.finetune.common import label_names

    return label_names(train, False)


def logits_of(model, x):
    """A Hugging Face, timm or program classifier's logits for the pixel batch."""
    out = model(pixel_values=x) if hasattr(model, "config") and hasattr(model.config, "to_dict") else model(x)
    return out.logits if hasattr(out, "logits") else out


def features_of(model, x):
    """The backbone's pooled features (before the head): what transfer learning keeps or moves."""
    from compress.stages.finetune.programs import is_program_classifier

    if is_program_classifier(model):
        return model.features(x)
    if hasattr(model, "forward_features"):  # timm
        return model.forward_head(model.forward_features(x), pre_logits=True)
    out = model.base_model(pixel_values=x)
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    hidden = out.last_hidden_state
    return hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden[:, 0]


def _head_name(model) -> str:
    from compress.stages.finetune.programs import is_program_classifier

    if is_program_classifier(model):
        return "head"
    if hasattr(model, "forward_features"):
        return model.pretrained_cfg.get("classifier", "head")
    return "classifier"


def _build(base_teacher, names: list[str] | None, config: FinetuneConfig, outputs: int = 1, base_model=None):
    """The base with a new, seeded head for ``names`` (None: a regression head of ``outputs`` numbers); a program's
    ``base_model`` is its backbone with its own head (:func:`compress.stages.finetune.programs.program_base`)."""
    import torch

    info = base_teacher.info
    torch.manual_seed(config.seed)
    if info.kind == "program":
        from compress.stages.finetune.programs import with_new_head

        return with_new_head(base_model, outputs if names is None else len(names))
    if info.kind == "timm":
        model = copy.deepcopy(base_teacher.model)
        model.reset_classifier(outputs if names is None else len(names))
        return model
    from transformers import AutoModelForImageClassification

    head = dict(num_labels=outputs, problem_type="regression") if names is None else dict(
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    return AutoModelForImageClassification.from_pretrained(
        str(info.path), **head, ignore_mismatched_sizes=True, local_files_only=True, use_safetensors=not info.pickled)


def block_stack(model) -> tuple[list[Any], list[Any]]:
    """``(stem modules, blocks)`` of the base. timm says it itself (``group_matcher``: the stem, then the blocks its
    layer-wise learning rates use); a Hugging Face model's blocks are found by structure (its ``ModuleList`` or
    ``Sequential`` of two or more entries with the most parameters, the head excluded), its stem is every module
    whose parameters all come before the first block's."""
    from torch import nn

    if hasattr(model, "group_matcher"):
        return _timm_blocks(model)
    head = _head_name(model)
    stacks = [m for name, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2
              and not name.startswith(head)]
    if not stacks:
        raise ConfigError(f"{type(model).__name__} has no stack of blocks to freeze the first of",
                          hint="fine-tune it whole (leave --freeze out), or --freeze all")
    blocks = list(max(stacks, key=lambda m: sum(p.numel() for p in m.parameters())))
    first = next(iter(blocks[0].parameters()))
    stem_ids = set()
    for p in model.parameters():
        if p is first:
            break
        stem_ids.add(id(p))
    stem = [m for m in model.modules() if (own := list(m.parameters(recurse=False)))
            and all(id(p) in stem_ids for p in own)]
    return stem, blocks


def _timm_blocks(model) -> tuple[list[Any], list[Any]]:
    import re

    from timm.models import group_modules

    matcher = model.group_matcher(coarse=True)
    groups = list(group_modules(model, matcher).values())
    pattern = matcher["blocks"] if isinstance(matcher["blocks"], str) else matcher["blocks"][0][0]
    blocks = []
    for names in groups[1:]:
        found = {m.group(0) for n in names if (m := re.match(pattern, n))}
        if len(found) == 1 and all(re.match(pattern, n) for n in names):
            blocks.append(model.get_submodule(found.pop()))
    return [model.get_submodule(n) for n in groups[0]], blocks


def freeze(model, n: int | str) -> list[Any]:
    """Freeze the stem and the first ``n`` blocks (:func:`block_stack`), or with ``"all"`` every module but the
    head; returns the frozen modules (kept in eval mode while the rest trains; a program's graph has no mode)."""
    from compress.stages.finetune.programs import is_program_classifier

    if is_program_classifier(model):  # only "all" gets here (programs.program_base refuses N)
        model.backbone.requires_grad_(False)
        return []
    if n == "all":
        head = _head_name(model)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(head))
        return [m for name, m in model.named_modules() if name and not name.startswith(head)
                and (params := list(m.parameters())) and not any(p.requires_grad for p in params)]
    stem, blocks = block_stack(model)
    if n > len(blocks):
        raise ConfigError(f"--freeze {n}: the base has {len(blocks)} blocks",
                          hint=f"freeze at most {len(blocks)}, or --freeze all (only the head trains)")
    frozen = [*stem, *blocks[:n]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def _lora(model, config: FinetuneConfig):
    from compress._optional import require

    require("peft", "--lora-rank (LoRA adapters)")
    from peft import LoraConfig

    from compress.stages.finetune.common import wrap_lora

    return wrap_lora(model, config, LoraConfig(
        r=config.lora.rank, lora_alpha=config.lora.alpha or 2 * config.lora.rank, lora_dropout=config.lora.dropout,
        target_modules=config.lora.targets or "all-linear", modules_to_save=[_head_name(model)]))


def _encode(base_teacher, path, names: list[str] | None, require_labels: bool = True, limit: int | None = None):
    """The images of ``path`` through the base's preprocessing, and their class ids (``names`` None: their targets,
    read as numbers)."""
    import torch

    from compress.data.images import load_image_dataset
    from compress.stages.transfer import encode_all

    if names is None and require_labels:
        from compress.stages.finetune.regression import image_targets

        items, y = image_targets(path)
        return encode_all(base_teacher.encoder(), items), torch.as_tensor(y)
    label2id = {n: i for i, n in enumerate(names)} if names is not None else None
    ds = load_image_dataset(path, label2id=label2id, require_labels=require_labels)
    if limit is not None and len(ds) > limit:
        ds = ds.sample(limit, seed=0)
    x = encode_all(base_teacher.encoder(), ds.items)
    y = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64)) if ds.labels is not None else None
    return x, y


def _outputs(model, x):
    """The model's outputs (logits, or a regressor's numbers) on the pixel batches of ``x``, on the CPU."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return torch.cat([logits_of(model, x[i:i + 128].to(device)).float().cpu() for i in range(0, len(x), 128)])


def _accuracy(x, y):
    return lambda model: float((_outputs(model, x).argmax(-1) == y).float().mean())


def _mae(x, y):
    from compress.stages.finetune.regression import mae_metric

    return mae_metric(lambda model: _outputs(model, x).numpy(), y.numpy())


def image_forgetting(base, tuned, x) -> dict[str, Any]:
    """How much of the base the fine-tuned backbone kept on the images ``x`` (see the module doc)."""
    import torch

    from compress.tasks.embeddings import neighbour_agreement
    from compress.tasks.outputs import row_cosines

    def embed(model):
        with torch.inference_mode():
            return torch.cat([features_of(model, x[i:i + 64]).float() for i in range(0, len(x), 64)]).numpy()

    base.eval()
    a, b = embed(base), embed(tuned)
    out: dict[str, Any] = {"retain_rows": len(x), "embedding_cosine": float(row_cosines(b, a).mean()),
                           "neighbour_agreement": neighbour_agreement(a, b, k=1),
                           "neighbour_agreement_top3": neighbour_agreement(a, b, k=3)}
    if _is_trained_classifier(base):  # the base's own head on the fine-tuned backbone
        head = _head_name(base)
        swapped = copy.deepcopy(base)
        swapped.load_state_dict({k: v for k, v in tuned.state_dict().items() if not k.startswith(head)}, strict=False)
        swapped.eval()
        with torch.inference_mode():
            agree = [(logits_of(base, x[i:i + 64]).argmax(-1) == logits_of(swapped, x[i:i + 64]).argmax(-1)).float()
                     for i in range(0, len(x), 64)]
        out["head_agreement"] = float(torch.cat(agree).mean())
    return out


def _is_trained_classifier(model) -> bool:
    from compress.stages.finetune.programs import is_program_classifier

    if is_program_classifier(model):
        return True  # its own head, cut off its graph
    if hasattr(model, "forward_features"):
        return True  # a timm checkpoint is saved with its classifier
    archs = getattr(model.config, "architectures", None) or []
    return any(a.endswith("ForImageClassification") for a in archs)


def finetune_images(base: Path, train, output, config: FinetuneConfig, *, eval_data, retain_data, run: Path,
                    resume: bool, force: bool, progress):
    """Fine-tune an image base (see the module doc) and write the checkpoint through ``output``."""
    import torch.nn.functional as F

    from compress.stages.finetune.common import (
        FinetuneResult,
        check_labels,
        data_record,
        run_record,
        teacher_record,
        train_loop,
    )
    from compress.stages.finetune.regression import METRIC, check_targets, init_head_bias, mse, scores, target_record
    from compress.teachers.images import inspect_image_source, load_image_teacher

    if config.task not in IMAGE_TASKS:
        raise ConfigError(f"--task {config.task}: an image base is fine-tuned for "
                          f"{' or '.join(t.value for t in IMAGE_TASKS)}", hint="leave --task out")
    regression = TASKS[config.task].targets
    names = None if regression else config.labels or image_label_names(Path(train))
    if not regression:
        check_labels(names, False, train)
    if inspect_image_source(base, allow_pickle=config.allow_pickle).kind not in ("hf", "timm", "program"):  # runs no code
        raise ConfigError(f"{base} is a TorchScript or pickled module: code finetune cannot cut the head off",
                          hint="save it with torch.export.save as model.pt2 (a program base), or fine-tune the Hugging "
                          "Face or timm checkpoint it came from")
    base_teacher = load_image_teacher(base, allow_pickle=config.allow_pickle)
    base_model = base_teacher.model
    if base_teacher.info.kind == "program":  # its head cut off, or a one-line refusal, before any data is read
        from compress.stages.finetune.programs import program_base

        base_model = program_base(base_teacher, config)
    if progress:
        progress({"phase": "prepare", "label": "preprocessing images"})
    x, y = _encode(base_teacher, train, names)
    if regression:
        check_targets(y.numpy(), str(train))
    model = _build(base_teacher, names, config, outputs=y.shape[-1] if regression else 1, base_model=base_model)
    if regression:
        init_head_bias(model, y.numpy().mean(0))
    x_eval, y_eval = _encode(base_teacher, eval_data, names) if eval_data is not None else (None, None)
    evaluate = (_mae if regression else _accuracy)(x_eval, y_eval) if x_eval is not None else None
    retain = _encode(base_teacher, retain_data, names, require_labels=False, limit=RETAIN_IMAGES)[0] \
        if retain_data is not None else None
    frozen: list[Any] = []
    if config.mode is Mode.frozen:
        frozen = freeze(model, config.freeze)
    elif config.mode is Mode.lora:
        model = _lora(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    criterion = mse if regression else F.cross_entropy
    loop = train_loop(model, trainable, ImageBatches(x, y, config.images.shift, config.seed), config, run, progress,
                     lr=config.peak_lr(images=True),
                     loss=lambda m, b: criterion(logits_of(m, b["pixel_values"]), b["labels"]),
                     evaluate=evaluate, metric_name=METRIC if regression else "accuracy", frozen_modules=frozen,
                     higher_is_better=not regression)
    loop.start(resume, force)
    loop.train()
    final = loop.finish()
    if not loop.is_main:
        return FinetuneResult(*loop.follow(output))
    metrics = {**run_record(loop, config), "mode": str(config.mode), "frozen_layers": config.freeze,
               "labels": names, "base": str(base), "train_rows": len(x),
               "eval_rows": len(x_eval) if x_eval is not None else 0, "data": data_record(train, eval_data),
               "augmentation": f"random shift up to {config.images.shift:g} of the side, no flips"}
    if regression:
        metrics["targets"] = target_record(y.numpy())
        if x_eval is not None:
            metrics["eval_scores"] = scores(_outputs(final, x_eval).numpy(), y_eval.numpy())
    if retain is not None:
        metrics["forgetting"] = {**image_forgetting(base_model, final, retain), "data": str(retain_data)}
    with output.writing() as o:
        manifest = _write(final, base_teacher, names, o.dir, x[:2])
        metrics["teacher"] = teacher_record(output, o.dir)
        o.describe(manifest, input_digest=base_teacher.sha256, lineage=base_teacher.lineage()[1], metrics=metrics)
    loop.written()
    return FinetuneResult(output.artifact, metrics)


def _write(model, base_teacher, names: list[str] | None, directory: Path, probe):
    """Save the fine-tuned classifier (``names`` None: regressor) as its base's kind (Hugging Face, timm or a program)
    with the base's preprocessing, prove it reloads to the same outputs, and describe it (source: the base)."""
    from compress.teachers.images import load_image_teacher, prove_reload

    if base_teacher.info.kind == "program":
        from compress.stages.finetune.programs import save_program_classifier

        labels = names or [f"LABEL_{i}" for i in range(_outputs(model, probe).shape[-1])]
        save_program_classifier(model, base_teacher, labels, task_for("image", numbers=names is None), directory,
                                probe)
    elif base_teacher.info.kind == "timm":
        from compress.teachers.timm_hub import save_timm_model

        if names is None:  # a regressor: its outputs are named as Hugging Face names them
            names = [f"LABEL_{i}" for i in range(_outputs(model, probe).shape[-1])]
            save_timm_model(model, base_teacher.info.config, names, directory, regression=True)
        else:
            save_timm_model(model, base_teacher.info.config, names, directory)
    else:
        model.save_pretrained(str(directory), safe_serialization=True)
        base_teacher.save_inputs(directory)
    prove_reload(directory, lambda x: logits_of(model, x), probe, "fine-tuned model")
    written = load_image_teacher(directory)
    if written.info.preprocess != base_teacher.info.preprocess:  # what it was trained on is what later steps feed
        raise ConfigError(f"the written checkpoint reads images differently from its base ({written.info.preprocess} "
                          f"vs {base_teacher.info.preprocess})", hint="rerun with --debug and report it")
    manifest = written.manifest()
    manifest.preprocess = base_teacher.info.preprocess
    manifest.source = base_teacher.lineage()[0]
    return manifest
