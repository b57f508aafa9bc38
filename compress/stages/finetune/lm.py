"""``finetune --task text-generation``: a causal LM (a Hugging Face ``…ForCausalLM`` folder) trained on its own
head, next-token prediction, on text of the task.

* **Data** (:func:`compress.data.text.read_training_texts`): documents (a ``.txt`` file, ``{"text": ...}`` lines) are
  continuation data: tokenized (BOS where the tokenizer adds it, EOS after each), joined and cut into sequences of
  ``--max-length`` tokens, every token trained (Hugging Face ``run_clm``'s grouping). Instruction rows
  (``{"prompt": ..., "response": ...}``) are one sequence each, the prompt then the response and EOS, the loss on the
  response's tokens only (the prompt's labels are ignored), as TRL's prompt-completion training.
* **Modes**: every weight; ``--freeze N`` (the embeddings, and with them a tied output head, and the first N layers
  kept); ``--lora-rank R`` (peft; the attention projections peft seeds for the model type by default, ``--lora-targets
  all-linear`` for every linear layer but the head); ``--qlora`` (:mod:`compress.stages.finetune.qlora`: the same
  adapters over a base held in NF4). Adapters are merged before the checkpoint is written: a plain FP32 checkpoint.
* **Judged** by perplexity on ``--eval`` (the trained tokens' mean negative log-likelihood, exponentiated: the
  responses' only for instruction rows), the best checkpoint kept; forgetting on ``--retain-data`` (text of the
  base's own domain) as the base's and the fine-tune's perplexity, llama-perplexity's windows
  (:mod:`compress.tasks.generation`, what validate measures). The memory the base is held in while training (its
  weights' bytes, and the process's peak resident memory over the training phase) is recorded for every mode.
"""

from __future__ import annotations

import gc
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError, DataError
from compress.stages.finetune.common import (
    FinetuneResult,
    data_record,
    lora_targets,
    run_record,
    train_loop,
    wrap_lora,
    write_checkpoint,
)
from compress.stages.finetune.config import FinetuneConfig, Mode

log = logging.getLogger("compress.stages.finetune")

__all__ = ["RETAIN_WINDOWS", "LMRows", "finetune_causal_lm", "lm_rows", "retain_perplexity", "rows_perplexity"]

#: retained text measured at most: this many perplexity windows (the first ones)
RETAIN_WINDOWS = 64
#: label of a token that is not trained (PyTorch's cross-entropy ignore_index)
IGNORE = -100


