"""The student: built from the teacher's layers (or a narrower config), or loaded from a checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from compress.errors import ConfigError
from compress.stages.common import layer_list
from compress.stages.distill.config import DistillConfig
from compress.tasks import TASKS

# ---------------------------------------------------------------------------------------------
# Student construction
# ---------------------------------------------------------------------------------------------


def evenly_spaced(n_teacher: int, n_student: int) -> list[int]:
    """``n_student`` teacher layers spread evenly, always ending with the last (6 -> 3: 1, 3, 5)."""
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_keep(keep: list[int], n_teacher: int) -> list[int]:
    bad = [i for i in keep if not 0 <= i < n_teacher]
    if bad:
        raise ConfigError(
            f"--keep-layers {','.join(map(str, keep))}: {bad[0]} is out of range; the teacher has "
            f"{n_teacher} layers (0..{n_teacher - 1})",
            hint=f"pick indices between 0 and {n_teacher - 1}",
        )
    if len(set(keep)) != len(keep):
        raise ConfigError(f"--keep-layers {','.join(map(str, keep))}: repeated layer", hint="list each layer once")
    return sorted(keep)


def check_keep_early(teacher_dir: Path | str, config: DistillConfig) -> None:
    """``--keep-layers`` against the depth the teacher's ``config.json`` names, before the teacher loads (importing
    transformers' model code and reading the weights: 17 s of a fresh interpreter's 23 s on a loaded 2-core machine
    for a tiny BERT, only to refuse an index). Where the file does not name it (no file, a nested config, another
    key), :func:`build_student` checks the loaded model as before."""
    import json

    keep = config.student.keep_layers
    if keep is None or config.student.layers is not None:  # both given: build_student says so
        return
    try:
        n_teacher = json.loads((Path(teacher_dir) / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(n_teacher, int) and not isinstance(n_teacher, bool) and n_teacher > 0:
        _check_keep(list(keep), n_teacher)


def build_student(teacher_model, config: DistillConfig) -> tuple[Any, dict[str, Any]]:
    """A student initialised from ``teacher_model`` per ``config``; returns (model, description)."""
    import torch

    n_teacher = getattr(teacher_model.config, "num_hidden_layers", None)
    if n_teacher is None:  # no layer stack (a CNN): a narrower config, initialised from the teacher's leading slices
        return _narrower(teacher_model, config)
    if config.student.layers is not None and config.student.keep_layers is not None:
        raise ConfigError("--layers and --keep-layers both given", hint="use one of them")
    cfg = copy.deepcopy(teacher_model.config)
    overrides = dict(config.student.config or {})
    for key in overrides:
        if not hasattr(cfg, key):
            raise ConfigError(
                f"student config: {type(cfg).__name__} has no setting {key!r}",
                hint="use transformers config names such as hidden_size, intermediate_size, num_hidden_layers",
            )
    n_student = overrides.get("num_hidden_layers", n_teacher)
    keep: list[int]
    if config.student.keep_layers is not None:
        keep = _check_keep(list(config.student.keep_layers), n_teacher)
        n_student = len(keep)
    elif config.student.layers is not None:
        if config.student.layers > n_teacher:
            raise ConfigError(
                f"--layers {config.student.layers}: the student would be deeper than the teacher ({n_teacher} layers)",
                hint=f"pick at most {n_teacher} layers",
            )
        n_student = config.student.layers
        keep = evenly_spaced(n_teacher, n_student)
    else:
        keep = evenly_spaced(n_teacher, n_student) if n_student <= n_teacher else list(range(n_student))
    overrides["num_hidden_layers"] = n_student
    for key, value in overrides.items():
        setattr(cfg, key, value)
    kinds = getattr(cfg, "layer_types", None)  # per-layer attention kinds (Qwen2, Gemma 3: sliding or full)
    if isinstance(kinds, list) and len(kinds) == n_teacher and "layer_types" not in (config.student.config or {}):
        cfg.layer_types = [kinds[i] for i in keep[:n_student]] if len(keep) >= n_student else kinds[:n_student]
    if getattr(cfg, "hidden_size", 1) % max(getattr(cfg, "num_attention_heads", 1), 1):
        raise ConfigError(
            f"student hidden_size {cfg.hidden_size} is not divisible by num_attention_heads {cfg.num_attention_heads}",
            hint="choose a head count that divides the hidden size",
        )
    torch.manual_seed(config.seed)
    student = type(teacher_model)(cfg)
    prefix, _ = layer_list(student)
    t_sd = teacher_model.state_dict()
    copied = sliced = fresh = 0
    new_sd = {}
    for name, param in student.state_dict().items():
        src = name
        if name.startswith(prefix + "."):
            idx, _, rest = name[len(prefix) + 1 :].partition(".")
            j = int(idx)
            src = f"{prefix}.{keep[j]}.{rest}" if j < len(keep) else name
        t = t_sd.get(src)
        if t is None or t.dim() != param.dim() or any(a < b for a, b in zip(t.shape, param.shape, strict=True)):
            new_sd[name] = param
            fresh += 1
        elif tuple(t.shape) == tuple(param.shape):
            new_sd[name] = t.clone()
            copied += 1
        else:  # narrower student: the leading slice of every dimension (consistent across tensors)
            new_sd[name] = t[tuple(slice(0, s) for s in param.shape)].clone()
            sliced += 1
    student.load_state_dict(new_sd)
    t_params, s_params = count_parameters(teacher_model), count_parameters(student)
    if s_params > t_params:
        raise ConfigError(
            f"the student ({s_params:,} parameters) is larger than the teacher ({t_params:,})",
            hint="distillation makes models smaller: use fewer layers or a narrower student config",
        )
    desc = {
        "init": "teacher layers" if not config.student.config else "teacher config overrides",
        "kept_teacher_layers": keep[:n_student],
        "config_overrides": config.student.config or {},
        "tensors_copied": copied,
        "tensors_sliced": sliced,
        "tensors_fresh": fresh,
    }
    return student, desc


def _narrower(teacher_model, config: DistillConfig) -> tuple[Any, dict[str, Any]]:
    """A student from the teacher's config with ``student_config`` overrides (e.g. a MobileNet's
    ``depth_multiplier``), each tensor initialised from the leading slice of the teacher's where it fits."""
    import torch

    if not config.student.config:
        raise ConfigError(f"{type(teacher_model).__name__} has no layer stack to take layers from",
                          hint="pass --student-config with a narrower setting, --student DIR, or prune it instead")
    cfg = copy.deepcopy(teacher_model.config)
    for key, value in config.student.config.items():
        if not hasattr(cfg, key):
            raise ConfigError(f"student config: {type(cfg).__name__} has no setting {key!r}",
                              hint="use the model's own config names (e.g. depth_multiplier)")
        setattr(cfg, key, value)
    torch.manual_seed(config.seed)
    student = type(teacher_model)(cfg)
    t_sd = teacher_model.state_dict()
    new_sd, copied = {}, 0
    for name, param in student.state_dict().items():
        t = t_sd.get(name)
        if t is not None and t.dim() == param.dim() and all(a >= b for a, b in zip(t.shape, param.shape, strict=True)):
            new_sd[name] = t[tuple(slice(0, s) for s in param.shape)].clone()
            copied += 1
        else:
            new_sd[name] = param
    student.load_state_dict(new_sd)
    if count_parameters(student) > count_parameters(teacher_model):
        raise ConfigError("the student is larger than the teacher", hint="pick a narrower --student-config")
    return student, {"init": "teacher config overrides", "config_overrides": config.student.config,
                     "tensors_sliced": copied, "tensors_fresh": len(new_sd) - copied}


