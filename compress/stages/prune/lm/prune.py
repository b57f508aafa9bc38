"""``prune`` of a causal LM (task text-generation; the Llama, Qwen2 and Qwen3 families): query heads or whole
key/value groups, FFN neurons and whole layers scored on text windows (:mod:`compress.stages.prune.lm.structure`),
recovery by distillation from the unpruned model, then the vocabulary (:mod:`compress.stages.prune.vocab`: the tokens
a corpus uses; the embedding and the LM head, tied or not, shrink together and the tokenizer is rebuilt).

Order: scores → layers, heads, FFN (one rebuild from the pruned config) → recovery (``--recover-steps``, with the
unpruned tokenizer: the teacher's logits and the student's cover the same vocabulary) → vocabulary → write, reload
and check. The vocabulary is proven exact on the corpus twice: its texts give the same embedding rows through the new
tokenizer as through the old, and the written model's logits on the corpus windows equal the unpruned vocabulary's
logits at the kept tokens. ``--eval`` scores perplexity before and after (:func:`lm_eval`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact, library_versions
from compress.errors import ConfigError, StageError
from compress.progress import Progress
from compress.stages.common import save_checkpoint
from compress.stages.prune.config import PruneConfig
from compress.stages.prune.lm.structure import (
    LMPlan,
    Shape,
    head_unit_for,
    lm_importance,
    lm_shape,
    plan_ffn,
    plan_layers,
    plan_lm_heads,
    rebuild,
)
from compress.stages.prune.vocab import (
    VocabPlan,
    plan_vocabulary,
    prove_vocabulary,
    prune_vocabulary,
    vocabulary_coverage,
)
from compress.stages.spec import StageOutput

log = logging.getLogger("compress.stages.prune")  # the verb's logger

#: the most eval windows perplexity is measured on (the first ones of the eval text)
EVAL_WINDOWS = 256
#: the corpus windows the written model's logits are checked on
PROBE_WINDOWS = 8
#: windows per forward pass
BATCH = 8


def _refuse(config: PruneConfig) -> None:
    """Settings of the encoder and image paths that a causal LM does not take, refused in one line each."""
    refused = [(config.sparsity is not None, "--sparsity", "structured pruning (--heads/--ffn/--drop-layers) and "
                "--vocab-corpus apply; INT4 weights (quantize) shrink a causal LM further"),
               (bool(config.channels), "--channels", "--channels prunes image CNNs"),
               (bool(config.budget.profile), "--profile", "search a causal LM's dimensions under a profile's budgets "
                "with `edgecompress search`; give prune the ratios"),
               (bool(config.recovery.augment or config.recovery.augment_join), "--recover-augment(-join)",
                "they make labelled sentence copies; a causal LM recovers on the --train text as it is"),
               (config.recovery.average, "--recover-average", "distill keeps a causal LM's best evaluated weights "
                "(give --eval); drop --recover-average")]
    for bad, option, hint in refused:
        if bad:
            raise ConfigError(f"{option} is not built for causal LMs", hint=hint)


def windows_of(tokenizer, path: str | Path, window: int, limit: int | None, context: int) -> np.ndarray:
    """Token windows [N, window] of the text file ``path`` (llama-perplexity's cut: BOS first in each)."""
    from compress.data.text import read_texts, token_windows

    return token_windows(tokenizer, read_texts(path), window, max_windows=limit, context=context)


def _logits(model, windows: np.ndarray, batch_size: int = BATCH):
    import torch

    for i in range(0, len(windows), batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(windows[i:i + batch_size]))
        with torch.inference_mode():  # not around the yield: two interleaved generators would leave it on
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.float().numpy()
        yield out


def perplexity(model, windows: np.ndarray, ref_model=None, keep: list[int] | None = None,
               ref_windows: np.ndarray | None = None) -> dict[str, Any]:
    """:class:`compress.tasks.generation.GenerationStream` of ``model`` on ``windows``: perplexity, and with
    ``ref_model`` (run on ``ref_windows``, default the same) KL and top-1 agreement against it. ``keep``: ``model``'s
    vocabulary is these ids of the reference's, whose distribution is taken over them (renormalised)."""
    from compress.tasks.generation import GenerationStream

    stream = GenerationStream()
    refs = _logits(ref_model, windows if ref_windows is None else ref_windows) if ref_model is not None else None
    for i, out in enumerate(_logits(model, windows)):
        ref = next(refs) if refs is not None else None
        stream.update(out, windows[i * BATCH:i * BATCH + len(out)], ref if keep is None or ref is None else ref[..., keep])
    return stream.result()


def lm_eval(written, unpruned, eval_data: str | Path, window: int, keep: list[int] | None) -> dict[str, Any]:
    """Perplexity on ``eval_data`` of the written model (with its own tokenizer) and of the unpruned one, and the
    written model against the unpruned on the unpruned tokenizer's windows (when the vocabulary was pruned: those
    whose tokens were all kept, against the unpruned model's distribution over the kept tokens): perplexity, KL,
    top-1 agreement."""
    context = int(unpruned.model.config.max_position_embeddings)
    own = windows_of(written.tokenizer, eval_data, window, EVAL_WINDOWS, context)
    base = windows_of(unpruned.tokenizer, eval_data, window, EVAL_WINDOWS, context)
    rec: dict[str, Any] = {"data": str(Path(eval_data).resolve()), "window": window,
                           "written": perplexity(written.model, own), "unpruned": perplexity(unpruned.model, base)}
    rec["written"]["windows"], rec["unpruned"]["windows"] = len(own), len(base)
    mapped, ref = base, None
    if keep is not None:
        old2new = np.full(int(unpruned.model.config.vocab_size), -1, dtype=np.int64)
        old2new[keep] = np.arange(len(keep))
        whole = (old2new[base] >= 0).all(1)
        ref, mapped = base[whole], old2new[base[whole]]
    if len(mapped):
        vs = perplexity(written.model, mapped, unpruned.model, keep, ref)
        vs["windows"] = len(mapped)
        vs["reference"] = "the unpruned model" if keep is None else "the unpruned model over the kept tokens"
        rec["vs_unpruned"] = vs
    rec["perplexity_increase"] = rec["written"]["perplexity"] / rec["unpruned"]["perplexity"] - 1.0
    return rec


def prune_causal_lm(teacher, parent: Artifact | None, output: StageOutput, config: PruneConfig, *,
                    train: Path | str | None = None, eval_data: Path | str | None = None,
                    progress: Progress | None = None) -> Artifact:
    """Prune the causal LM ``teacher`` (a loaded text-generation teacher) into the artifact ``output``."""
    from compress.stages.distill.student import count_parameters

    _refuse(config)
    if output.path.resolve() == teacher.path.resolve():
        raise ConfigError("--out is the source directory", hint="choose a new directory for the artifact")
    shape = lm_shape(teacher.model)
    _check_request(shape, config)
    metrics: dict[str, Any] = {
        "parameters_before": count_parameters(teacher.model),
        "size_bytes_before": sum((teacher.path / w).stat().st_size for w in teacher.info.weights),
        "data": {"train": str(Path(train).resolve()) if train else None,
                 "eval": str(Path(eval_data).resolve()) if eval_data else None},
    }
    corpus = _corpus(teacher, config) if config.vocab.corpus else None
    vocab = _plan_vocabulary(teacher, corpus[0], config, progress) if corpus else None  # cheap errors first
    plan = _structure(teacher, shape, config, train, metrics, progress)
    model = rebuild(teacher.model, plan)
    metrics["parameters_structural"] = count_parameters(model)
    out = output.path
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".scratch", dir=out.parent) as tmp:
        if config.recovery.steps:
            from compress.stages.prune.recovery import recover

            model, metrics["recovery"] = recover(model, teacher.tokenizer, teacher, teacher.path, train, eval_data,
                                                  config, None, Path(tmp), progress)
            metrics["recovery"]["tokenizer"] = "original (the vocabulary is pruned after recovery)"
        tokenizer, keep, before = teacher.tokenizer, None, None
        if corpus is not None:
            texts, probe = corpus
            keep = vocab.keep
            before = [b[..., keep] for b in _logits(model, probe)]  # the kept tokens' logits only (a real vocabulary
            tokenizer, metrics["vocab"] = _vocabulary(model, teacher, vocab, texts, config, progress)  # is wide)
            probe = np.searchsorted(np.asarray(keep), probe)  # the corpus's ids are all kept: their new ids
        else:  # structural pruning only: the importance text's first windows, against the model in memory
            probe = _probe(tokenizer, _importance_path(config, train), config.max_length, _context(teacher))
        _write(teacher, parent, output, model, tokenizer, probe, before, keep, config, eval_data, metrics, progress)
    art = output.artifact
    log.info("wrote %s (%s -> %s parameters)", out, f"{metrics['parameters_before']:,}",
             f"{metrics['parameters_after']:,}")
    return art