class LMRows:
    """Token sequences with their labels (the ids, or :data:`IGNORE` where a token is not trained), as the training
    loop reads rows: ``len``, ``lengths`` and ``collate`` (a batch padded on the right to its longest)."""

    def __init__(self, ids: list[np.ndarray], labels: list[np.ndarray], pad: int, *, instruction: bool,
                 rows: int, dropped: int = 0) -> None:
        self.ids, self.labels, self.pad = ids, labels, pad
        self.instruction, self.rows, self.dropped = instruction, rows, dropped
        self.lengths = np.asarray([len(x) for x in ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def trained_tokens(self) -> int:
        """Tokens whose next-token prediction is trained (a sequence's first token predicts nothing)."""
        return int(sum((lab[1:] != IGNORE).sum() for lab in self.labels))

    def collate(self, idx: list[int]) -> dict[str, Any]:
        import torch

        width = int(self.lengths[idx].max())
        ids = np.full((len(idx), width), self.pad, dtype=np.int64)
        labels = np.full((len(idx), width), IGNORE, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = len(self.ids[i])
            ids[row, :n], labels[row, :n], mask[row, :n] = self.ids[i], self.labels[i], 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(labels), "index": torch.tensor(idx, dtype=torch.long)}

    def record(self) -> dict[str, Any]:
        return {"rows": self.rows, "sequences": len(self), "trained_tokens": self.trained_tokens,
                "kind": "instruction" if self.instruction else "continuation", "dropped_rows": self.dropped}


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def lm_rows(tokenizer, data: list, length: int, source: str = "the data") -> LMRows:
    """``data`` (documents, or :class:`compress.data.text.PromptResponse` rows) as training sequences of at most
    ``length`` tokens. An instruction row whose prompt fills the window has no response token left: it is dropped and
    counted; all dropped is a one-line error."""
    from compress.data.text import PromptResponse, encode

    eos = getattr(tokenizer, "eos_token_id", None)
    tail = [] if eos is None else [int(eos)]
    if not data or not isinstance(data[0], PromptResponse):  # continuation: documents joined and cut
        ids = np.asarray([t for doc in data for t in [*encode(tokenizer, doc), *tail]], dtype=np.int64)
        if len(ids) < 2:
            raise DataError(f"{source}: fewer than two tokens of text", hint="give text to train on")
        blocks = [ids[i:i + length] for i in range(0, len(ids), length)]
        blocks = [b for b in blocks if len(b) >= 2]
        return LMRows(blocks, [b.copy() for b in blocks], _pad_id(tokenizer), instruction=False, rows=len(data))
    seqs, labels, dropped = [], [], 0
    for row in data:
        prompt = encode(tokenizer, row.prompt)
        response = list(tokenizer(row.response, add_special_tokens=False, verbose=False)["input_ids"]) + tail
        ids = np.asarray(prompt + response, dtype=np.int64)[:length]
        if len(prompt) >= len(ids):
            dropped += 1
            continue
        lab = ids.copy()
        lab[:len(prompt)] = IGNORE
        seqs.append(ids)
        labels.append(lab)
    if not seqs:
        raise DataError(f"{source}: every prompt fills the --max-length {length} window: no response token is left to "
                        "train on", hint="raise --max-length (up to the model's context), or shorten the prompts")
    return LMRows(seqs, labels, _pad_id(tokenizer), instruction=True, rows=len(data), dropped=dropped)


def rows_perplexity(model, rows: LMRows, batch_size: int = 16) -> float:
    """exp of the mean negative log-likelihood of ``rows``' trained tokens under ``model`` (responses only for
    instruction rows)."""
    import torch

    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = rows.collate(list(range(i, min(i + batch_size, len(rows)))))
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            logits = out.logits[:, :-1].float()
            targets = batch["labels"][:, 1:].to(device)
            nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                           ignore_index=IGNORE, reduction="sum"))
            count += int((targets != IGNORE).sum())
    return math.exp(nll / max(count, 1))


def _retain_windows(tokenizer, path, context: int) -> np.ndarray:
    """The retained text as llama-perplexity's windows (validate's default window, within the context)."""
    from compress.data.text import read_texts, token_windows
    from compress.tasks.generation import GenerationPostprocess

    window = min(GenerationPostprocess().window, context)
    try:
        return token_windows(tokenizer, read_texts(path), window, max_windows=RETAIN_WINDOWS)
    except ConfigError as e:
        raise DataError(f"--retain-data {path}: {e.message}", hint="give more text of the base's own domain") from None


def retain_perplexity(model, tokenizer, config: dict[str, Any], path: Path, windows: np.ndarray) -> float:
    """Perplexity of ``model`` on ``windows`` as validate measures it (:class:`compress.tasks.generation.
    GenerationStream`: the second half of each window scored)."""
    from compress.tasks.generation import GenerationStream
    from compress.teachers.lm import CausalLM

    stream = GenerationStream()
    for logits, i in zip(CausalLM(model.eval(), tokenizer, path, config).logits(windows, batch_size=8),
                         range(0, len(windows), 8), strict=True):
        stream.update(logits, labels=windows[i:i + 8])
    return float(stream.result()["perplexity"])


def _check(config: FinetuneConfig) -> None:
    if config.labels:
        raise ConfigError("--labels names classes, and a causal LM predicts tokens: it has none",
                          hint="leave --labels out")
    if config.freeze == "all":
        raise ConfigError("--freeze all: a causal LM gets no new head, so nothing would train",
                          hint="--freeze N keeps the embeddings and the first N layers; or --lora-rank R")


