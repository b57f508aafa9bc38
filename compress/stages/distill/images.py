"""Distillation for any image classifier: the student learns the teacher's logits on an augmented transfer set.

One loss on the one training loop (:class:`compress.stages.training.TrainLoop`) serves ``distill`` (a student with
fewer ViT layers copied from the teacher, a narrower config, or the user's own checkpoint or ``.pt2`` program) and
``prune``'s recovery of a channel-pruned CNN. Each step draws a
batch of transfer images, applies the same random shift to the teacher's and the student's input (up to an
eighth of the side, zeros filling in; no flips, which would change what a digit or a printed label means), and
minimises ``soft_weight · T² · KL(teacher_T ‖ student_T) + hard_weight · CE(labels)``. The teacher runs on the
augmented batch every step: an image teacher is cheap next to the student's backward pass.

Interrupted work resumes: every epoch the student's weights (safetensors) and the step count are written to the
run directory; ``resume`` continues from there (with a fresh optimizer at the schedule's learning rate).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.progress import Progress
from compress.stages.transfer import encode_all, shift_images

log = logging.getLogger("compress.stages.distill")  # the verb's logger


@dataclass
class LogitTraining:
    """Settings of the logit-distillation loop (a subset of ``DistillConfig``, shared with prune's recovery)."""

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 2.0
    soft_weight: float = 1.0
    hard_weight: float = 0.3
    shift: float = 0.125  # largest random shift, as a fraction of the input side
    seed: int = 42
    eval_every: int = 200





def predict(call: Callable[[Any], Any], x, batch_size: int = 256) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.cat([call(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]).numpy()


def hf_logits(model) -> Callable[[Any], Any]:
    """A Hugging Face image classifier as a function of the pixel batch: ``pixel_values`` in, logits out."""
    return lambda x: model(pixel_values=x).logits


def train_logits(student, student_call: Callable[[Any], Any], teacher_call: Callable[[Any], Any], x_train, y_train,
                 x_eval, y_eval, settings: LogitTraining, *, run_dir: Path | None = None, resume: bool = False,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Train ``student`` in place on the teacher's logits, on the one training loop
    (:class:`compress.stages.training.TrainLoop`); returns the training record (eval accuracy and agreement with the
    teacher on ``x_eval`` when given, best weights kept)."""
    import torch
    import torch.nn.functional as F

    from compress.stages.training import Cadence, TrainLoop

    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    start = 0
    state = run_dir / "state.json" if run_dir is not None else None
    weights = run_dir / "student.safetensors" if run_dir is not None else None
    if resume and state is not None and state.is_file() and weights.is_file():
        from safetensors.torch import load_file

        student.load_state_dict(load_file(str(weights)))
        start = int(json.loads(state.read_text())["step"])
        rng = np.random.default_rng(settings.seed + start)
        log.info("resuming from step %d (%s)", start, run_dir)
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    other = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=settings.lr)
    total = settings.steps
    warm = max(1, total // 20)

    def lr_at(step: int) -> float:
        return settings.lr * (step + 1) / warm if step < warm else settings.lr * 0.5 * (
            1 + np.cos(np.pi * (step - warm) / max(1, total - warm)))

    teacher_eval = predict(teacher_call, x_eval) if x_eval is not None else None
    best = {"step": start, "accuracy": -1.0, "agreement": None}
    temp = settings.temperature
    y_train = torch.as_tensor(np.asarray(y_train, dtype=np.int64)) if y_train is not None else None
    t0 = time.perf_counter()
    last = {"loss": float("nan"), "agreement": None, "weights": None}

    def ten_steps(step: int) -> dict[str, Any] | None:
        """The report every ten steps."""
        if not step % 10 == 0:
            return None
        return {"phase": "train", "step": step, "total": total, "loss": last["loss"],
                **({"metric": "accuracy", "best": best["accuracy"]} if best["accuracy"] >= 0 else {})}

    def evaluate() -> float:
        step = loop.state["step"]
        if progress and (event := ten_steps(step)):
            progress(event)
        pred = predict(student_call, x_eval).argmax(-1)
        acc = float((pred == np.asarray(y_eval)).mean()) if y_eval is not None else None
        last["agreement"] = agree = float((pred == teacher_eval.argmax(-1)).mean())
        value = acc if acc is not None else agree
        if progress:
            progress({"phase": "train", "step": step, "total": total, "loss": last["loss"], "metric": "accuracy",
                      "best": max(best["accuracy"], value)})
        log.info("step %d/%d: loss %.4f, eval %s %.4f, agreement %.4f", step, total, last["loss"],
                 "accuracy" if acc is not None else "agreement", value, agree)
        return value

    def batches():
        order, pos, bs = rng.permutation(len(x_train)), 0, settings.batch_size
        while True:
            if pos + bs > len(order):
                order, pos = rng.permutation(len(x_train)), 0
            idx = order[pos:pos + bs]
            pos += bs
            yield idx, shift_images(x_train[idx], rng, settings.shift)

    def loss(model, batch):
        idx, x = batch
        with torch.no_grad():
            t_logits = teacher_call(x).float()
        s_logits = student_call(x).float()
        value = settings.soft_weight * temp * temp * F.kl_div(
            F.log_softmax(s_logits / temp, -1), F.softmax(t_logits / temp, -1), reduction="batchmean")
        if settings.hard_weight and y_train is not None:
            value = value + settings.hard_weight * F.cross_entropy(s_logits, y_train[idx])
        last["loss"] = float(value.item())
        return value

    per_epoch = max(1, (len(x_train) + settings.batch_size - 1) // settings.batch_size)
    loop = TrainLoop(student, params, Cadence(total, settings.eval_every, per_epoch), loss=loss, batches=batches,
                     store=_StudentFile(run_dir, best, last), optimizer=opt, scheduler=_Rates(opt, lr_at, start),
                     evaluate=evaluate if x_eval is not None else None, progress=progress, clip=1.0,
                     event=lambda step, value, parts, evaluated: None if evaluated is not None else ten_steps(step),
                     state={"step": start, "best": None, "best_step": None, "history": [], "train_seconds": 0.0,
                            "stopped": None})
    loop.train()
    if last["weights"] is not None:
        student.load_state_dict(last["weights"])
    student.eval()
    return {"steps": total, "resumed_from": start or None, "train_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": last["loss"], "best_step": best["step"],
            "eval_accuracy": best["accuracy"] if y_eval is not None and best["accuracy"] >= 0 else None,
            "eval_agreement": best["agreement"],
            "augmentation": f"random shift up to {settings.shift:.3g} of the side, no flips",
            "temperature": temp, "soft_weight": settings.soft_weight, "hard_weight": settings.hard_weight}


class _Rates:
    """The learning rate of each step as ``lr_at(step)`` says, set before the step (the loop's ``scheduler``)."""

    def __init__(self, opt, lr_at: Callable[[int], float], step: int) -> None:
        self.opt, self.lr_at, self.next = opt, lr_at, step
        self._set()

    def _set(self) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.next)

    def step(self) -> None:
        self.next += 1
        self._set()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.opt.param_groups]


class _StudentFile:
    """Where :func:`train_logits` keeps its run (the loop's ``store``): the student's weights (safetensors) and the
    step count, every epoch, in ``run_dir`` (none without one); the best weights in memory."""

    def __init__(self, run_dir: Path | None, best: dict[str, Any], last: dict[str, Any]) -> None:
        self.run_dir, self.best, self.last = run_dir, best, last

    def save(self, loop) -> None:
        if self.run_dir is None:
            return
        from safetensors.torch import save_file

        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in loop.model.state_dict().items()},
                  str(self.run_dir / "student.safetensors"))
        (self.run_dir / "state.json").write_text(json.dumps({"step": loop.state["step"]}))

    def save_best(self, loop) -> None:
        self.best.update(step=loop.state["step"], accuracy=loop.state["best"], agreement=self.last["agreement"])
        self.last["weights"] = {k: v.detach().clone() for k, v in loop.model.state_dict().items()}

    def interrupted(self, loop) -> BaseException:
        """Ctrl-C or SIGTERM: the run stops at the end of the step, saved in the run directory; without one (prune's
        recovery), as the signal would have stopped it."""
        if self.run_dir is None:
            from compress.interrupt import Terminated, signal_name

            return Terminated() if signal_name() == "SIGTERM" else KeyboardInterrupt()
        from compress.stages.training import Interrupted

        return Interrupted(f"interrupted at step {loop.state['step']}/{loop.total}; the run is saved in "
                           f"{self.run_dir}", hint="run the same command with --resume to continue")


