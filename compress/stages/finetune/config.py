"""``edgecompress finetune``'s settings and its stage declaration."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.artifact import Format, Precision, Task
from compress.stages.spec import StageSpec, pairs

FINETUNE = StageSpec(
    stage="finetune", verb="finetune", accepts=pairs(Format.pytorch, Precision.fp32),
    produces=pairs(Format.pytorch, Precision.fp32), versions=("torch", "transformers", "peft"),
    hint="finetune takes a pretrained Hugging Face checkpoint directory (a text encoder such as all-MiniLM-L6-v2)",
)

#: the tasks a base can be fine-tuned for (a new head on the base's encoder)
TASKS = (Task.text_classification, Task.token_classification)
#: peak learning rates by how much trains: the transfer-learning guides' 2e-5..5e-5 for a whole encoder, higher for
#: low-rank adapters (only a few parameters move, from zero)
FULL_LR, LORA_LR = 5e-5, 5e-4


class Mode(StrEnum):
    full = "full"
    frozen = "frozen"
    lora = "lora"


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Task = Field(Task.text_classification, description="text-classification (a label per text) or "
                       "token-classification (a tag per word: CoNLL or JSON lines data).")
    labels: list[str] | None = Field(None, description="Class names by id; default: the data's labels (names sorted, "
                                     "or integer ids 0..k-1).")
    freeze: int = Field(0, ge=0, description="Freeze the embeddings and the first N transformer layers (transfer "
                        "learning with the early layers kept).")
    lora_rank: int | None = Field(None, ge=1, description="Train low-rank adapters of this rank (peft LoRA) instead "
                                  "of the weights; merged into them before the checkpoint is written.")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA scaling alpha (default: twice the rank).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_targets: list[str] | None = Field(None, description="Module names LoRA wraps (default: every linear layer "
                                           "of the encoder, peft's all-linear).")
    epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    batch_size: int = Field(32, ge=1, description="Rows per batch.")
    lr: float | None = Field(None, gt=0, description=f"Peak learning rate (default {FULL_LR:g}, {LORA_LR:g} with "
                             "LoRA).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of the steps warming the learning rate up, "
                                "then linear decay.")
    max_length: int = Field(128, ge=8, description="Longest token sequence.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N steps (default: 10 times a run); the "
                                   "best checkpoint is kept.")
    patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: at each evaluation).")
    seed: int = Field(0, description="Seed of the head's initialisation, the data order and dropout.")
    allow_pickle: bool = Field(False, description="Allow a pickled (.bin) base checkpoint.")

    @model_validator(mode="after")
    def _one_mode(self) -> FinetuneConfig:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(t.value for t in TASKS)}")
        if self.freeze and self.lora_rank:
            raise ValueError("--freeze and --lora-rank are two ways of training less: pick one")
        return self

    @property
    def mode(self) -> Mode:
        return Mode.lora if self.lora_rank else Mode.frozen if self.freeze else Mode.full

    @property
    def peak_lr(self) -> float:
        return self.lr or (LORA_LR if self.lora_rank else FULL_LR)