def finetune_causal_lm(base: Path, train, output, config: FinetuneConfig, *, eval_data, retain_data, run: Path,
                       resume: bool, force: bool, progress) -> FinetuneResult:
    """Fine-tune the causal LM at ``base`` on ``train`` (documents or prompt/response rows) and write the merged FP32
    checkpoint (a text-generation teacher, with the base's tokenizer and generation defaults)."""
    from compress.data.text import read_training_texts
    from compress.stages.finetune.qlora import held_bytes
    from compress.tasks.generation import GENERATION_FILES
    from compress.teachers.lm_config import cache_of
    from compress.teachers.load import load_teacher

    _check(config)
    backend = None
    if config.lora.qlora:
        from compress.stages.finetune.qlora import nf4_backend

        backend = nf4_backend()  # before any work: the refusal names the package to install
    fields = dict(prompt_field=config.instructions.prompt_field, response_field=config.instructions.response_field)
    train_texts = read_training_texts(train, **fields)
    eval_texts = read_training_texts(eval_data, **fields) if eval_data is not None else None
    base_teacher = load_teacher(base, config.task, allow_pickle=config.allow_pickle)
    tokenizer, model_config = base_teacher.tokenizer, base_teacher.info.config
    context = cache_of(model_config).max_length
    length = min(config.max_length, context)
    train_set = lm_rows(tokenizer, train_texts, length, str(train))
    eval_set = lm_rows(tokenizer, eval_texts, length, str(eval_data)) if eval_texts is not None else None
    retain = _retain_windows(tokenizer, retain_data, context) if retain_data is not None else None
    before = _measure(base_teacher.model, tokenizer, model_config, base, eval_set, retain)  # the base's figures
    model, trainable, frozen, targets = _model(base_teacher, config)
    _release_freed_memory()
    _reset_peak_rss()
    start_rss = _current_rss()
    held = held_bytes(model)
    loop = train_loop(model, trainable, train_set, config, run, progress, lr=config.peak_lr(),
                     loss=lambda m, batch: m(**batch).loss,
                     evaluate=(lambda m: rows_perplexity(m, eval_set)) if eval_set is not None else None,
                     metric_name="perplexity", frozen_modules=frozen, higher_is_better=False)
    loop.start(resume, force)
    loop.train()
    train_peak = _peak_rss()
    final = loop.finish()  # best weights, adapters merged (a 4-bit base dequantized): a plain FP32 model
    if not loop.is_main:
        return FinetuneResult(*loop.follow(output))
    after = _measure(final, tokenizer, model_config, base, eval_set, retain)
    metrics = {**run_record(loop, config), "mode": "qlora" if config.lora.qlora else str(config.mode),
               "frozen_layers": config.freeze, "base": str(base), "window": length,
               "train": train_set.record(), "train_rows": train_set.rows, "eval_rows": eval_set.rows if eval_set else 0,
               "data": data_record(train, eval_data),
               "memory": {"base_weight_bytes": held["base"], "trained_bytes": held["trained"],
                          "train_start_rss_mb": start_rss, "train_peak_rss_mb": train_peak}}
    if config.mode is Mode.lora:
        metrics["lora"]["targets"] = targets
    if backend is not None:  # the loop counted the 4-bit weights' packed codes: count the merged model's, as for LoRA
        metrics["parameters"] = sum(p.numel() for p in final.parameters())
        metrics["trainable_share"] = metrics["trainable_parameters"] / metrics["parameters"]
        metrics["lora"]["base"] = {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                   "backend": f"bitsandbytes {backend}", "merged_into": "the dequantized base, FP32"}
    if eval_set is not None:
        metrics["eval_perplexity"], metrics["base_eval_perplexity"] = after["eval"], before["eval"]
    if retain is not None:
        metrics["forgetting"] = {"retain_windows": len(retain), "window": int(retain.shape[1]),
                                 "base_perplexity": before["retain"], "perplexity": after["retain"],
                                 "perplexity_increase": after["retain"] / before["retain"] - 1.0,
                                 "data": str(retain_data)}
    artifact = write_checkpoint(output, final, tokenizer, base_teacher, config.task, metrics,
                                travel=GENERATION_FILES)
    loop.written()
    return FinetuneResult(artifact, metrics)


