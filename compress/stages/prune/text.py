"""A text encoder's path through prune (classifiers, embedders, token classifiers, question answerers; the verb is
:func:`compress.stages.prune.prune`, which describes what is removed and how it is chosen): importance scores, the
budget search, layers, heads and FFN, sparsity, recovery, the vocabulary, then the write, reload and proof."""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact, library_versions
from compress.errors import ConfigError, StageError
from compress.progress import Progress
from compress.stages.common import save_checkpoint
from compress.stages.prune.budget import search_budget
from compress.stages.prune.config import _RUNTIME_SPARSITY, SPARSITY_NOTE, PruneConfig
from compress.stages.prune.recovery import recover
from compress.stages.prune.sparsity import (
    Sparsifier,
    _gzip_size,
    apply_sparsity,
    sparsity_report,
)
from compress.stages.prune.structured import (
    Importance,
    _batches,
    _check_head_pruning,
    _plan_heads,
    _pooled,
    drop_layers,
    encoder_linears,
    ffn_key,
    importance_scores,
    original_heads,
    prune_heads_and_ffn,
)
from compress.stages.prune.vocab import (
    corpus_strings,
    plan_vocabulary,
    prove_vocabulary,
    prune_vocabulary,
    vocabulary_coverage,
)
from compress.stages.spec import StageOutput
from compress.tasks import TASKS
from compress.tasks.embeddings import pooling_of
from compress.teachers.load import model_feed

log = logging.getLogger("compress.stages.prune")  # the verb's logger


def _texts(path: str | Path | None, config: PruneConfig, label2id, n: int | None = None):
    from compress.data.tables import load_dataset

    ds = load_dataset(path, text_column=config.text_column, label_column=config.label_column, label2id=label2id,
                      num_labels=len(label2id) if label2id else None)
    if n is not None:
        ds = ds.sample(n, seed=config.seed)
    return ds


def _outputs(model, tokenizer, texts: list[Any], max_length: int, classification: bool, pooling, normalize,
             batches=None, spans: bool = False):
    """The model's outputs on ``texts`` (``batches``: a token classifier's word batches, its per-token scores padded
    with zeros to ``max_length`` tokens; ``spans``: a question answerer's windows, its start and end rows padded to
    ``max_length`` tokens)."""
    import torch

    from compress.stages.prune.structured import class_scores

    res = []
    with torch.inference_mode():
        for enc, _ in (batches() if batches else _batches(tokenizer, texts, None, max_length, 32)):
            out = model(**model_feed(model, enc))
            res.append(class_scores(out, enc["attention_mask"]) if classification
                       else _pooled(out, enc["attention_mask"], pooling, normalize).float())
    if res and res[0].dim() == 3:
        res = [torch.nn.functional.pad(r, (0, 0, 0, max_length - r.shape[1])) for r in res]
    if spans:
        res = [torch.nn.functional.pad(r, (0, max_length - r.shape[-1]), value=-1e4) for r in res]
    return torch.cat(res) if res else None


def _prune_vocab_and_prove(model, tokenizer, vocab_plan, proof_texts: list[str], progress) -> tuple[Any, dict]:
    """Prune the vocabulary in place; the new tokenizer and the record with its proof on the corpus (every
    corpus text gives the same embeddings through the new tokenizer as through the old)."""
    old_emb = model.get_input_embeddings().weight.detach().clone()
    new_tokenizer = prune_vocabulary(model, tokenizer, vocab_plan)
    if progress:
        progress({"phase": "vocab-proof", "label": f"proving the vocabulary on {len(proof_texts):,} texts"})
    vrec = vocab_plan.to_dict()
    vrec["proof"] = prove_vocabulary(tokenizer, old_emb, new_tokenizer, model.get_input_embeddings().weight.detach(),
                                     proof_texts)
    return new_tokenizer, vrec


