from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import PhaseProgress, build_config, console, force_option, retention_text, section_help
from compress.stages.prune.config import PruneConfig

F = PruneConfig.flat_fields()


@click.command("prune")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Pruned (PyTorch) artifact directory.")
@click.option("--channels", type=float, help=F["channels"].description)
@click.option("--heads", type=float, help=F["heads"].description)
@click.option("--head-unit", type=click.Choice(["query", "group"]), help=F["head_unit"].description)
@click.option("--ffn", type=float, help=F["ffn"].description)
@click.option("--drop-layers", type=int, help=F["drop_layers"].description)
@click.option("--vocab-corpus", type=click.Path(path_type=Path), help=F["vocab_corpus"].description)
@click.option("--no-alphabet", is_flag=True,
              help="Vocabulary pruning: do not keep the single-character tokens (words outside the corpus become [UNK]).")
@click.option("--vocab-floor", type=int, default=0, show_default=True, help=F["vocab_floor"].description)
@click.option("--sparsity", help=F["sparsity"].description)
@click.option("--samples", type=int, default=F["samples"].default, show_default=True, help=F["samples"].description)
@click.option("--data", "importance_data", type=click.Path(path_type=Path), help=F["importance_data"].description)
@click.option("--recover-steps", type=int, default=0, show_default=True, help=F["recover_steps"].description)
@click.option("--recover-before-vocab", is_flag=True,
              help="Recover with the original tokenizer and prune the vocabulary afterwards (the default prunes the "
                   "vocabulary first, so recovery learns how text outside the corpus now splits).")
@click.option("--train", type=click.Path(path_type=Path),
              help="Transfer data for recovery (and the default importance sample); labels optional.")
@click.option("--eval", "--eval-data", "-d", "eval_data", type=click.Path(path_type=Path),
              help="Eval data: recovery metric vs the teacher, and vocabulary coverage of held-out text (causal LMs: "
                   "perplexity before and after).")
@click.option("--teacher", "-t", type=click.Path(path_type=Path), help=F["teacher"].description)
@click.option("--teacher-cache", type=click.Path(path_type=Path), help=F["teacher_cache"].description)
@click.option("--recover-lr", type=float, default=F["recover_lr"].default, show_default=True,
              help=F["recover_lr"].description)
@click.option("--recover-augment", type=int, default=0, show_default=True,
              help=section_help("Recovery", F["recover_augment"].description))
@click.option("--recover-augment-join", type=int, default=0, show_default=True,
              help=section_help("Recovery", F["recover_augment_join"].description))
@click.option("--recover-average", is_flag=True, help=section_help("Recovery", F["recover_average"].description))
@click.option("--batch-size", type=int, default=F["recover_batch_size"].default, show_default=True,
              help=F["recover_batch_size"].description)
@click.option("--max-length", type=int, default=F["max_length"].default, show_default=True,
              help=F["max_length"].description)
@click.option("--profile", "-p", "profile_name", help=F["profile"].description)
@click.option("--budget-precision", type=click.Choice(["int8", "fp32"]), default="int8", show_default=True,
              help=F["budget_precision"].description)