# --------------------------------------------------------------------------------------------------
# The verb for image teachers (``distill`` dispatches here)
# --------------------------------------------------------------------------------------------------

#: DistillConfig settings (dotted paths) that only text distillation reads: refused when given for an image teacher
TEXT_ONLY = ("loss.hidden_weight", "loss.attention_weight", "loss.value_relation_weight", "max_length", "text_column",
             "label_column", "augmentation", "training.average", "training.average_start", "max_train_rows",
             "training.grad_accum", "training.mixed_precision", "cache_limit_gb", "evaluation.patience",
             "evaluation.save_every", "training.schedule", "training.warmup_ratio", "evaluation.metric")


def check_image_options(config, verb: str, text_only: tuple[str, ...]) -> None:
    """Refuse the settings in ``text_only`` (dotted paths, or whole sections) that differ from their defaults."""
    from compress.errors import ConfigError

    paths = []
    for path in text_only:
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = getattr(node, p)
        value = getattr(node, leaf)
        if hasattr(value, "model_fields"):  # a whole section: each of its options
            paths += [f"{path}.{k}" for k in value.model_fields if getattr(value, k) != _default(value, k)]
        elif value != _default(node, leaf):
            paths.append(path)
    given = sorted(type(config).flat_key(p) for p in paths)
    if given:
        raise ConfigError(f"{verb} does not use --{given[0].replace('_', '-')}",
                          hint="leave it out (see the README's Images section for what applies to image models)")