@dataclass
class TextJob:
    """What the phases of pruning a text model share: its input, settings and data."""

    teacher: Any
    parent: Artifact | None
    source: Path
    config: PruneConfig
    train: Path | str | None
    eval_data: Path | str | None
    progress: Progress | None

    @property
    def classification(self) -> bool:
        return TASKS[self.teacher.task].labels in ("per-sample", "per-word", "spans")

    @property
    def spans(self) -> bool:  # a question answerer: questions with contexts in windows, start and end over the tokens
        return TASKS[self.teacher.task].labels == "spans"

    @property
    def words(self) -> bool:
        """A token classifier: sentences split into words, a tag per word."""
        return TASKS[self.teacher.task].labels == "per-word"

    @property
    def label2id(self) -> dict[str, int] | None:
        labels = self.teacher.info.labels
        return {name: i for i, name in enumerate(labels)} if labels else None

    def texts(self, path: str | Path | None, n: int | None = None):
        if self.spans:
            from compress.stages.prune.evaluation import span_rows

            return span_rows(path, n, self.config.seed)
        if self.words:
            from compress.data.words import load_word_dataset

            ds = load_word_dataset(path, label2id=self.label2id)
            return ds.sample(n, seed=self.config.seed) if n is not None else ds
        return _texts(path, self.config, self.label2id, n)

    def batches(self, tokenizer, texts: list[Any], labels: list[Any] | None, batch_size: int = 16):
        """None for sentence-level models (the tokenizer's own batches); a token classifier's ``(encoding, labels per
        token)`` batches of sentences split into words (tags on each word's first sub-token)."""
        if self.spans:
            from compress.stages.prune.evaluation import span_batches

            stride = self.teacher.info.postprocess.stride
            return lambda: span_batches(tokenizer, texts, labels, self.config.max_length, stride, batch_size)
        if not self.words:
            return None

        def gen():
            from compress.stages.transfer import TransferSet, encode_words

            for start in range(0, len(texts), batch_size):
                rows = texts[start : start + batch_size]
                enc, lab, word_ids = encode_words(tokenizer, rows, labels[start : start + batch_size] if labels
                                                  else None, self.config.max_length)
                batch = TransferSet(enc, lab, tokenizer.pad_token_id or 0, word_ids).collate(list(range(len(rows))))
                del batch["index"]
                yield batch, batch.pop("labels")
        return gen

    def outputs(self, model, tokenizer, texts: list[Any]):
        pooling, normalize = pooling_of(self.teacher.info.postprocess)
        return _outputs(model, tokenizer, texts, self.config.max_length, self.classification, pooling,
                        normalize, self.batches(tokenizer, texts, None, 32), spans=self.spans)


