"""``edgecompress finetune``'s settings and its stage declaration."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, NonNegativeInt, model_validator

from compress.artifact import Format, Precision
from compress.settings import Section, Settings, refuse
from compress.stages.spec import StageSpec, pairs
from compress.tasks import Task
from compress.tasks.qa import MIN_WINDOW

CONFIG_VERSION = 2  # 2: options nested in sections (lora, training, evaluation, images)
FINETUNE = StageSpec(
    stage="finetune", verb="finetune", accepts=pairs(Format.pytorch, Precision.fp32),
    produces=pairs(Format.pytorch, Precision.fp32), versions=("torch", "transformers", "peft"),
    hint="finetune takes a pretrained checkpoint directory: a Hugging Face text encoder (all-MiniLM-L6-v2) or causal "
    "LM, a Hugging Face image classifier or backbone, or a timm checkpoint", config_version=CONFIG_VERSION,
)

#: the tasks a base can be fine-tuned for (a new head on the base's encoder; a causal LM's own head for
#: text-generation), and which a text or an image base takes
TASKS = (Task.text_classification, Task.token_classification, Task.image_classification, Task.regression,
         Task.question_answering, Task.text_generation)
TEXT_TASKS = (Task.text_classification, Task.token_classification, Task.regression, Task.question_answering,
              Task.text_generation)
IMAGE_TASKS = (Task.image_classification, Task.regression)
#: peak learning rates by family and by how much trains: the transfer-learning guides' 2e-5..5e-5 for a whole text
#: encoder, higher for low-rank adapters (few parameters move, from zero); an image backbone takes more (its
#: BatchNorm layers and a new head on features far from the new task), a frozen one's head more again
FULL_LR, LORA_LR = 5e-5, 5e-4
IMAGE_LR = {"full": 5e-4, "frozen": 1e-3, "lora": 1e-3}


class Mode(StrEnum):
    full = "full"
    frozen = "frozen"
    lora = "lora"


class Lora(Section):
    """Low-rank adapters (peft LoRA) trained instead of the weights."""

    rank: int | None = Field(None, ge=1, description="Train low-rank adapters of this rank (peft LoRA) instead "
                             "of the weights; merged into them before the checkpoint is written.")
    alpha: int | None = Field(None, ge=1, description="LoRA scaling alpha (default: twice the rank).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    targets: list[str] | None = Field(None, description="Module names LoRA wraps, or all-linear (every linear "
                                      "layer but the output head); default: an encoder's every linear layer, a causal "
                                      "LM's attention projections as peft seeds them (q_proj and v_proj for Llama).")
    qlora: bool = Field(False, description="QLoRA: hold the base in 4 bits (NF4, double-quantized scales, through "
                        "bitsandbytes) under the adapters; the adapters train in FP32 and are merged into the "
                        "dequantized base, so the checkpoint is plain FP32. Causal LMs.")


class Training(Section):
    """The optimizer and how long it runs."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    batch_size: int = Field(32, ge=1, description="Rows per batch.")
    lr: float | None = Field(None, gt=0, description=f"Peak learning rate (default for text {FULL_LR:g}, "
                             f"{LORA_LR:g} with LoRA; for images {IMAGE_LR['full']:g}, {IMAGE_LR['frozen']:g} "
                             "frozen or LoRA).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of the steps warming the learning rate up, "
                                "then linear decay.")


class Evaluation(Section):
    """Evaluation during training (with eval data): how often, early stopping, checkpoints."""

    every: int | None = Field(None, ge=1, description="Evaluate every N steps (default: 10 times a run); the "
                              "best checkpoint is kept.")
    patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: at each evaluation).")


class Images(Section):
    """What only an image base reads."""

    shift: float = Field(0.1, ge=0, lt=0.5, description="Each training image moved by a random shift of up "
                         "to this fraction of its side, zeros filling in (no flips: they change what text or a digit "
                         "means); 0 turns it off.")