def _context(teacher) -> int:
    return int(teacher.model.config.max_position_embeddings)


def _window(teacher, config: PruneConfig) -> int:
    """The text windows' length: ``--max-length``, cut to the model's context when left at its default; one given
    longer than the context is refused."""
    context = _context(teacher)
    if "max_length" in config.model_fields_set and config.max_length > context:
        raise ConfigError(f"--max-length {config.max_length} is longer than the model's context "
                          f"(max_position_embeddings {context})", hint=f"give --max-length {context} or less")
    return min(config.max_length, context)


def _probe(tokenizer, path, window: int, context: int) -> np.ndarray:
    """The first windows of the text ``path`` the written model's logits are checked on (one window of all of it
    when it is shorter than one)."""
    from compress.data.text import encode, read_texts

    try:
        return windows_of(tokenizer, path, min(window, context), PROBE_WINDOWS, context)
    except ConfigError:
        return np.asarray([encode(tokenizer, "\n\n".join(read_texts(path)))], dtype=np.int64)


def _check_request(shape: Shape, config: PruneConfig) -> None:
    """Refuse impossible requests before any scoring work."""
    if config.drop_layers >= shape.layers:
        raise ConfigError(f"--drop-layers {config.drop_layers}: the model has {shape.layers} layers and at least one "
                          f"must stay", hint=f"drop at most {shape.layers - 1} layers")
    if config.heads:
        head_unit_for(shape, config.heads, config.head_unit)
    elif config.head_unit is not None:
        raise ConfigError(f"--head-unit {config.head_unit} without --heads", hint="give --heads R, or leave it out")


