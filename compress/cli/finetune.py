from __future__ import annotations

import os
from pathlib import Path

import click

from compress.cli._common import PhaseProgress, build_config, console, force_option, section_help
from compress.stages.finetune.config import TASKS, FinetuneConfig

F = FinetuneConfig.flat_fields()


def _names(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _freeze(value: str) -> int | str:
    return int(value) if value.strip().isdigit() else value.strip()


@click.command("finetune")
@click.argument("base", type=click.Path(path_type=Path))
@click.option("--train", required=True, type=click.Path(path_type=Path),
              help="Labelled training data: a table (CSV/TSV/JSONL) of texts and labels; for token-classification "
                   "a CoNLL / JSON lines file of words and tags; for an image base class folders, a table of "
                   "path,label or an .npz; for regression the label column (or an .npz's labels) holds numbers; for "
                   "a causal LM text: a .txt file or JSON lines of {\"text\": ...} (every token trained), or JSON "
                   "lines of {\"prompt\": ..., \"response\": ...} (the loss on the response only).")
@click.option("--eval", "--eval-data", "-d", "eval_data", type=click.Path(path_type=Path),
              help="Labelled eval data (for a causal LM, text as --train: judged by perplexity): evaluated every "
                   "--eval-every steps, the best checkpoint kept.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Fine-tuned checkpoint (artifact).")
@click.option("--retain-data", type=click.Path(path_type=Path),
              help="Data of the base's own domain (texts, or images): how much of its behaviour the fine-tune kept "
                   "is measured on it (embedding cosine, neighbour agreement; for an image classifier base, its own "
                   "head's agreement; for a causal LM, its perplexity before and after) and recorded as forgetting.")
@click.option("--task", type=click.Choice([t.value for t in TASKS]), help=F["task"].description)
@click.option("--labels", help="Comma-separated class names by id (default: the data's).")
@click.option("--freeze", default="0", show_default=True, metavar="N|all", help=F["freeze"].description)
@click.option("--lora-rank", type=int, help=F["lora_rank"].description)
@click.option("--lora-alpha", type=int, help=F["lora_alpha"].description)
@click.option("--lora-dropout", type=float, default=F["lora_dropout"].default, show_default=True,
              help=F["lora_dropout"].description)
@click.option("--lora-targets", help="Comma-separated module names LoRA wraps, or all-linear (default: every linear "
              "layer of an encoder, a causal LM's attention projections as peft seeds them: q_proj,v_proj for Llama).")
@click.option("--qlora", is_flag=True, help=F["qlora"].description)
@click.option("--prompt-field", default=F["prompt_field"].default, show_default=True,
              help=section_help("Causal LMs", F["prompt_field"].description))
@click.option("--response-field", default=F["response_field"].default, show_default=True,
              help=section_help("Causal LMs", F["response_field"].description))
@click.option("--epochs", type=float, default=F["epochs"].default, show_default=True, help=F["epochs"].description)
@click.option("--max-steps", type=int, help=F["max_steps"].description)
@click.option("--batch-size", type=int, default=F["batch_size"].default, show_default=True,
              help=F["batch_size"].description)
@click.option("--lr", type=float, help=F["lr"].description)
@click.option("--weight-decay", type=float, default=F["weight_decay"].default, show_default=True,
              help=F["weight_decay"].description)
@click.option("--warmup-ratio", type=float, default=F["warmup_ratio"].default, show_default=True,
              help=F["warmup_ratio"].description)
@click.option("--max-length", type=int, default=F["max_length"].default, show_default=True,
              help=F["max_length"].description)
@click.option("--shift", type=float, default=F["shift"].default, show_default=True,
              help=section_help("Images", F["shift"].description))
@click.option("--eval-every", type=int, help=F["eval_every"].description)
@click.option("--patience", type=int, help=F["patience"].description)
@click.option("--save-every", type=int, help=F["save_every"].description)
@click.option("--seed", type=int, default=0, show_default=True, help=F["seed"].description)
@click.option("--run-dir", type=click.Path(path_type=Path), help="Checkpoints (default: OUT.run, removed after success).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in the run directory.")
@click.option("--allow-pickle", is_flag=True, help=F["allow_pickle"].description)
@force_option
def finetune_cmd(base, train, eval_data, out, retain_data, task, labels, freeze, lora_rank, lora_alpha, lora_dropout,
                 lora_targets, qlora, prompt_field, response_field, epochs, max_steps, batch_size, lr, weight_decay, warmup_ratio, max_length, shift, eval_every, patience,
                 save_every, seed, run_dir, resume, allow_pickle, force):
    """Fine-tune a pretrained BASE (all-MiniLM-L6-v2, a causal LM, an ImageNet CNN, a ViT) into the teacher the chain
    starts from.

    \b
    BASE is a Hugging Face checkpoint directory (a text encoder, a causal LM, an image
    classifier or backbone) or a timm checkpoint. A causal LM (task text-generation)
    keeps its own head and learns the --train text (documents, or prompt/response rows
    with the loss on the response only), judged by perplexity. Other bases get a new
    head for the task and the data's labels (for --task regression, one output per
    target, MSE loss, MAE the eval metric; for --task question-answering, a span head
    trained on SQuAD-format JSON, contexts in windows of --max-length tokens, SQuAD F1
    the eval metric). Then one of:
      (default)           every weight trains; learning rate 5e-5 (text), 5e-4 (images)
      --freeze N          the embeddings (a CNN's stem) and the first N layers (blocks) stay
                          as pretrained; --freeze all: only the new head trains
      --lora-rank R       low-rank adapters (peft LoRA, every linear layer; a causal LM's
                          attention projections), learning rate 5e-4, merged into the weights
                          before the checkpoint is written
      --lora-rank R --qlora   the same adapters over a causal LM held in 4 bits (NF4,
                          bitsandbytes), merged into the dequantized FP32 weights

    AdamW with linear warm-up (--warmup-ratio) and decay; with --eval, the best checkpoint is
    kept and --patience stops early. Runs on a CUDA GPU when there is one, else the CPU. Ctrl-C
    saves a checkpoint; rerun the same command with --resume to continue. The artifact's lineage
    starts at BASE: distil, prune and quantize it as any teacher.
    """
    from compress.stages.finetune import finetune

    config = build_config(
        FinetuneConfig, task=task, labels=_names(labels), freeze=_freeze(freeze), lora_rank=lora_rank,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=_names(lora_targets), qlora=qlora or None,
        prompt_field=prompt_field, response_field=response_field, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
        max_length=max_length, shift=shift, eval_every=eval_every, patience=patience, save_every=save_every, seed=seed,
        allow_pickle=allow_pickle,
    )
    with _Progress() as progress:
        result = finetune(base, train, out, config, eval_data=eval_data, retain_data=retain_data, run_dir=run_dir,
                          resume=resume, force=force, progress=progress)
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch the main process reports
        return
    m = result.metrics
    line = (f"wrote [bold]{result.artifact.path}[/]: {m['mode']}, {m['trainable_parameters'] / 1e6:.2f}M of "
            f"{m['parameters'] / 1e6:.1f}M parameters trained, {m['steps']} steps in {m['train_seconds']:.0f} s")
    if m.get("eval_metric") is not None:
        line += f"; eval {m['metric']} {m['eval_metric']:.4f} ({m['chosen']} checkpoint)"
        if m.get("eval_scores"):  # a regressor: R² beside its MAE
            line += f", R² {m['eval_scores']['r2']:.3f}"
        if m.get("eval_squad"):  # a question answerer: exact match beside its F1
            line += f", exact match {m['eval_squad']['exact_match']:.4f}"
    if m.get("eval_perplexity") is not None:  # a causal LM: the base's perplexity beside the fine-tune's
        line += f", the base's {m['base_eval_perplexity']:.4g}"
    if m.get("memory") and m["mode"] in ("lora", "qlora"):
        line += f"; base held in {m['memory']['base_weight_bytes'] / 2**20:.1f} MiB"
    f = m.get("forgetting")
    if f and "perplexity" in f:
        line += (f"; retained text's perplexity {f['base_perplexity']:.4g} -> {f['perplexity']:.4g} "
                 f"({f['perplexity_increase']:+.1%}) on {f['retain_windows']} windows")
    elif f:
        line += (f"; kept of the base on {f['retain_rows']} retained rows: embedding cosine "
                 f"{f['embedding_cosine']:.3f}, neighbour agreement {f['neighbour_agreement']:.3f}")
        if f.get("head_agreement") is not None:
            line += f", its head's agreement {f['head_agreement']:.3f}"
    console().print(line)


class _Progress(PhaseProgress):
    """Training with loss, best eval metric and ETA."""

    labels = {"train": "fine-tuning"}

    def show(self, d: dict) -> None:
        best = f" best {d['metric']} {d['best']:.4f}" if d.get("best") is not None else ""
        bar = self.task("train", "fine-tuning", d["total"], completed=d["step"] - 1)
        self.bar.update(bar, completed=d["step"], info=f"loss {d['loss']:.4f}{best}")