class Instructions(Section):
    """What only a causal LM base reads: the fields of instruction rows."""

    prompt_field: str = Field("prompt", min_length=1, description="The field of a JSON lines row the model reads; a "
                              "file whose rows carry it is instruction data, the loss on the response's tokens only.")
    response_field: str = Field("response", min_length=1, description="The field of an instruction row the model "
                                "is trained to answer with (an end-of-sequence token after it).")


class FinetuneConfig(Settings):
    """Settings of ``edgecompress finetune``."""

    MOVED: ClassVar[dict[str, str]] = {
        "lora_rank": "lora.rank", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
        "lora_targets": "lora.targets", **{k: f"training.{k}" for k in Training.model_fields},
        "eval_every": "evaluation.every", "patience": "evaluation.patience", "save_every": "evaluation.save_every",
        "shift": "images.shift", "qlora": "lora.qlora", "prompt_field": "instructions.prompt_field",
        "response_field": "instructions.response_field",
    }

    task: Task | None = Field(None, description="text-classification (a label per text), token-classification (a tag "
                              "per word: CoNLL or JSON lines data), image-classification, or regression (a number "
                              "per text or image: the label column read as numbers, MSE loss, judged by MAE), "
                              "question-answering (an answer span per question: SQuAD-format JSON, judged by SQuAD "
                              "F1; --max-length is the window, 384 as run_qa); "
                              "text-generation (a causal LM on documents or prompt/response rows, judged by "
                              "perplexity); default: image-classification for an image base, text-generation for a "
                              "causal LM, else text-classification.")
    labels: list[str] | None = Field(None, description="Class names by id; default: the data's labels (names sorted, "
                                     "or integer ids 0..k-1). Not for regression.")
    freeze: NonNegativeInt | Literal["all"] = Field(0, description="Freeze the embeddings (a CNN's stem) and the "
                                                    "first N layers (blocks) of the base, the early layers kept; "
                                                    "'all': the whole base, only the new head trains (a linear "
                                                    "probe).")
    lora: Lora = Field(default_factory=Lora, description="Low-rank adapters instead of the weights.")
    training: Training = Field(default_factory=Training, description="The optimizer and how long it runs.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Evaluation, checkpoints, early stop.")
    max_length: int = Field(128, ge=8, description="Longest token sequence (text).")
    images: Images = Field(default_factory=Images, description="What only an image base reads.")
    instructions: Instructions = Field(default_factory=Instructions, description="What only a causal LM reads.")
    seed: int = Field(0, description="Seed of the head's initialisation, the data order and dropout.")
    allow_pickle: bool = Field(False, description="Allow a pickled (.bin) base checkpoint.")

    @model_validator(mode="after")
    def _one_mode(self) -> FinetuneConfig:
        if self.task is not None and self.task not in TASKS:
            raise refuse(f"task must be one of {', '.join(t.value for t in TASKS)}")
        if self.task is Task.regression and self.labels:
            raise refuse(f"{self.option('labels')} names classes, and a regression head has none: leave it out")
        if self.task is Task.question_answering and self.max_length < MIN_WINDOW:
            raise refuse(f"{self.option('max_length')} {self.max_length} is too short for question-answering: a window "
                         f"holds the question, some of the context and the special tokens; give {MIN_WINDOW} or more "
                         "(run_qa's default: 384)")
        if self.freeze and self.lora.rank:
            raise refuse("--freeze and --lora-rank (freeze and lora.rank) are two ways of training less: pick one")
        self.refuse_unless(bool(self.lora.rank), ("lora.alpha", "lora.targets", "lora.qlora"), "LoRA",
                           f"set {self.option('lora.rank')}, or leave it out")
        return self

    @property
    def mode(self) -> Mode:
        return Mode.lora if self.lora.rank else Mode.frozen if self.freeze else Mode.full

    def peak_lr(self, images: bool = False) -> float:
        """The learning rate asked for, else the family's default for the mode."""
        if self.training.lr:
            return self.training.lr
        if images:
            return IMAGE_LR[str(self.mode)]
        return LORA_LR if self.lora.rank else FULL_LR