@click.option("--seed", type=int, default=F["seed"].default, show_default=True, help=F["seed"].description)
@click.option("--text-column", help="Text column (auto-detected).")
@click.option("--label-column", help="Label column (auto-detected).")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled (.bin) weights.")
@click.option("--trust-remote-code", is_flag=True, help="Allow checkpoints with custom code.")
@force_option
def prune_cmd(source, out, channels, heads, head_unit, ffn, drop_layers, vocab_corpus, no_alphabet, vocab_floor, sparsity, samples, importance_data,
              recover_steps, recover_before_vocab, train, eval_data, teacher, teacher_cache, recover_lr, recover_augment, recover_augment_join, recover_average, batch_size, max_length, profile_name,
              budget_precision, seed, text_column, label_column, allow_pickle, trust_remote_code, force):
    """Prune SOURCE (a fine-tuned checkpoint or a PyTorch artifact) into a smaller model.

    \b
    Structured (smaller tensors, faster everywhere):
      --heads R        remove fraction R of the attention heads (Taylor importance)
      --ffn R          remove fraction R of every layer's FFN neurons
      --drop-layers N  remove the N layers whose removal changes the outputs least
      --profile P      raise --heads/--ffn until P's size/latency budget holds
    Vocabulary (exact on the corpus, proven before writing):
      --vocab-corpus DATA
    Sparsity (zeros: smaller when compressed, not faster on CPU runtimes):
      --sparsity 0.5 | --sparsity 2:4
    Causal LMs (Llama, Qwen2, Qwen3; scored on --train/--data text, perplexity on --eval):
      --heads R        remove fraction R of every layer's query heads, --head-unit query|group
                       (evenly from every key/value group, or whole groups)
      --ffn, --drop-layers, --vocab-corpus TEXT as above (embedding and LM head shrink together)
    Image CNNs (channels removed with their BatchNorm and residual partners, Torch-Pruning):
      --channels R     remove fraction R of every convolution's channels; the result is a .pt2 program
    Recovery: --recover-steps N --train DATA distils from the unpruned model.

    The artifact is a Hugging Face checkpoint: `edgecompress export` turns it into ONNX.
    """
    from click.core import ParameterSource

    from compress.stages.prune import prune

    if click.get_current_context().get_parameter_source("max_length") is ParameterSource.DEFAULT:
        max_length = None  # left at its default: cut to a causal LM's context rather than refused
    config = build_config(
        PruneConfig, channels=channels, heads=heads, head_unit=head_unit, ffn=ffn, drop_layers=drop_layers,
        vocab_corpus=str(vocab_corpus) if vocab_corpus else None, vocab_keep_alphabet=not no_alphabet,
        vocab_floor=vocab_floor, sparsity=sparsity, samples=samples,
        importance_data=str(importance_data) if importance_data else None,
        max_length=max_length, recover_steps=recover_steps, recover_after_vocab=not recover_before_vocab, recover_lr=recover_lr, recover_augment=recover_augment,
        recover_augment_join=recover_augment_join, recover_average=recover_average, recover_batch_size=batch_size,
        teacher=str(teacher) if teacher else None, teacher_cache=str(teacher_cache) if teacher_cache else None,
        profile=profile_name, budget_precision=budget_precision,
        seed=seed, text_column=text_column, label_column=label_column, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    with _Progress() as progress:
        art = prune(source, out, config, train=train, eval_data=eval_data, force=force, progress=progress)
    m = art.manifest.steps[-1].metrics
    con = console()
    con.print(f"wrote [bold]{art.path}[/]: {m['parameters_after'] / 1e6:.2f}M parameters "
              f"(was {m['parameters_before'] / 1e6:.2f}M, {m['parameter_ratio']:.2f}x), "
              f"{m['size_bytes_after'] / 1e6:.1f} MB (was {m['size_bytes_before'] / 1e6:.1f} MB)")
    for line in summary_lines(m):
        con.print("  " + line, highlight=False)


def summary_lines(m: dict) -> list[str]:
    """One line per thing the prune step did (shared with `inspect`)."""
    lines = []
    if "macs_after" in m:
        lines.append(f"channels: {m['channels']:.0%} of every prunable convolution's ({m['groups']} groups); "
                     f"{m['macs_before'] / 1e6:.1f}M -> {m['macs_after'] / 1e6:.1f}M multiply-adds per image")
    if "eval_accuracy" in m and "teacher_eval_accuracy" in m:  # image models: the written model's accuracy
        ret = f", retention {m['retention']:.3f}" if m.get("retention") is not None else ""
        before = (f"; before recovery {m['eval_accuracy_before_recovery']:.4f}"
                  if "eval_accuracy_before_recovery" in m else "")
        lines.append(f"eval accuracy {m['eval_accuracy']:.4f} (teacher {m['teacher_eval_accuracy']:.4f}{ret}{before})")
    if "budget" in m:
        b = m["budget"]
        lim = ", ".join(f"{k} {v:g}" for k, v in b["budgets"].items() if v is not None)
        lines.append(f"budget ({b['profile']}, {b['precision']}: {lim}): chose heads {b['chosen']['heads']:g}, "
                     f"ffn {b['chosen']['ffn']:g} after {len(b['candidates'])} candidates")
    if "layers" in m:
        lines.append(f"layers: {m['layers']['before']} -> {m['layers']['after']} (dropped {m['layers']['dropped']})")
    if "heads" in m:
        h = m["heads"]
        kv = f", key/value heads {h['kv_heads_before']} -> {h['kv_heads_after']} ({h['unit']}-wise)" if "unit" in h else ""
        lines.append(f"heads: {h['before']} -> {h['after']} (per layer {h['per_layer_after']}){kv}")
        lines += [f"  note: {n}" for n in h.get("notes", [])]
    if "ffn" in m:
        lines.append(f"ffn: {m['ffn']['before']} -> {m['ffn']['after']} neurons per layer")
    if "vocab" in m:
        v = m["vocab"]
        cov = ""
        if "eval_coverage" in v:
            cov = (f"; held-out tokens kept {v['eval_coverage']['token_coverage']:.1%}, texts unchanged "
                   f"{v['eval_coverage']['texts_unchanged']:.1%}")
        lines.append(f"vocabulary: {v['before']:,} -> {v['after']:,} tokens; proven identical on "
                     f"{v['proof']['texts']:,} corpus texts ({v['proof']['tokens']:,} tokens){cov}")
    if "sparsity" in m:
        s = m["sparsity"]
        gz = ""
        if s.get("gzip_bytes_before"):
            gz = f"; gzip of those weights {s['gzip_bytes_before'] / 1e6:.1f} -> {s['gzip_bytes_after'] / 1e6:.1f} MB"
        lines.append(f"sparsity ({s['mode']}): {s['achieved']:.1%} of encoder Linear weights are zero{gz}")
        lines.append(f"  note: {s.get('runtime_note') or 'no speed-up and no smaller file on ONNX Runtime/OpenVINO CPU'}"
                     "; only the compressed size shrinks")
    if "recovery" in m:
        r = m["recovery"]
        ev = ""
        if r.get("after") and r.get("before"):  # a causal LM's: against the unpruned model on the eval windows
            ev = (f"; top-1 agreement with the unpruned {r['before']['top1_agreement']:.3f} -> "
                  f"{r['after']['top1_agreement']:.3f}, perplexity {r['before']['perplexity']:.3f} -> "
                  f"{r['after']['perplexity']:.3f}")
        elif r.get("eval_metric") is not None and "eval" not in m:  # superseded by the written model's score
            ev = (f"; eval {r['metric']} {r['eval_metric']:.4f} vs unpruned {r['teacher_eval_metric']:.4f} "
                  f"(retention {retention_text(r.get('retention'))})")
        lines.append(f"recovery: {r['steps']} distillation steps in {r['train_seconds']:.0f} s{ev}")
    if "perplexity" in m:  # a causal LM's, each model with its own tokenizer
        p = m["perplexity"]
        vs = p.get("vs_unpruned")
        agree = f"; top-1 agreement with the unpruned {vs['top1_agreement']:.3f}" if vs else ""
        lines.append(f"perplexity {p['written']['perplexity']:.3f} (unpruned {p['unpruned']['perplexity']:.3f}, "
                     f"{p['perplexity_increase']:+.1%}) on {p['written']['windows']} windows of {p['window']}{agree}")
    if "eval" in m:  # the written model with its own tokenizer: the accuracy the artifact has
        e = m["eval"]
        vs_t = (f", original teacher {e['teacher']:.4f} (retention {e['retention_vs_teacher']:.3f})"
                if e.get("teacher_path") and e.get("retention_vs_teacher") is not None else "")
        lines.append(f"written model: eval {e['metric']} {e['written']:.4f} on {e['rows']} rows vs unpruned "
                     f"{e['unpruned']:.4f} (retention {retention_text(e.get('retention_vs_unpruned'))}){vs_t}")
    return lines


class _Progress(PhaseProgress):
    """Importance scores, budget candidates, teacher outputs and recovery steps."""

    labels = {"importance": "importance scores", "budget": "budget search", "teacher": "teacher outputs",
              "train": "recovering"}

    def note(self, d: dict) -> str | None:
        return f"budget candidate: heads {d['heads']:g}, ffn {d['ffn']:g}" if d["phase"] == "budget" else None

    def show(self, d: dict) -> None:
        phase = d["phase"]
        if phase == "importance":
            self.bar.update(self.task(phase, "importance scores", d["total"]), completed=d["done"])
        elif phase == "budget":
            self.bar.console.print(f"budget candidate: heads {d['heads']:g}, ffn {d['ffn']:g}")
        elif phase == "teacher":
            self.bar.update(self.task(phase, "teacher outputs", d["total"]), completed=d["done"])
        elif phase == "train":
            t = self.task(phase, "recovering", d["total"])
            self.bar.update(t, completed=d["step"], info=f"loss {d['loss']:.4f}")