def _default(model, name: str):
    return type(model).model_fields[name].get_default(call_default_factory=True)


def image_data(path, teacher, *, require_labels: bool = False):
    """An image data set labelled with the teacher's class ids."""
    from compress.data.inputs import load_inputs

    label2id = {name: i for i, name in enumerate(teacher.info.labels)}
    return load_inputs(path, teacher.info.preprocess, label2id=label2id, num_labels=len(label2id),
                       require_labels=require_labels)


def distill_images(teacher, train, out: Path, config, *, eval_data=None, run_dir: Path | None = None,
                   resume: bool = False, force: bool = False, progress: Progress | None = None):
    """Distil an image classifier (see the module doc) into a student written as a pytorch artifact at ``out``."""
    from torch import no_grad as torch_no_grad

    from compress.artifact import library_versions
    from compress.errors import ConfigError
    from compress.stages.distill.config import DISTILL, DistillResult
    from compress.stages.distill.student import build_student, count_parameters
    from compress.teachers.images import write_student
    from compress.teachers.load import load_teacher

    check_image_options(config, "distillation of an image model", TEXT_ONLY)
    output = DISTILL.output(out, config, force=force)
    if teacher.info.kind != "hf" and not config.student.checkpoint:
        raise ConfigError(f"{teacher.path} is a torch.export program: it has no config to build a smaller student from",
                          hint="pass --student DIR (a smaller Hugging Face image classifier), or prune it with "
                          "edgecompress prune --channels")
    train_ds = image_data(train, teacher)
    eval_ds = image_data(eval_data, teacher, require_labels=True) if eval_data is not None else None
    if config.evaluation.samples and eval_ds is not None:
        eval_ds = eval_ds.sample(config.evaluation.samples, seed=config.seed)
    if progress:
        progress({"phase": "student", "label": "building the student"})
    if config.student.checkpoint:
        st = load_teacher(config.student.checkpoint, allow_pickle=config.allow_pickle,
                          trust_remote_code=config.trust_remote_code)
        if st.task is not teacher.task or st.info.labels != teacher.info.labels:
            raise ConfigError(f"student labels {st.info.labels} differ from the teacher's {teacher.info.labels}",
                              hint="use a student with the same id2label")
        if st.info.kind != "hf":
            raise ConfigError(f"{config.student.checkpoint} is a torch.export program: programs are inference graphs",
                              hint="pass a Hugging Face image classifier as --student")
        student, desc = st.model, {"init": "checkpoint", "student_path": str(Path(config.student.checkpoint).resolve()),
                                   "reads_images_as": "the teacher (its preprocessing is the student's)"}
    else:
        if not hasattr(teacher.model.config, "num_hidden_layers") and config.student.layers is not None:
            raise ConfigError(f"{teacher.info.architecture} has no layer stack for --layers",
                              hint="pass --student-config with a narrower setting (e.g. depth_multiplier) or prune "
                              "it with edgecompress prune --channels")
        student, desc = build_student(teacher.model, config)
    encoder = teacher.encoder()  # the student reads images as the teacher does, and keeps that preprocessing
    x_train = encode_all(encoder, train_ds.inputs)
    x_eval = encode_all(encoder, eval_ds.inputs) if eval_ds is not None else None
    name = teacher.input_names[0]
    try:
        with torch_no_grad():
            student_logits = hf_logits(student)(x_train[:2])
    except Exception as e:  # noqa: BLE001 - a shape mismatch shows as any of several errors
        shape = "x".join(str(d) for d in x_train.shape[1:])
        raise ConfigError(f"the student cannot read the teacher's input ({shape}): {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:160]}",
                          hint="give the student the teacher's channels and image size (num_channels, image_size)") from None
    if student_logits.shape[-1] != len(teacher.info.labels):
        raise ConfigError(f"the student has {student_logits.shape[-1]} outputs, the teacher {len(teacher.info.labels)} "
                          "classes", hint="use a student with the same labels")
    per_epoch = max(1, -(-len(x_train) // config.training.batch_size))
    steps = config.training.max_steps or max(1, round(config.training.epochs * per_epoch))
    settings = LogitTraining(steps=steps, batch_size=config.training.batch_size, lr=config.training.lr,
                             weight_decay=config.training.weight_decay,
                             temperature=config.loss.temperature, soft_weight=config.loss.soft_weight,
                             hard_weight=config.loss.hard_weight, seed=config.seed, eval_every=config.evaluation.every)
    teacher_call = lambda x: teacher.call(teacher.model, {name: x})  # noqa: E731
    record = train_logits(student, hf_logits(student), teacher_call,
                          x_train, train_ds.labels, x_eval, eval_ds.labels if eval_ds is not None else None, settings,
                          run_dir=run_dir, resume=resume, progress=progress)
    metrics = {"student": desc, "training": record, "teacher_parameters": count_parameters(teacher.model),
               "student_parameters": count_parameters(student), "train_rows": len(train_ds),
               "eval_rows": len(eval_ds) if eval_ds is not None else 0,
               "data": {"train": str(Path(train).resolve()), "eval": str(Path(eval_data).resolve()) if eval_data else None}}
    metrics.update(steps=record["steps"], train_seconds=record["train_seconds"], metric="accuracy", chosen="best")
    if x_eval is not None:
        teacher_acc = float((predict(teacher_call, x_eval).argmax(-1) == np.asarray(eval_ds.labels)).mean())
        metrics.update(eval_metric=record["eval_accuracy"], teacher_eval_metric=teacher_acc,
                       retention=record["eval_accuracy"] / teacher_acc if teacher_acc else None)
    with output.writing() as o:
        manifest = write_student(student, teacher, o.dir)
        manifest.versions = library_versions()
        metrics["size_bytes"] = sum(f.stat().st_size for f in o.dir.glob("*.safetensors"))
        o.describe(manifest, input_digest=teacher.sha256, lineage=teacher.lineage()[1], metrics=metrics)
    art = output.artifact
    log.info("wrote %s (%s parameters)", out, f"{metrics['student_parameters']:,}")
    return DistillResult(artifact=art, metrics=metrics)