def prune_text(job: TextJob, output: StageOutput) -> Artifact:
    """The text path: plan the vocabulary, score, remove structure, sparsify, recover, then write and prove."""
    from compress.stages.distill.student import count_parameters

    teacher, config, progress = job.teacher, job.config, job.progress
    out = output.path
    model = copy.deepcopy(teacher.model)
    tokenizer = teacher.tokenizer
    params_before = count_parameters(model)
    size_before = sum((teacher.path / w).stat().st_size for w in teacher.info.weights)
    metrics: dict[str, Any] = {"parameters_before": params_before, "size_bytes_before": size_before,
                               "data": {"train": str(Path(job.train).resolve()) if job.train else None,
                                        "eval": str(Path(job.eval_data).resolve()) if job.eval_data else None}}

    _check_request(model, config)

    # --- vocabulary plan (first: its corpus errors are cheap to find) -----------------------------
    vocab_plan = None
    corpus_ds = None
    if config.vocab.corpus:
        if progress:
            progress({"phase": "vocab-plan", "label": f"planning the vocabulary on {config.vocab.corpus}"})
        corpus_ds = job.texts(config.vocab.corpus)  # a token classifier's: sentences split into words
        vocab_plan = plan_vocabulary(tokenizer, corpus_strings(corpus_ds.texts),
                                     keep_alphabet=config.vocab.keep_alphabet, floor=config.vocab.floor,
                                     model_config=model.config, source=config.vocab.corpus)

    importance = _importance(job, model, tokenizer, metrics)

    # --- budget -------------------------------------------------------------------------------------
    heads, ffn = config.heads, config.ffn
    if config.budget.profile:
        heads, ffn, metrics["budget"] = search_budget(model, tokenizer, teacher, importance, vocab_plan, config,
                                                      progress)

    # --- structure ----------------------------------------------------------------------------------
    if progress and (config.drop_layers or heads or ffn):
        progress({"phase": "structure", "label": "removing layers, heads and neurons"})
    if config.drop_layers:
        metrics["layers"] = drop_layers(model, importance, config.drop_layers)
        importance = importance.select_layers(metrics["layers"]["kept"])
    if heads or ffn:
        metrics.update(prune_heads_and_ffn(model, importance, heads=heads, ffn=ffn))
    metrics["parameters_structural"] = count_parameters(model)

    # --- sparsity and recovery ----------------------------------------------------------------------
    sparsifier = None
    gz_before = None
    if config.sparsity is not None:
        if config.recovery.steps:
            sparsifier = Sparsifier(config.sparsity, config.recovery.steps)
            gz_before = _gzip_size([m.weight for _, m in encoder_linears(model)])
            if sparsifier.semi_structured:
                sparsifier.apply(model)  # fixed 2:4 masks from the pruned weights, kept during recovery
        else:
            metrics["sparsity"] = apply_sparsity(model, config.sparsity)
    out.parent.mkdir(parents=True, exist_ok=True)
    proof_texts = corpus_strings(corpus_ds.texts) if corpus_ds is not None else []
    # a token classifier recovers before its vocabulary goes: its distillation reads the words the teacher's way,
    # token for token (the pruned vocabulary is proven exact on the corpus afterwards)
    vocab_first = (vocab_plan is not None and bool(config.recovery.steps) and config.recovery.after_vocab
                   and not job.words)
    new_tokenizer, vrec = tokenizer, None
    if vocab_first:  # prune the vocabulary now (proven exact on the corpus), so recovery learns the new splits
        new_tokenizer, vrec = _prune_vocab_and_prove(model, tokenizer, vocab_plan, proof_texts, progress)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".scratch", dir=out.parent) as tmp:
        if config.recovery.steps:
            model = _recover_and_sparsify(job, model, new_tokenizer, sparsifier, gz_before, Path(tmp), metrics)
            metrics["recovery"]["tokenizer"] = "pruned vocabulary" if vocab_first else "original"
        if "sparsity" in metrics:
            _note_sparsity(metrics["sparsity"], config)

        # --- vocabulary, write, reload, prove ---------------------------------------------------------
        if progress:
            progress({"phase": "write", "label": f"writing {out} and checking it against the pruned model"})
        probe = (corpus_ds.texts[:64] if corpus_ds is not None else []) or \
            job.texts(config.importance.data or job.train or _default_data(), 64).texts  # words for a token classifier
        if vocab_plan is not None and not vocab_first:
            # outputs of the unpruned vocabulary: the written model must give the same on corpus texts
            before_out = job.outputs(model, tokenizer, probe)
            new_tokenizer, vrec = _prune_vocab_and_prove(model, tokenizer, vocab_plan, proof_texts, progress)
        else:
            before_out = job.outputs(model, new_tokenizer, probe)
        _write_pruned(job, output, model, new_tokenizer, probe, before_out, vocab_plan, vrec, vocab_first, metrics)
    art = output.artifact
    log.info("wrote %s (%s -> %s parameters)", out, f"{params_before:,}", f"{metrics['parameters_after']:,}")
    return art


