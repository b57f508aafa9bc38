"""Settings of ``prune``: the config leaf the prune verb and its parts import."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from compress.artifact import Format, Precision
from compress.settings import Section, Settings, refuse
from compress.stages.spec import StageSpec, pairs

CONFIG_VERSION = 2  # 2: options nested in sections (vocab, importance, recovery, budget)
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


class HeadUnit(StrEnum):
    """How query heads leave a causal LM's grouped-query attention layer."""

    query = "query"  # the same number of query heads from every key/value group; the KV cache keeps its size
    group = "group"  # whole key/value groups with all their query heads; the KV cache shrinks


class BudgetPrecision(StrEnum):
    fp32 = "fp32"
    int8 = "int8"


class Vocab(Section):
    """Vocabulary pruning: the tokens a corpus uses are kept, the tokenizer and embedding matrix rebuilt."""

    corpus: str | None = Field(
        None,
        description="Data file whose texts define the vocabulary to keep (with special tokens and the "
        "single-character alphabet); tokenizer and embedding matrix are rebuilt and proven identical on it.",
    )
    keep_alphabet: bool = Field(
        True,
        description="Also keep single-character tokens (WordPiece: and their ## forms), so words outside the "
        "corpus still split into characters instead of becoming [UNK].",
    )
    floor: int = Field(
        0, ge=0,
        description="Also keep the N lowest-id ordinary tokens ([unusedK] placeholders skipped): WordPiece and BPE "
        "vocabularies list frequent tokens first, so text outside the corpus tokenises as before more often, "
        "at N more embedding rows.",
    )


class Importance(Section):
    """The data sample the importance scores (heads, FFN neurons, layers, channels) are computed on."""

    samples: int = Field(256, ge=1, description="Rows of the data sample the importance scores are computed on.")
    data: str | None = Field(
        None,
        description="Data file for the importance scores (default: the --train data, else the vocabulary "
        "corpus, else the built-in sample sentences).",
    )


class Recovery(Section):
    """Recovery: distillation from the unpruned model (or ``teacher``) after pruning."""

    steps: int = Field(
        0, ge=0, description="Distil from the unpruned model for this many optimizer steps after pruning (needs train data)."
    )
    lr: float = Field(1e-4, gt=0, description="Peak learning rate of the recovery distillation.")
    after_vocab: bool = Field(
        True,
        description="With --vocab-corpus and --recover-steps: prune the vocabulary first and recover with the "
        "pruned tokenizer, so the model learns how text outside the corpus now splits (on by default); off: "
        "recover with the original tokenizer, then prune the vocabulary (exact on the corpus only). A token "
        "classifier always recovers first (its distillation reads words token for token as the teacher does).",
    )
    batch_size: int = Field(32, ge=1, description="Batch size of the recovery distillation.")
    augment: int = Field(
        0, ge=0, le=20,
        description="Extra copies of every training text with words swapped for embedding neighbours, "
        "labelled by the teacher (distill's --augment; text only). Worth it for long recoveries from the teacher.",
    )
    augment_join: int = Field(
        0, ge=0, le=20,
        description="Sentence-length copies of the training texts, each joined to another of the same label "
        "(distill's --augment-join; text only).",
    )
    average: bool = Field(
        False,
        description="The recovered weights are the mean of 8 snapshots over its second half (distill's "
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


class Budget(Section):
    """A device profile's budget: the head/FFN ratios are raised until the exported model meets it."""

    profile: str | None = Field(
        None,
        description="Device profile (name or file): raise the head/FFN ratios in steps of 0.1 until its "
        "max_model_size_mb and latency budgets hold for the exported model.",
    )
    precision: BudgetPrecision = Field(
        BudgetPrecision.int8,
        description="Precision the deployed model will have: budget candidates are exported to ONNX and, for "
        "int8, dynamically quantized before their size and latency are measured.",
    )
    max_ratio: float = Field(
        0.9, gt=0, lt=1, description="Largest head/FFN pruning ratio the budget search may reach."
    )


#: recovery settings that change what the recovery does: refused when there is no recovery
RECOVERY_ONLY = ("recovery.augment", "recovery.augment_join", "recovery.average")


class PruneConfig(Settings):
    """Settings of ``edgecompress prune``."""

    MOVED: ClassVar[dict[str, str]] = {
        "vocab_corpus": "vocab.corpus", "vocab_keep_alphabet": "vocab.keep_alphabet", "vocab_floor": "vocab.floor",
        "samples": "importance.samples", "importance_data": "importance.data",
        "recover_steps": "recovery.steps", "recover_lr": "recovery.lr", "recover_after_vocab": "recovery.after_vocab",
        "recover_batch_size": "recovery.batch_size", "recover_augment": "recovery.augment",
        "recover_augment_join": "recovery.augment_join", "recover_average": "recovery.average",
        "teacher": "recovery.teacher", "teacher_cache": "recovery.teacher_cache",
        "profile": "budget.profile", "budget_precision": "budget.precision", "max_ratio": "budget.max_ratio",
    }

    # --- what to remove ------------------------------------------------------------------------------
    heads: float = Field(
        0.0, ge=0, lt=1,
        description="Fraction of all attention heads to remove, least important first (Taylor importance, "
        "normalised per layer); every layer keeps at least one head. Causal LMs: the fraction of every layer's query "
        "heads (one head count for all layers), by --head-unit.",
    )
    head_unit: HeadUnit | None = Field(
        None,
        description="Causal LMs with grouped-query attention: 'query' removes the same number of query heads from "
        "every key/value group (the KV cache keeps its size), 'group' whole groups with their key/value heads (the "
        "KV cache shrinks); default: 'query' where --heads allows it, else 'group'.",
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
    sparsity: float | str | None = Field(
        None,
        description="Zero this fraction of the encoder's Linear weights by global magnitude (e.g. 0.5), or "
        "'2:4' (two of every four consecutive input weights). Makes the weights compress, not run faster "
        "on CPU runtimes (see the manifest note).",
    )
    vocab: Vocab = Field(default_factory=Vocab, description="Vocabulary pruning.")
    # --- how -----------------------------------------------------------------------------------------
    importance: Importance = Field(default_factory=Importance, description="The importance scores' data sample.")
    recovery: Recovery = Field(default_factory=Recovery, description="Recovery distillation after pruning.")
    budget: Budget = Field(default_factory=Budget, description="Pruning raised until a profile's budget holds.")
    max_length: int = Field(128, ge=8, description="Truncate texts to this many tokens (scores and recovery).")
    text_column: str | None = Field(None, description="Text column of the data files (auto-detected).")
    label_column: str | None = Field(None, description="Label column of the data files (auto-detected).")
    seed: int = Field(42, description="Seed for the data sample, random projections and recovery.")
    allow_pickle: bool = Field(False, description="Allow pickled (.bin) weights.")
    trust_remote_code: bool = Field(False, description="Allow checkpoints with custom code (auto_map).")

    @model_validator(mode="after")
    def _recovery_given(self) -> PruneConfig:
        """A setting of the recovery is refused when there is no recovery (``recovery.steps`` 0)."""
        if not self.recovery.steps:
            for path in RECOVERY_ONLY:
                if getattr(self.recovery, path.split(".")[1]):
                    raise refuse(f"{self.option(path)} is a setting of the recovery, and there is no recovery: "
                                 f"set {self.option('recovery.steps')}, or leave it out")
        return self

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
        return bool(self.heads or self.ffn or self.drop_layers or self.budget.profile)
