"""Pruning: make a fine-tuned encoder physically smaller (fewer heads, neurons, layers, tokens), then recover.
Causal LMs (task text-generation) take their own path, :mod:`compress.stages.prune.lm.prune`; image models
:mod:`~compress.stages.prune.channels` and :mod:`~compress.stages.prune.vit`.

What this stage removes, and how it chooses:

* **Attention heads** (``heads``: a fraction of all heads), ranked globally by Taylor importance
  (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): the expected absolute gradient
  of the loss with respect to a mask on each head's output, per example, normalised per layer. The
  mask is not an argument of the model: a hook on the attention output projection multiplies its
  input (the concatenated heads) and reads ``sum(context * d loss / d context)`` per head, which is
  exactly the head-mask gradient and works on every BERT-family architecture (also where
  ``head_mask`` is gone or forces the slow attention path). Heads are removed with transformers'
  own ``prune_heads`` (it records ``pruned_heads`` in config.json, so ``from_pretrained`` reloads the
  smaller tensors); every layer keeps at least one head.
* **FFN neurons** (``ffn``: a fraction per layer): importance ``|sum activation * gradient|`` per
  neuron and example on the input of the FFN output projection. Every layer keeps the same number
  of neurons (its top-k), so ``intermediate_size`` stays one number and the config reloads.
* **Layers** (``drop_layers``: a count): the layers whose removal changes the model's outputs least
  on the sample (KL to the full model's class distribution; 1 - cosine of the pooled embedding for
  feature-extraction models), measured by skipping each layer in turn.
* **Vocabulary** (``vocab_corpus``): the tokens the corpus tokenises to, plus every special and
  added token, plus (by default) the single-character alphabet so that text outside the corpus
  still splits into characters instead of ``[UNK]``. The fast tokenizer (WordPiece, BPE with its
  merges, or Unigram) and the embedding matrix are rebuilt with the same ids, and the stage
  *proves* on every corpus text that old tokenizer → old ids → old embedding rows equals new
  tokenizer → new ids → new rows (and that the model's outputs are unchanged); if not, nothing is
  written.
* **Sparsity** (``sparsity``: a global magnitude ratio over the encoder's Linear weights, or
  ``"2:4"``: two of every four consecutive input weights zero). Honest about what it buys: ONNX
  Runtime and OpenVINO CPU kernels run dense GEMMs, so zeros give no speed-up there, and
  safetensors/ONNX store them densely; what shrinks is the *compressed* (zip/gzip download) size,
  which the manifest reports before and after.

Loss for the importance scores: cross entropy with the data's labels when it has them, else with the
model's own argmax (pseudo-labels; a KL to the model's own predictions has zero gradient at the
unpruned point). Feature-extraction models: a random projection of the pooled embedding per example,
whose expected absolute gradient is proportional to how far the embedding moves.

Recovery (``recover_steps``): a short distillation from the unpruned model (``compress.stages.distill``)
before vocabulary pruning (distillation feeds teacher and student the same token ids; vocabulary
pruning is exact on the corpus, so it needs none). Sparsity masks stay applied during recovery and
unstructured sparsity follows a cubic schedule (Zhu & Gupta 2017) over the recovery steps.

Budgets (``profile``): the profile's ``max_model_size_mb`` and/or latency budget (a roofline estimate,
:mod:`compress.estimates.roofline`) are checked on candidates exported to ONNX (and quantized to INT8 unless
``budget_precision`` is fp32), raising the pruning ratios in steps of 0.1 until they hold; when even
the maximum cannot meet them the stage refuses with the best value it reached.
"""

from __future__ import annotations

import logging
from pathlib import Path

from compress.artifact import Artifact, is_artifact, load_artifact
from compress.errors import ConfigError
from compress.progress import Progress
from compress.stages.prune.config import PRUNE, PruneConfig
from compress.stages.prune.text import TextJob, prune_text
from compress.tasks import TASKS, by_kind

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _load_input(source: Path, config: PruneConfig):
    from compress.teachers.load import load_teacher

    parent = None
    if is_artifact(source):
        parent = load_artifact(source)
        PRUNE.check(parent)
    teacher = load_teacher(source, parent.task if parent else None, allow_pickle=config.allow_pickle,
                           trust_remote_code=config.trust_remote_code)
    return parent, teacher