def _measure(model, tokenizer, model_config, base, eval_set, retain) -> dict[str, float | None]:
    """The task's perplexity on the eval rows and the retained text's, of ``model`` (None where there is no data)."""
    model.eval()
    return {"eval": rows_perplexity(model, eval_set) if eval_set is not None else None,
            "retain": retain_perplexity(model, tokenizer, model_config, base, retain) if retain is not None else None}


def _model(base_teacher, config: FinetuneConfig):
    """``(model to train, its trainable parameters, frozen modules, LoRA targets)``: the base teacher's own model
    (full, frozen layers, LoRA), or for QLoRA the base loaded again in NF4 (the FP32 copy released first)."""
    import torch

    torch.manual_seed(config.seed)  # the adapters' initialisation
    model = base_teacher.model
    if config.lora.qlora:
        base_teacher.model = model = None
        gc.collect()
        return _qlora(base_teacher.path, config)
    frozen: list = []
    targets = None
    if config.mode is Mode.frozen:
        frozen = _freeze(model, config.freeze)
    elif config.mode is Mode.lora:
        model, targets = _lora(model, config)
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad], frozen, targets


def _freeze(model, n: int) -> list:
    from compress.stages.common import layer_list

    _, layers = layer_list(model)
    if n > len(layers):
        raise ConfigError(f"--freeze {n}: the base has {len(layers)} layers",
                          hint=f"freeze at most {len(layers)}, or --lora-rank R to train adapters")
    frozen = [model.get_input_embeddings(), *layers[:n]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def _default_targets(model) -> list[str]:
    """The attention projections peft seeds LoRA with for the model type (Llama's q_proj and v_proj, as the LoRA
    paper's W_q and W_v)."""
    try:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as SEEDS
    except ImportError:  # peft before 0.11 keeps it in its constants
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as SEEDS
    kind = model.config.model_type
    if kind not in SEEDS:
        raise ConfigError(f"--lora-rank: peft names no default projections for {kind}",
                          hint="name them with --lora-targets (e.g. q_proj,v_proj), or --lora-targets all-linear")
    return list(SEEDS[kind])


def _lora(model, config: FinetuneConfig):
    from compress._optional import require

    require("peft", "--lora-rank (LoRA adapters)")
    from peft import LoraConfig, TaskType

    targets = lora_targets(config, None) or _default_targets(model)
    wrapped = wrap_lora(model, config, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=config.lora.rank, lora_alpha=config.lora.alpha or 2 * config.lora.rank,
        lora_dropout=config.lora.dropout, target_modules=targets))
    return wrapped, targets


def _qlora(base: Path, config: FinetuneConfig):
    import torch
    from transformers import AutoModelForCausalLM

    from compress.stages.finetune.qlora import NF4Adapters, load_nf4

    device = "cuda" if torch.cuda.is_available() else "cpu"
    peft_model, targets = _lora(load_nf4(base, device), config)

    def load_fp32():
        return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True,
                                                    use_safetensors=not config.allow_pickle or None)

    model = NF4Adapters(peft_model, load_fp32)
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad], [], targets


def _release_freed_memory() -> None:
    """Collect the released FP32 model and hand the heap's free pages back to the system (glibc's ``malloc_trim``),
    so that the resident memory QLoRA trains in is not the FP32 copy's, freed but still held by the allocator."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        pass


def _current_rss() -> float:
    """This process's resident memory now (Linux VmRSS), MB; 0.0 where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return 0.0


def _reset_peak_rss() -> None:
    """Start the peak resident memory (Linux VmHWM) afresh, so that what :func:`_peak_rss` reads is the training
    phase's (the FP32 base QLoRA released before it does not count); elsewhere the process's peak stays."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> float:
    from compress.device.facts import peak_rss_mb

    return round(peak_rss_mb(), 1)
