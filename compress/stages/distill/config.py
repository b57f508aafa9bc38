"""Settings of ``distill``: the config leaf its parts import."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field, model_validator

from compress.artifact import Artifact, Format, Precision
from compress.settings import Section, Settings, refuse
from compress.stages.spec import StageSpec, pairs

CONFIG_VERSION = 2  # 2: options nested in sections (student, loss, augmentation, training, evaluation)
#: A teacher checkpoint (or a PyTorch artifact) teaches a smaller PyTorch student.
DISTILL = StageSpec(
    "distill", "distillation", accepts=pairs(Format.pytorch, Precision.fp32),
    produces=pairs(Format.pytorch, Precision.fp32), versions=("torch", "transformers", "accelerate"),
    hint="distil from the teacher checkpoint (or a PyTorch artifact), then export the student",
    config_version=CONFIG_VERSION,
)
RUN_STATE = "trainer_state.json"
AVERAGE_FILE = "average.safetensors"  # the running weight average (--average), beside the checkpoint
RUN_CONFIG = "run_config.json"


class MixedPrecision(StrEnum):
    auto = "auto"
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


class Metric(StrEnum):
    auto = "auto"
    accuracy = "accuracy"
    agreement = "agreement"
    cosine = "cosine"


class Divergence(StrEnum):
    forward = "forward"
    reverse = "reverse"


class LayerChoice(StrEnum):
    evenly = "evenly"
    scored = "scored"


class Schedule(StrEnum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant_with_warmup"


class Student(Section):
    """Which student: a slice of the teacher (``layers``, ``keep_layers``), a narrower config, or a checkpoint."""

    layers: int | None = Field(
        None, ge=1,
        description="Student depth: keep this many evenly spaced teacher layers (always the last one), "
        "copying their weights and the embeddings.",
    )
    keep_layers: list[int] | None = Field(None, description="Explicit teacher layer indices to keep (0-based).")
    config: dict[str, Any] | None = Field(
        None,
        description="transformers config overrides for the student (e.g. hidden_size, intermediate_size, "
        "num_attention_heads, num_hidden_layers); weights are initialised from the teacher's (evenly "
        "spaced layers, leading slices of narrower matrices).",
    )
    checkpoint: str | None = Field(
        None, description="An existing student checkpoint that shares the teacher's tokenizer."
    )
    layer_choice: LayerChoice = Field(
        LayerChoice.evenly,
        description="Which teacher layers --layers keeps: evenly spaced (always the last), or scored on the transfer "
        "text (a causal LM: the layers whose removal alone changes the teacher's next-token distributions most, "
        "Minitron's depth-pruning importance).",
    )


class Loss(Section):
    """The distillation loss: soft targets, labels and intermediate-layer terms, each with its weight."""

    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft targets (loss scaled by T^2).")
    soft_weight: float = Field(
        0.7, ge=0,
        description="Weight of the soft-target loss (KL to the teacher's tempered distribution; MSE to the "
        "teacher's sentence embedding for feature-extraction teachers).",
    )
    hard_weight: float = Field(0.3, ge=0, description="Weight of cross entropy on the labels (labelled rows only; "
                               "a causal LM's: on the text's next tokens).")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of hidden-state MSE on mapped layers.")
    attention_weight: float = Field(0.0, ge=0, description="Weight of attention-distribution KL on mapped layers.")
    value_relation_weight: float = Field(
        0.0, ge=0, description="Weight of MiniLM value-relation KL on the last layer."
    )
    divergence: Divergence = Field(
        Divergence.forward,
        description="A causal LM's soft-target divergence: forward KL(teacher || student), mode covering, or "
        "reverse KL(student || teacher), mode seeking (MiniLLM; GKD's beta=1).",
    )
    top_k: int = Field(
        32, ge=1, le=4096,
        description="A causal LM's teacher targets: the K most likely next tokens per position (their log-"
        "probabilities, cached on disk) plus one tail bucket holding the rest of the probability mass.",
    )
    on_policy: float = Field(
        0.0, ge=0, le=1,
        description="Share of a causal LM's batches trained on the student's own samples (each window's first half "
        "as the prompt, the continuation sampled from the student and scored by the teacher: GKD's lambda).",
    )
    on_policy_tokens: int | None = Field(
        None, ge=1, description="Tokens the student samples per on-policy window (default: half the window)."
    )


class Augmentation(Section):
    """New transfer rows made from the transfer texts (text teachers), labelled by the teacher."""

    copies: int = Field(
        0, ge=0,
        description="Extra copies of every transfer sentence with words replaced by their nearest "
        "neighbours in the teacher's embedding space (unlabelled; the teacher supplies their targets).",
    )
    prob: float = Field(0.3, gt=0, le=1, description="Probability of replacing each word in a copy.")
    join: int = Field(
        0, ge=0,
        description="Extra sentence-length rows: K copies of the transfer texts, each text joined by a comma to "
        "another of the same label (any other when unlabelled). For phrase-level training data such as SST-2's, "
        "whose dev and test sets are whole sentences twice as long.",
    )
    teacher_samples: int = Field(
        0, ge=0,
        description="A causal LM's extra transfer windows written by the teacher itself (sequence-level distillation, "
        "TRL's seq_kd): each the first eighth of a transfer window, in turn, continued by sampling from the teacher "
        "to a whole window; generated once (kept for --resume) and taught from the teacher's cached targets like the "
        "text's windows.",
    )


class Training(Section):
    """The optimizer, its schedule and how long it runs."""

    epochs: float = Field(3.0, gt=0, description="Passes over the transfer set (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(32, ge=1, description="Rows per batch per process.")
    grad_accum: int = Field(1, ge=1, description="Gradient-accumulation steps per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    schedule: Schedule = Field(Schedule.linear, description="Learning-rate decay after warm-up.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    mixed_precision: MixedPrecision = Field(
        MixedPrecision.auto, description="auto: bf16 on GPUs that support it, else fp16 on GPUs, none on CPU."
    )
    average: bool = Field(
        False,
        description="Write the mean of the student's weights at every --eval-every steps from --average-start on "
        "(stochastic weight averaging, torch.optim.swa_utils) instead of the best evaluated checkpoint. Suits a "
        "second, constant-rate distillation of a student (--schedule constant_with_warmup, a lower --lr).",
    )
    average_start: float = Field(0.0, ge=0, lt=1, description="Share of the steps after which --average begins.")


class Evaluation(Section):
    """Evaluation during training: how often, on how many rows, by which metric; checkpoints and early stopping."""

    every: int = Field(500, ge=1, description="Evaluate (and checkpoint) every N optimizer steps.")
    samples: int | None = Field(None, ge=1, description="Use at most this many eval rows.")
    metric: Metric = Field(
        Metric.auto,
        description="Early-stopping metric: accuracy (needs labels), agreement with the teacher's argmax, "
        "or cosine to the teacher's embedding; auto picks accuracy when the eval data has labels.",
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement (None: never stop early)."
    )
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: eval_every).")


#: the settings a resumed run need not share with the interrupted one (when it evaluates and saves, what it may read)
_RESUMABLE = {"evaluation": {"every", "save_every", "patience"}, "cache_limit_gb": None, "allow_pickle": None,
              "trust_remote_code": None}


class DistillConfig(Settings):
    """Settings of ``edgecompress distill``. Defaults were chosen by measurement on SST-2 (see README)."""

    MOVED: ClassVar[dict[str, str]] = {
        "layers": "student.layers", "keep_layers": "student.keep_layers", "student_config": "student.config",
        "student": "student.checkpoint",
        "layer_choice": "student.layer_choice",
        **{k: f"loss.{k}" for k in Loss.model_fields},
        "augment": "augmentation.copies", "augment_prob": "augmentation.prob", "augment_join": "augmentation.join",
        "teacher_samples": "augmentation.teacher_samples",
        **{k: f"training.{k}" for k in Training.model_fields},
        "eval_every": "evaluation.every", "eval_samples": "evaluation.samples", "metric": "evaluation.metric",
        "patience": "evaluation.patience", "save_every": "evaluation.save_every",
    }

    student: Student = Field(default_factory=Student, description="Which student.")
    loss: Loss = Field(default_factory=Loss, description="The distillation loss and its weights.")
    augmentation: Augmentation = Field(default_factory=Augmentation, description="New transfer rows (text).")
    training: Training = Field(default_factory=Training, description="The optimizer and how long it runs.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Evaluation, checkpoints, early stop.")
    max_length: int | None = Field(
        128, ge=8, description="Truncate transfer texts to this many tokens (None: the teacher's maximum)."
    )
    text_column: str | None = Field(None, description="Text column of the data files (auto-detected).")
    label_column: str | None = Field(None, description="Label column of the data files (auto-detected).")
    max_train_rows: int | None = Field(
        None, ge=1,
        description="Use at most this many training rows: a random subset fixed by --seed, in file order, "
        "taken before augmentation (None: all rows).",
    )
    seed: int = Field(42, description="Seed for initialisation, data order, augmentation and dropout.")
    cache_limit_gb: float = Field(
        8.0, gt=0,
        description="Largest teacher-output cache on disk; intermediate targets beyond it are recomputed "
        "by the teacher every step instead.",
    )
    allow_pickle: bool = Field(False, description="Allow pickled (.bin) teacher/student weights.")
    trust_remote_code: bool = Field(False, description="Allow checkpoints with custom code (auto_map).")

    @model_validator(mode="after")
    def _one_student(self) -> DistillConfig:
        s = self.student
        if s.checkpoint and (s.layers or s.keep_layers or s.config):
            raise refuse("--student and --layers/--keep-layers/--student-config (student.checkpoint and "
                         "student.layers/keep_layers/config) both given: use one way")
        if s.layer_choice is LayerChoice.scored and not s.layers:
            raise refuse("--layer-choice scored (student.layer_choice) picks which layers --layers N keeps: give "
                         "--layers N")
        return self

    def training_fields(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one."""
        out = {}
        for k, v in self.model_dump(mode="json").items():
            skip = _RESUMABLE.get(k, ())
            if skip is None:
                continue
            out[k] = {n: x for n, x in v.items() if n not in skip} if skip else v
        return out


@dataclass
class DistillResult:
    artifact: Artifact
    metrics: dict[str, Any]