def prune(
    source: Path | str,
    out: Path | str,
    config: PruneConfig | None = None,
    *,
    train: Path | str | None = None,
    eval_data: Path | str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Artifact:
    """Prune the PyTorch model at ``source`` (checkpoint or pytorch artifact) into a new artifact at ``out``.

    Order: importance scores → (budget search) → layers → heads/FFN → sparsity → recovery (``train``)
    → vocabulary → write, reload and prove. ``progress`` receives dicts with a ``phase`` of
    ``importance``, ``budget``, ``teacher``/``train`` (recovery, from distill) or ``write``.
    """
    config = config or PruneConfig()
    output = PRUNE.output(out, config, force=force)
    source = Path(source)
    _check_options(config, train)
    if progress:
        progress({"phase": "load", "label": f"loading {source}"})
    parent, teacher = _load_input(source, config)
    return by_kind(_KINDS, teacher, "prune")(teacher, parent, source, output, config, train=train, eval_data=eval_data,
                                             force=force, progress=progress)


def _prune_generator(teacher, parent, source: Path, output, config: PruneConfig, *, train, eval_data, force: bool,
                     progress: Progress | None) -> Artifact:
    """A decoder: its heads (GQA), FFN, layers, vocabulary (:mod:`.lm.prune`)."""
    from compress.stages.prune.lm.prune import prune_causal_lm

    return prune_causal_lm(teacher, parent, output, config, train=train, eval_data=eval_data, progress=progress)


def _prune_forward(teacher, parent, source: Path, output, config: PruneConfig, *, train, eval_data, force: bool,
                   progress: Progress | None) -> Artifact:
    """One forward pass: a CNN's channels or a ViT's heads (image models), else a text encoder's (:mod:`.text`)."""
    out = output.path
    task = TASKS[teacher.task]
    if task.labels == "values":  # importance, layer choice and recovery all read class scores or embeddings
        raise ConfigError(f"prune does not take a {teacher.task} teacher yet ({source} gives numbers, not class scores)",
                          hint="quantize or export the regressor instead; validate scores it by MAE")
    if task.inputs == "image":  # a CNN's channels (.channels) or a ViT's heads/FFN/layers (.vit)
        if config.recovery.augment or config.recovery.augment_join:
            raise ConfigError("--recover-augment and --recover-augment-join make new training texts; image models have "
                              "none", hint="leave them out for image models")
        from compress.stages.prune.channels import prune_channels
        from compress.stages.prune.vit import prune_vit

        verb = prune_channels if config.channels else prune_vit
        return verb(teacher, out, config, train=train, eval_data=eval_data, force=force, progress=progress)
    if config.channels:
        raise ConfigError("--channels prunes the convolutions of image models", hint="for text models use --heads/--ffn")
    if task.labels == "spans" and config.vocab.corpus:
        raise ConfigError("vocabulary pruning of a question-answering model is not built (its proof reads single "
                          "texts)", hint="leave --vocab-corpus out; --heads, --ffn, --drop-layers and --sparsity apply")
    if out.resolve() == teacher.path.resolve():
        raise ConfigError("--out is the source directory", hint="choose a new directory for the artifact")
    job = TextJob(teacher, parent, source, config, train, eval_data, progress)
    return prune_text(job, output)


#: how prune takes a teacher of each kind (:func:`compress.tasks.by_kind`)
_KINDS = {"forward": _prune_forward, "generation": _prune_generator}


def _check_options(config: PruneConfig, train: Path | str | None) -> None:
    """Refuse settings the data makes impossible or that leave nothing to do, before anything is loaded (settings
    that contradict each other are refused by :class:`PruneConfig` itself)."""
    if config.recovery.steps and train is None:
        raise ConfigError(f"--recover-steps {config.recovery.steps} needs --train data", hint="pass --train DATA")
    if not (config.structural or config.vocab.corpus or config.sparsity is not None or config.channels):
        raise ConfigError("nothing to prune", hint="give --heads, --ffn, --drop-layers, --vocab-corpus, --sparsity "
                          "or --profile (text), --channels (image CNNs)")
    if train is not None and not config.recovery.steps:
        log.warning("--train is used for importance scores only (no --recover-steps)")
