"""Settings of ``prune``: the config leaf the prune verb and its parts import."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.artifact import Format, Precision
from compress.stages.spec import StageSpec, pairs

CONFIG_VERSION = 1
#: Structured (heads, FFN, layers), vocabulary and sparsity pruning change a PyTorch model into a smaller one.
PRUNE = StageSpec(
    "prune", "pruning", accepts=pairs(Format.pytorch, Precision.fp32), produces=pairs(Format.pytorch, Precision.fp32),
    versions=("torch", "transformers", "tokenizers", "accelerate"),
    hint="prune the teacher checkpoint or a PyTorch artifact (e.g. a distilled student), then export it",
    config_version=CONFIG_VERSION,
)
SEMI_STRUCTURED = "2:4"
#: What the runtimes this project targets do with zeros in dense weight tensors.
SPARSITY_NOTE = (
    "ONNX Runtime and OpenVINO CPU kernels run dense matrix multiplies: unstructured and 2:4 sparsity give "
    "no speed-up there, and safetensors/ONNX store the zeros densely, so files keep their size; the zeros "
    "make the weights compress (zip/gzip download size). 2:4 is accelerated only by sparse tensor cores "
    "(NVIDIA Ampere and later) in a TensorRT engine built with sparsity enabled, which edgecompress's "
    "TensorRT export does not enable."
)
_RUNTIME_SPARSITY = {
    "onnxruntime": "ONNX Runtime runs dense kernels: no speed-up from sparsity",
    "openvino": "OpenVINO CPU runs dense kernels: no speed-up from sparsity",
    "torch": "PyTorch eager runs dense kernels: no speed-up from sparsity",
    "tensorrt": "TensorRT can use 2:4 sparse tensor cores only in engines built with sparsity enabled "
                "(not done by edgecompress): no speed-up as exported",
}
_PLACEHOLDER = re.compile(r"\[unused\d+\]|<unused\d+>")
_FFN_KEYS = ("intermediate_size", "hidden_dim", "ffn_dim", "d_ff", "dim_feedforward")
_TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id",
                  "mask_token_id")


class BudgetPrecision(StrEnum):
    fp32 = "fp32"
    int8 = "int8"


class PruneConfig(BaseModel):
    """Settings of ``edgecompress prune``."""

    model_config = ConfigDict(extra="forbid")

    # --- what to remove ------------------------------------------------------------------------------
    heads: float = Field(
        0.0, ge=0, lt=1,
        description="Fraction of all attention heads to remove, least important first (Taylor importance, "
        "normalised per layer); every layer keeps at least one head.",
    )
    ffn: float = Field(
        0.0, ge=0, lt=1,
        description="Fraction of the FFN intermediate neurons to remove, the same number in every layer "
        "(each layer keeps its most important ones).",
    )
    channels: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Image CNNs: fraction of every prunable convolution's output channels removed, with their "
        "BatchNorm, residual partners and the next layers' inputs (Torch-Pruning's DependencyGraph); the result is "
        "a torch.export program.",
    )
    drop_layers: int = Field(
        0, ge=0, description="Remove this many whole layers: those whose removal changes the outputs least."
    )
    vocab_corpus: str | None = Field(
        None,
        description="Data file whose texts define the vocabulary to keep (with special tokens and the "
        "single-character alphabet); tokenizer and embedding matrix are rebuilt and proven identical on it.",
    )
    vocab_keep_alphabet: bool = Field(
        True,
        description="Also keep single-character tokens (WordPiece: and their ## forms), so words outside the "
        "corpus still split into characters instead of becoming [UNK].",
    )
    vocab_floor: int = Field(
        0, ge=0,
        description="Also keep the N lowest-id ordinary tokens ([unusedK] placeholders skipped): WordPiece and BPE "
        "vocabularies list frequent tokens first, so text outside the corpus tokenises as before more often, "
        "at N more embedding rows.",
    )
    sparsity: float | str | None = Field(
        None,
        description="Zero this fraction of the encoder's Linear weights by global magnitude (e.g. 0.5), or "
        "'2:4' (two of every four consecutive input weights). Makes the weights compress, not run faster "
        "on CPU runtimes (see the manifest note).",
    )
    # --- importance ----------------------------------------------------------------------------------
    samples: int = Field(256, ge=1, description="Rows of the data sample the importance scores are computed on.")
    importance_data: str | None = Field(
        None,
        description="Data file for the importance scores (default: the --train data, else the vocabulary "
        "corpus, else the built-in sample sentences).",
    )
    max_length: int = Field(128, ge=8, description="Truncate texts to this many tokens (scores and recovery).")
    text_column: str | None = Field(None, description="Text column of the data files (auto-detected).")
    label_column: str | None = Field(None, description="Label column of the data files (auto-detected).")
    # --- recovery ------------------------------------------------------------------------------------
    recover_steps: int = Field(
        0, ge=0, description="Distil from the unpruned model for this many optimizer steps after pruning (needs train data)."
    )
    recover_lr: float = Field(1e-4, gt=0, description="Peak learning rate of the recovery distillation.")
    recover_after_vocab: bool = Field(
        True,
        description="With --vocab-corpus and --recover-steps: prune the vocabulary first and recover with the "
        "pruned tokenizer, so the model learns how text outside the corpus now splits (on by default); off: "
        "recover with the original tokenizer, then prune the vocabulary (exact on the corpus only). A token "
        "classifier always recovers first (its distillation reads words token for token as the teacher does).",
    )
    recover_batch_size: int = Field(32, ge=1, description="Batch size of the recovery distillation.")
    recover_augment: int = Field(
        0, ge=0, le=20,
        description="Recovery: extra copies of every training text with words swapped for embedding neighbours, "
        "labelled by the teacher (distill's --augment; text only). Worth it for long recoveries from the teacher.",
    )
    recover_augment_join: int = Field(
        0, ge=0, le=20,
        description="Recovery: sentence-length copies of the training texts, each joined to another of the same label "
        "(distill's --augment-join; text only).",
    )
    recover_average: bool = Field(
        False,
        description="Recovery: the recovered weights are the mean of 8 snapshots over its second half (distill's "
        "--average), not its last step.",
    )
    teacher: str | None = Field(
        None, description="Teacher for recovery (default: the unpruned input model); must share its tokenizer."
    )
    teacher_cache: str | None = Field(
        None,
        description="Directory for the recovery teacher's outputs, reused by later runs with the same teacher and "
        "transfer data (e.g. several pruning levels of one model).",
    )
    # --- budget --------------------------------------------------------------------------------------
    profile: str | None = Field(
        None,
        description="Device profile (name or file): raise the head/FFN ratios in steps of 0.1 until its "
        "max_model_size_mb and latency budgets hold for the exported model.",
    )
    budget_precision: BudgetPrecision = Field(
        BudgetPrecision.int8,
        description="Precision the deployed model will have: budget candidates are exported to ONNX and, for "
        "int8, dynamically quantized before their size and latency are measured.",
    )
    max_ratio: float = Field(
        0.9, gt=0, lt=1, description="Largest head/FFN pruning ratio the budget search may reach."
    )
    seed: int = Field(42, description="Seed for the data sample, random projections and recovery.")
    allow_pickle: bool = Field(False, description="Allow pickled (.bin) weights.")
    trust_remote_code: bool = Field(False, description="Allow checkpoints with custom code (auto_map).")

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity(cls, v: Any) -> Any:
        if v is None or v == SEMI_STRUCTURED:
            return v
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{v!r} is neither a ratio in [0, 1) nor '2:4'") from None
        if not 0 <= value < 1 or isinstance(v, bool):
            raise ValueError(f"{v!r} is outside [0, 1): give the fraction of weights to zero, e.g. 0.5, or '2:4'")
        return value or None

    @property
    def structural(self) -> bool:
        return bool(self.heads or self.ffn or self.drop_layers or self.profile)