def _importance_path(config: PruneConfig, train) -> str | Path | None:
    return config.importance.data or train or config.vocab.corpus


def _structure(teacher, shape: Shape, config: PruneConfig, train, metrics: dict[str, Any], progress) -> LMPlan:
    """Score the model on the importance text and plan the layers, heads and FFN neurons it keeps."""
    plan = LMPlan(list(range(shape.layers)))
    if not config.structural:
        return plan
    path = _importance_path(config, train)
    if path is None:
        raise ConfigError("a causal LM's importance scores need text", hint="pass --train or --data (a .txt or "
                          ".jsonl of documents the model will see)")
    window = _window(teacher, config)
    windows = windows_of(teacher.tokenizer, path, window, config.importance.samples, _context(teacher))
    importance = lm_importance(teacher.model, windows, progress=progress)
    rec = importance.summary()
    rec.update(data=str(path), windows=len(windows), window=window)
    metrics["importance"] = rec
    if progress:
        progress({"phase": "structure", "label": "removing layers, heads and neurons"})
    if config.drop_layers:
        plan.layers = plan_layers(importance, shape.layers, config.drop_layers)
        importance = importance.select_layers(plan.layers)
        metrics["layers"] = {"before": shape.layers, "after": len(plan.layers),
                             "dropped": [i for i in range(shape.layers) if i not in plan.layers], "kept": plan.layers}
    if config.heads:
        unit, plan.heads = plan_lm_heads(importance, shape, config.heads, config.head_unit)
        after = len(plan.heads[0])
        metrics["heads"] = {
            "unit": str(unit), "before": shape.heads * len(plan.layers), "after": after * len(plan.layers),
            "per_layer_before": [shape.heads] * len(plan.layers), "per_layer_after": [after] * len(plan.layers),
            "kv_heads_before": shape.kv_heads, "kv_heads_after": len({h // shape.group for h in plan.heads[0]}),
            "kept": {str(old): k for old, k in zip(plan.layers, plan.heads, strict=True)}, "notes": [],
        }
    if config.ffn:
        plan.ffn = plan_ffn(importance, shape.ffn, config.ffn)
        metrics["ffn"] = {"config_key": "intermediate_size", "before": shape.ffn, "after": len(plan.ffn[0]),
                          "removed_per_layer": shape.ffn - len(plan.ffn[0])}
    return plan


def _corpus(teacher, config: PruneConfig) -> tuple[list[str], np.ndarray]:
    """The vocabulary corpus's texts (and, for more than one, their join, as the windows read them) and its first
    windows for the logits check."""
    from compress.data.text import read_texts

    texts = read_texts(config.vocab.corpus)
    if len(texts) > 1:
        texts = [*texts, "\n\n".join(t.strip("\n") for t in texts)]
    return texts, _probe(teacher.tokenizer, config.vocab.corpus, config.max_length, _context(teacher))


def _plan_vocabulary(teacher, texts: list[str], config: PruneConfig, progress) -> VocabPlan:
    """The token ids to keep: the corpus's, the special tokens, the generation config's BOS/EOS, the alphabet."""
    from compress.teachers.lm_config import generation_ids

    if progress:
        progress({"phase": "vocab-plan", "label": f"planning the vocabulary on {config.vocab.corpus}"})
    bos, eos = generation_ids(teacher.path, teacher.info.config)
    extra = [i for i in [bos, *(eos if isinstance(eos, list) else [eos])] if isinstance(i, int)]
    return plan_vocabulary(teacher.tokenizer, texts, keep_alphabet=config.vocab.keep_alphabet,
                           floor=config.vocab.floor, model_config=teacher.model.config, source=config.vocab.corpus,
                           keep_ids=extra)


def _vocabulary(model, teacher, plan: VocabPlan, texts: list[str], config: PruneConfig, progress) -> tuple[Any, dict]:
    """Prune ``model``'s vocabulary to ``plan`` in place; the new tokenizer and the record with its proof (the
    corpus's texts give the same embedding rows through the new tokenizer)."""
    old_emb = model.get_input_embeddings().weight.detach().clone()
    tokenizer = prune_vocabulary(model, teacher.tokenizer, plan)
    if progress:
        progress({"phase": "vocab-proof", "label": f"proving the vocabulary on {len(texts):,} texts"})
    rec = plan.to_dict()
    rec["proof"] = prove_vocabulary(teacher.tokenizer, old_emb, tokenizer, model.get_input_embeddings().weight.detach(),
                                    texts)
    rec["corpus"] = config.vocab.corpus
    rec["tied_head"] = bool(getattr(model.config, "tie_word_embeddings", False))
    return tokenizer, rec


def _write(teacher, parent, output: StageOutput, model, tokenizer, probe: np.ndarray,
           before: list[np.ndarray] | None, keep: list[int] | None, config: PruneConfig, eval_data,
           metrics: dict[str, Any], progress) -> None:
    """Write the checkpoint, reload it as a text-generation teacher and check its logits on ``probe`` against
    ``before`` (the model before its vocabulary went, at the kept tokens; None: ``model``'s own); describe it."""
    from compress.stages.distill.student import count_parameters
    from compress.teachers.load import load_teacher

    if progress:
        progress({"phase": "write", "label": f"writing {output.path} and checking it against the pruned model"})
    with output.writing() as o:
        stage = o.dir
        save_checkpoint(model, tokenizer, teacher, stage)
        written = load_teacher(stage, teacher.task)
        ref = before if before is not None else _logits(model, probe)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, _logits(written.model, probe), strict=True))
        metrics["reload_check"] = {"windows": len(probe), "max_abs_diff": diff,
                                   "against": "the unpruned vocabulary's logits at the kept tokens" if keep
                                   else "the pruned model in memory"}
        if not diff <= 1e-4:
            raise StageError(f"the written model's logits differ from the pruned model's by {diff:.3g} after "
                             f"reloading", hint="nothing was written; report this checkpoint")
        if keep is not None:
            metrics["vocab"]["proof"]["logits_max_abs_diff"] = diff
        if eval_data is not None:
            if progress:
                progress({"phase": "written-eval", "label": "perplexity of the written and the unpruned model"})
            metrics["perplexity"] = lm_eval(written, teacher, eval_data, _window(teacher, config), keep)
            if keep is not None:  # how the eval text fares: its tokens kept, its texts read as before
                from compress.data.text import read_texts

                metrics["vocab"]["eval_coverage"] = vocabulary_coverage(teacher.tokenizer, tokenizer, keep,
                                                                        read_texts(eval_data))
        metrics["parameters_after"] = count_parameters(written.model)
        metrics["parameter_ratio"] = metrics["parameters_after"] / metrics["parameters_before"]
        metrics["size_bytes_after"] = sum(f.stat().st_size for f in stage.glob("*.safetensors"))
        cfg = written.model.config
        metrics["architecture"] = {"layers": cfg.num_hidden_layers, "heads_per_layer": [cfg.num_attention_heads] *
                                   cfg.num_hidden_layers, "kv_heads": cfg.num_key_value_heads,
                                   "head_dim": cfg.head_dim, "ffn": cfg.intermediate_size,
                                   "vocab_size": cfg.vocab_size}
        manifest = written.manifest()
        if parent is not None:
            manifest.source, prior = parent.manifest.source, list(parent.manifest.steps)
        else:
            manifest.source, prior = teacher.lineage()
        manifest.versions = library_versions("accelerate") if config.recovery.steps else library_versions()
        o.describe(manifest, input_digest=parent.digest if parent is not None else teacher.sha256, lineage=prior,
                   metrics=metrics)
