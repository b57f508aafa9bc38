"""Settings of ``distill``: the config leaf its parts import."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from compress.artifact import Artifact, Format, Precision
from compress.errors import EdgeCompressError
from compress.stages.spec import StageSpec, pairs

CONFIG_VERSION = 1
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
_IGNORE = -100


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


class Schedule(StrEnum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant_with_warmup"


class DistillConfig(BaseModel):
    """Settings of ``edgecompress distill``. Defaults were chosen by measurement on SST-2 (see README)."""

    model_config = ConfigDict(extra="forbid")

    # --- student -------------------------------------------------------------------------------------
    layers: int | None = Field(
        None, ge=1,
        description="Student depth: keep this many evenly spaced teacher layers (always the last one), "
        "copying their weights and the embeddings.",
    )
    keep_layers: list[int] | None = Field(None, description="Explicit teacher layer indices to keep (0-based).")
    student_config: dict[str, Any] | None = Field(
        None,
        description="transformers config overrides for the student (e.g. hidden_size, intermediate_size, "
        "num_attention_heads, num_hidden_layers); weights are initialised from the teacher's (evenly "
        "spaced layers, leading slices of narrower matrices).",
    )
    student: str | None = Field(None, description="An existing student checkpoint that shares the teacher's tokenizer.")
    # --- losses --------------------------------------------------------------------------------------
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft targets (loss scaled by T^2).")
    soft_weight: float = Field(
        0.7, ge=0,
        description="Weight of the soft-target loss (KL to the teacher's tempered distribution; MSE to the "
        "teacher's sentence embedding for feature-extraction teachers).",
    )
    hard_weight: float = Field(0.3, ge=0, description="Weight of cross entropy on the labels (labelled rows only).")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of hidden-state MSE on mapped layers.")
    attention_weight: float = Field(0.0, ge=0, description="Weight of attention-distribution KL on mapped layers.")
    value_relation_weight: float = Field(
        0.0, ge=0, description="Weight of MiniLM value-relation KL on the last layer."
    )
    # --- data ----------------------------------------------------------------------------------------
    max_length: int | None = Field(
        128, ge=8, description="Truncate transfer texts to this many tokens (None: the teacher's maximum)."
    )
    text_column: str | None = Field(None, description="Text column of the data files (auto-detected).")
    label_column: str | None = Field(None, description="Label column of the data files (auto-detected).")
    augment: int = Field(
        0, ge=0,
        description="Extra copies of every transfer sentence with words replaced by their nearest "
        "neighbours in the teacher's embedding space (unlabelled; the teacher supplies their targets).",
    )
    augment_prob: float = Field(0.3, gt=0, le=1, description="Probability of replacing each word in a copy.")
    augment_join: int = Field(
        0, ge=0,
        description="Extra sentence-length rows: K copies of the transfer texts, each text joined by a comma to "
        "another of the same label (any other when unlabelled). For phrase-level training data such as SST-2's, "
        "whose dev and test sets are whole sentences twice as long.",
    )
    eval_samples: int | None = Field(None, ge=1, description="Use at most this many eval rows.")
    max_train_rows: int | None = Field(
        None, ge=1,
        description="Use at most this many training rows: a random subset fixed by --seed, in file order, "
        "taken before augmentation (None: all rows).",
    )
    metric: Metric = Field(
        Metric.auto,
        description="Early-stopping metric: accuracy (needs labels), agreement with the teacher's argmax, "
        "or cosine to the teacher's embedding; auto picks accuracy when the eval data has labels.",
    )
    # --- training ------------------------------------------------------------------------------------
    epochs: float = Field(3.0, gt=0, description="Passes over the transfer set (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(32, ge=1, description="Rows per batch per process.")
    grad_accum: int = Field(1, ge=1, description="Gradient-accumulation steps per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    schedule: Schedule = Field(Schedule.linear, description="Learning-rate decay after warm-up.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    eval_every: int = Field(500, ge=1, description="Evaluate (and checkpoint) every N optimizer steps.")
    patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement (None: never stop early)."
    )
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: eval_every).")
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
    seed: int = Field(42, description="Seed for initialisation, data order, augmentation and dropout.")
    cache_limit_gb: float = Field(
        8.0, gt=0,
        description="Largest teacher-output cache on disk; intermediate targets beyond it are recomputed "
        "by the teacher every step instead.",
    )
    allow_pickle: bool = Field(False, description="Allow pickled (.bin) teacher/student weights.")
    trust_remote_code: bool = Field(False, description="Allow checkpoints with custom code (auto_map).")

    def training_fields(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one."""
        skip = {"eval_every", "save_every", "patience", "cache_limit_gb", "allow_pickle", "trust_remote_code"}
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}


@dataclass
class DistillResult:
    artifact: Artifact
    metrics: dict[str, Any]


class Interrupted(EdgeCompressError):
    """Training stopped by Ctrl-C/SIGTERM after saving a resumable checkpoint."""

    exit_code = 130