def load_student(path: str, teacher, config: DistillConfig) -> tuple[Any, dict[str, Any], Any]:
    """An existing student checkpoint, its description, and its own tokenizer (None: it shares the teacher's).

    A student with another tokenizer (e.g. a vocabulary-pruned one) is distilled on output-level losses
    only: each model reads the text through its own tokenizer, and the teacher's logits (or pooled
    embedding) for a row are the target for the student's on the same row. Refused when labels differ.
    """
    from compress.teachers.load import load_teacher

    st = load_teacher(path, teacher.task, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    t_vocab, s_vocab = teacher.tokenizer.get_vocab(), st.tokenizer.get_vocab()
    probe = ["Distillation feeds both models the same token ids.", "naïve café-goers don't re-tweet 123 URLs!"]
    own_tokenizer = None
    if t_vocab != s_vocab or teacher.tokenizer(probe)["input_ids"] != st.tokenizer(probe)["input_ids"]:
        own_tokenizer = st.tokenizer
        if config.loss.hidden_weight or config.loss.attention_weight or config.loss.value_relation_weight:
            raise ConfigError(
                f"teacher and student tokenizers differ (vocabularies of {len(t_vocab):,} and {len(s_vocab):,} "
                "tokens, or different normalisation): intermediate-layer losses compare token positions, which "
                "then do not correspond",
                hint="distil on the outputs only (--hidden-weight 0 --attention-weight 0 --value-relation-weight 0),"
                " or pick a student that shares the teacher's tokenizer",
            )
    if TASKS[teacher.task].classifies and st.info.labels != teacher.info.labels:
        raise ConfigError(
            f"student labels {st.info.labels} differ from the teacher's {teacher.info.labels}",
            hint="use a student with the same id2label, or build one from the teacher with --layers",
        )
    t_params, s_params = count_parameters(teacher.model), count_parameters(st.model)
    if s_params > t_params:
        raise ConfigError(
            f"the student ({s_params:,} parameters) is larger than the teacher ({t_params:,})",
            hint="pick a smaller student",
        )
    desc = {"init": "checkpoint", "student_path": str(Path(path).resolve()),
            "own_tokenizer": own_tokenizer is not None}
    if own_tokenizer is not None:
        desc["student_vocab_size"] = len(s_vocab)
    return st.model, desc, own_tokenizer