def _importance(job: TextJob, model, tokenizer, metrics: dict[str, Any]) -> Importance | None:
    """Taylor importance of heads and neurons, and each layer's effect, on the importance data (structural only)."""
    config = job.config
    if not config.structural:
        return None
    data_path = config.importance.data or job.train or config.vocab.corpus
    if data_path is None and job.words:
        raise ConfigError("a token classifier's importance scores need tagged sentences",
                          hint="pass --train (a CoNLL or JSON lines file)")
    if data_path is None and job.spans:
        raise ConfigError("a question answerer's importance scores need questions with their contexts",
                          hint="pass --train (a SQuAD-format .json file)")
    if data_path is None:
        from compress.data.tables import sample_data_path

        data_path = sample_data_path()
        log.warning("no data given: importance scores use the built-in sample sentences (pass --train or --data)")
    classification = job.classification
    ds = job.texts(data_path, config.importance.samples)
    labels = list(ds.labels) if classification and ds.labels is not None else None
    pooling, normalize = pooling_of(job.teacher.info.postprocess)
    importance = importance_scores(
        model, tokenizer, ds.texts, labels, classification=classification, pooling=pooling,
        normalize=normalize, max_length=config.max_length, seed=config.seed, progress=job.progress,
        batches=job.batches(tokenizer, ds.texts, labels),
    )
    imp_rec = importance.summary()
    imp_rec["data"] = str(data_path)
    metrics["importance"] = imp_rec
    return importance


def _recover_and_sparsify(job: TextJob, model, tokenizer, sparsifier: Sparsifier | None, gz_before: int | None,
                          scratch: Path, metrics: dict[str, Any]):
    """Recover by distillation (sparsity masks kept applied), then bring the sparsity to its final target."""
    config = job.config
    model, metrics["recovery"] = recover(model, tokenizer, job.teacher, job.source, job.train, job.eval_data, config,
                                          sparsifier, scratch, job.progress)
    if sparsifier is not None:
        sparsifier.total_steps = config.recovery.steps
        if not sparsifier.semi_structured:
            sparsifier.apply(model)  # the final target (no-op when the schedule reached it)
        else:
            sparsifier(model, config.recovery.steps, config.recovery.steps)
        rec = sparsity_report(model, config.sparsity)
        linears = encoder_linears(model)
        rec.update({"skipped": sparsifier.skipped, "gzip_bytes_before": gz_before,
                    "gzip_bytes_after": _gzip_size([m.weight for _, m in linears]),
                    "dense_bytes": sum(m.weight.numel() * m.weight.element_size() for _, m in linears),
                    "schedule": "fixed 2:4 masks during recovery" if sparsifier.semi_structured
                    else f"cubic over {config.recovery.steps} recovery steps"})
        metrics["sparsity"] = rec
    return model


def _note_sparsity(sp: dict[str, Any], config: PruneConfig) -> None:
    """What the zeros buy on the profile's runtime (nothing in speed on dense CPU kernels)."""
    runtime = None
    if config.budget.profile:
        from compress.profiles.load import load_profile

        runtime = str(load_profile(config.budget.profile).runtime.name)
    sp["note"] = SPARSITY_NOTE
    sp["runtime"] = runtime
    sp["runtime_note"] = _RUNTIME_SPARSITY.get(runtime or "", None) if runtime else None
    sp["speedup"] = False


def _write_pruned(job: TextJob, output: StageOutput, model, tokenizer, probe: list[str], before_out, vocab_plan,
                  vrec: dict[str, Any] | None, vocab_first: bool, metrics: dict[str, Any]) -> None:
    """Write the checkpoint, reload it and prove it gives the pruned model's outputs; measure and describe it."""
    from compress.stages.distill.student import count_parameters
    from compress.teachers.load import load_teacher

    teacher, parent, config, progress, eval_data = job.teacher, job.parent, job.config, job.progress, job.eval_data
    with output.writing() as o:
        stage = o.dir
        save_checkpoint(model, tokenizer, teacher, stage)
        written = load_teacher(stage, teacher.task)
        after_out = job.outputs(written.model, written.tokenizer, probe)
        diff = float((before_out - after_out).abs().max()) if before_out is not None else 0.0
        metrics["reload_check"] = {"texts": len(probe), "max_abs_diff": diff}
        if not diff <= 1e-4:
            raise StageError(
                f"the written model's outputs differ from the pruned model's by {diff:.3g} after reloading",
                hint="nothing was written; report this architecture",
            )
        if vocab_plan is not None:
            vrec["proof"]["output_max_abs_diff"] = diff
            vrec["recovered_after_pruning"] = vocab_first
            vrec["corpus"] = config.vocab.corpus
            if eval_data is not None:
                ev = job.texts(eval_data)
                vrec["eval_coverage"] = vocabulary_coverage(teacher.tokenizer, written.tokenizer, vocab_plan.keep,
                                                            corpus_strings(ev.texts))
            metrics["vocab"] = vrec
        if eval_data is not None and job.spans:  # SQuAD F1 of the written model against the unpruned one
            from compress.stages.prune.evaluation import written_squad
            metrics["eval"] = written_squad(written, teacher, eval_data, config.max_length)
        elif eval_data is not None and job.classification and not job.words:
            from compress.stages.prune.evaluation import written_eval

            if progress:
                progress({"phase": "written-eval", "label": "scoring the written model on the eval data"})
            from compress.artifact import reference_teacher

            root = reference_teacher(parent.manifest)[0] if parent is not None and parent.manifest.source else None
            ev = written_eval(written, teacher, job.texts(eval_data), config.max_length, root)
            if ev is not None:
                metrics["eval"] = ev
        metrics["parameters_after"] = count_parameters(written.model)
        metrics["parameter_ratio"] = metrics["parameters_after"] / metrics["parameters_before"]
        metrics["size_bytes_after"] = sum(f.stat().st_size for f in stage.glob("*.safetensors"))
        if "sparsity" in metrics:
            metrics["sparsity"]["model_file_gzip_bytes"] = _file_gzip_size(stage / "model.safetensors")
        cfg = written.model.config
        metrics["architecture"] = {
            "layers": cfg.num_hidden_layers, "heads_per_layer": [len(original_heads(cfg, i))
                                                                 for i in range(cfg.num_hidden_layers)],
            "ffn": getattr(cfg, ffn_key(cfg)), "vocab_size": cfg.vocab_size,
        }
        manifest = written.manifest()
        if parent is not None:
            manifest.source = parent.manifest.source
            prior = list(parent.manifest.steps)
        else:
            manifest.source, prior = teacher.lineage()
        manifest.versions = library_versions("accelerate") if config.recovery.steps else library_versions()
        o.describe(manifest, input_digest=parent.digest if parent is not None else teacher.sha256, lineage=prior,
                   metrics=_jsonable(metrics))
        if progress:
            progress({"phase": "write", "path": str(output.path)})


def _check_request(model, config: PruneConfig) -> None:
    """Refuse impossible layer/head requests before any scoring work (the checks the pruners repeat)."""
    cfg = model.config
    n = cfg.num_hidden_layers
    if config.drop_layers >= n:
        raise ConfigError(f"--drop-layers {config.drop_layers}: the model has {n} layers and at least one must stay",
                          hint=f"drop at most {n - 1} layers")
    if config.heads:
        _check_head_pruning(model)
        counts = sorted((len(original_heads(cfg, i)) for i in range(n)), reverse=True)
        # the most heads that can be left after dropping layers is when the widest layers stay
        kept = counts[: n - config.drop_layers] if config.drop_layers else counts
        total, layers = sum(kept), len(kept)
        if round(config.heads * total) > total - layers:
            _plan_heads(Importance([np.ones(c) for c in kept], [], np.zeros(layers), 0, "", ""), config.heads)


def _default_data() -> Path:
    from compress.data.tables import sample_data_path

    return sample_data_path()


def _file_gzip_size(path: Path) -> int:
    comp = zlib.compressobj(6)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            size += len(comp.compress(block))
    return size + len(comp.flush())


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
