"""Loading fine-tuned teachers: Hugging Face checkpoint directories (safetensors).

Any architecture transformers' Auto classes support works (BERT, DistilBERT, RoBERTa, MiniLM, ...):
nothing here names a model's modules. Pickled weights and remote code are refused unless opted in.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.artifact import (
    Artifact,
    Format,
    Manifest,
    Postprocess,
    Precision,
    SourceInfo,
    TextPreprocess,
    digest_dir,
    hash_files,
    library_versions,
)
from compress.artifact_entries import TensorSpec
from compress.errors import ConfigError, ModelLoadError
from compress.tasks import TASKS, Task, by_kind, is_generator, postprocess_for, repeated_class_name, task_for
from compress.tasks.embeddings import EmbeddingPostprocess
from compress.teachers.checkpoints import (
    TOKENIZER_FILES,
    InfoTeacher,
    _read_json,
    check_checkpoint,
    model_load_error,
)
from compress.teachers.lm_config import (
    check_special_tokens,
    config_kwargs,
    is_causal_lm,
    load_tokenizer,
    postprocess_of,
)

log = logging.getLogger(__name__)



def forward_inputs(model: Any) -> frozenset[str] | None:
    """The keyword inputs a model's ``forward`` names explicitly (None: it names none and takes ``**kwargs``).

    Wrappers (DDP/Accelerate's ``.module``, torch.compile's ``._orig_mod``) are looked through. A tokenizer
    may emit inputs its model does not take (a DistilBERT saved with a BERT tokenizer emits
    ``token_type_ids``); only the names here are fed to the model. Named parameters win over a trailing
    ``**kwargs`` (transformers 5 models have both).
    """
    import inspect

    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    params = list(inspect.signature(inner.forward).parameters.values())
    named = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    if not named and any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return named


def model_feed(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` restricted to what ``model.forward`` takes (see :func:`forward_inputs`)."""
    names = forward_inputs(model)
    return dict(inputs) if names is None else {k: v for k, v in inputs.items() if k in names}


@dataclass
class CheckpointInfo:
    """What a checkpoint directory holds, read without importing torch."""

    path: Path
    config: dict[str, Any]
    weights: list[str]
    pickled: bool
    task: Task
    labels: list[str] | None
    postprocess: Postprocess
    max_length: int

    @property
    def architecture(self) -> str | None:
        arch = self.config.get("architectures") or [None]
        return arch[0]

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")


def _sentence_transformers_pooling(path: Path) -> EmbeddingPostprocess | None:
    """Pooling/normalisation from a sentence-transformers checkpoint's modules.json, if it has one."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    pooling, normalize = "mean", False
    for mod in modules:
        kind = str(mod.get("type", ""))
        if kind.endswith("Pooling"):
            cfg_file = path / mod.get("path", "") / "config.json"
            if cfg_file.is_file():
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif not cfg.get("pooling_mode_mean_tokens", True):
                    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
                    raise ModelLoadError(
                        f"{cfg_file}: pooling {modes} is not supported", hint="use a mean- or CLS-pooled model"
                    )
        elif kind.endswith("Normalize"):
            normalize = True
    return EmbeddingPostprocess(pooling=pooling, normalize=normalize)


#: the tasks a Hugging Face text checkpoint's head gives (their TASKS entry's head), by the suffix of its architecture;
#: a regression head is a sequence-classification head with ``problem_type: regression`` (``num_labels`` numbers out,
#: no class names)
_HEADS = {t: info.head.removeprefix("AutoModel") for t, info in TASKS.items()
          if info.head in ("AutoModelForSequenceClassification", "AutoModelForTokenClassification",
                           "AutoModelForQuestionAnswering")}
#: the outputs of an extractive question-answering head, start first (the primary output)
QA_OUTPUTS = ("start_logits", "end_logits")
#: the tasks with one output row per text (not one per token)
_PER_TEXT = tuple(t for t, suffix in _HEADS.items() if suffix == "ForSequenceClassification")


def inspect_checkpoint(
    path: Path | str, task: Task | str | None = None, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> CheckpointInfo:
    """Check a checkpoint directory is loadable and safe, and read its task, labels and pooling."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such directory", hint="pass the directory of a Hugging Face checkpoint")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a directory", hint="pass the directory of a Hugging Face checkpoint")
    config, weights, pickled = check_checkpoint(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    architecture = (config.get("architectures") or [""])[0] or ""
    if is_causal_lm(config):  # a decoder with a KV cache: next-token logits, judged on text, never on labels
        if task is not None and not is_generator(Task(task)):
            raise ConfigError(f"{path} is a causal language model ({architecture}): its task is text-generation, "
                              f"not {Task(task)}", hint="leave --task out (or pass --task text-generation)")
        task = task_for("text", kind="generation")
    elif task is not None and is_generator(Task(task)):
        raise ModelLoadError(f"{path}: {architecture or 'this model'} is not a causal language model (…ForCausalLM)",
                             hint="text-generation takes a Hugging Face …ForCausalLM checkpoint")
    if task is None:
        task = next((t for t, suffix in _HEADS.items() if architecture.endswith(suffix)), Task.feature_extraction)
        if task in _PER_TEXT and config.get("problem_type") == "regression":
            task = task_for("text", numbers=True)
    task = Task(task)
    labels, postprocess = by_kind(_READ_HEAD, task, "loading a checkpoint")(path, config, task, architecture)

    max_length = int(config.get("max_position_embeddings", 512))
    if (path / "sentence_bert_config.json").is_file():
        sb = _read_json(path / "sentence_bert_config.json")
        max_length = min(max_length, int(sb.get("max_seq_length", max_length)))
    if (path / "tokenizer_config.json").is_file():
        tc = _read_json(path / "tokenizer_config.json")
        mml = tc.get("model_max_length")
        if isinstance(mml, int) and 0 < mml < max_length:
            max_length = mml
    if config.get("model_type") == "roberta" or "roberta" in str(config.get("model_type", "")):
        max_length = min(max_length, int(config.get("max_position_embeddings", 514)) - 2)
    return CheckpointInfo(
        path=path,
        config=config,
        weights=weights,
        pickled=pickled,
        task=task,
        labels=labels,
        postprocess=postprocess,
        max_length=max_length,
    )


@dataclass
class Teacher(InfoTeacher):
    """A loaded PyTorch teacher with its tokenizer and what the pipeline needs to know about it."""

    info: CheckpointInfo
    model: Any  # transformers.PreTrainedModel, eval mode
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    sha256: str

    @property
    def input_names(self) -> list[str]:
        """The tokenizer's outputs that the model takes (the model's inputs, in the tokenizer's order)."""
        takes = forward_inputs(self.model)
        return [n for n in self.tokenizer.model_input_names if takes is None or n in takes]

    def source(self) -> SourceInfo:
        return SourceInfo(
            path=str(self.path.resolve()),
            sha256=self.sha256,
            architecture=self.info.architecture,
            model_type=self.info.model_type,
        )

    @property
    def primary_output(self) -> str:
        return self.output_names[0]

    @property
    def output_names(self) -> list[str]:
        """The graph's outputs: the primary one (logits or token states), or a QA head's start and end logits."""
        if self.task is Task.question_answering:
            return list(QA_OUTPUTS)
        return ["logits" if self.task in _HEADS or is_generator(self.task) else "last_hidden_state"]

    def call(self, model: Any, tensors: dict[str, Any]) -> Any:
        """The model's primary output (logits, token states, a QA head's start logits) for ``tensors``."""
        out = model(**tensors)
        return getattr(out, self.primary_output) if self.task is Task.question_answering else \
            out.logits if hasattr(out, "logits") else out.last_hidden_state

    def call_outputs(self, model: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """Every output of the graph (:attr:`output_names`) by name, for ``tensors``."""
        out = model(**tensors)
        return {n: getattr(out, n) for n in self.output_names}

    def example_inputs(self) -> dict[str, Any]:
        """Two padded rows of different lengths, restricted to the inputs the model takes, in ``forward``'s
        parameter order (the exporter names the graph's inputs in that order, whatever the dict's order)."""
        import inspect

        enc = self.tokenizer(
            ["an example sentence to trace the model with", "short one"], padding=True, return_tensors="pt"
        )
        order = list(inspect.signature(self.model.forward).parameters)
        names = sorted(self.input_names, key=lambda n: order.index(n) if n in order else len(order))
        return {n: enc[n] for n in names}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {n: {0: "batch_size", 1: "sequence_length"} for n in self.input_names}
        for name in self.output_names:
            axes[name] = {0: "batch_size"} if self.task in _PER_TEXT else {0: "batch_size", 1: "sequence_length"}
        return axes

    def save_inputs(self, directory: Path) -> None:
        """Write what turns raw input into the model's feeds (the tokenizer files) into ``directory``."""
        self.tokenizer.save_pretrained(str(directory))
        if is_generator(self.task) and (self.path / "generation_config.json").is_file():
            import shutil  # BOS/EOS and the generation defaults travel with a causal LM's tokenizer

            shutil.copy2(self.path / "generation_config.json", Path(directory) / "generation_config.json")

    def encoder(self):
        from compress.data.tokenization import TextEncoder

        return TextEncoder(
            self.tokenizer.backend_tokenizer, self.input_names, self.info.max_length, self.tokenizer.pad_token_id
        )

    def manifest(self) -> Manifest:
        """Describe the checkpoint as a (pytorch, fp32) artifact: the root of every lineage."""
        width = len(self.info.labels) if self.info.labels else self.model.config.num_labels \
            if TASKS[self.task].targets else self.model.config.vocab_size if is_generator(self.task) \
            else self.model.config.hidden_size
        out_shape: list[int | str] = ["batch_size", width] if self.task in _PER_TEXT else \
            ["batch_size", "sequence_length", width]
        if self.task is Task.question_answering:  # a logit per token, for the start and for the end
            out_shape = ["batch_size", "sequence_length"]
        return Manifest(
            task=self.task,
            format=Format.pytorch,
            precision=Precision.fp32,
            labels=self.info.labels,
            model_file=self.info.weights[0],
            inputs=[TensorSpec(name=n, dtype="int64", shape=["batch_size", "sequence_length"]) for n in self.input_names],
            outputs=[TensorSpec(name=n, dtype="float32", shape=out_shape) for n in self.output_names],
            postprocess=self.info.postprocess,
            preprocess=TextPreprocess(words=TASKS[self.task].labels == "per-word"),
            max_length=self.info.max_length,
            source=self.source(),
            files=hash_files(self.path),
            versions=library_versions(),
        )

    def as_artifact(self) -> Artifact:
        return Artifact(self.path, self.manifest())



def _read_generator_head(path: Path, config: dict, task: Task, architecture: str) -> tuple[None, Any]:
    """A causal LM: no labels; BOS/EOS, the perplexity window, the KV cache's dimensions."""
    return None, postprocess_of(path, config)


def _read_forward_head(path: Path, config: dict, task: Task, architecture: str) -> tuple[list[str] | None, Any]:
    """One forward pass: a head's class names (checked), or an encoder's pooling; (labels, postprocess)."""
    labels = None
    postprocess = postprocess_for(task)
    if task in _HEADS:
        id2label = config.get("id2label") or {}
        if not architecture.endswith(_HEADS[task]):
            kind = {"per-word": "token-classification", "spans": "question-answering"}.get(
                TASKS[task].labels, "sequence-classification")
            raise ModelLoadError(
                f"{path}: {architecture or 'this model'} has no {kind} head",
                hint=f"pass a fine-tuned ...{_HEADS[task]} checkpoint, or --task feature-extraction",
            )
        labels = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))] if id2label else None
        if TASKS[task].targets or TASKS[task].labels == "spans":  # numbers out, or answer spans: no class names
            labels = None
        elif labels is None:
            n = int(config.get("num_labels", 2))
            labels = [f"LABEL_{i}" for i in range(n)]
        elif why := repeated_class_name(labels):
            raise ModelLoadError(f"{path}/config.json: id2label: {why}",
                                 hint="fix id2label in config.json")
        if TASKS[task].labels == "per-word":  # a tagger is judged by entities: its tags must be a scheme seqeval reads
            from compress.tasks.entities import check_scheme

            try:
                check_scheme(labels)
            except ConfigError as e:
                raise ModelLoadError(f"{path}: {e.message}", hint="set config.json's id2label to IOB2 tags (O, B-PER, "
                                     "I-PER, ...), or fine-tune it with --task token-classification") from None
    elif task is Task.feature_extraction:  # an encoder: its token states pooled
        postprocess = _sentence_transformers_pooling(path) or EmbeddingPostprocess(pooling="mean", normalize=False)
    return labels, postprocess


#: how a checkpoint's head is read for a task of each kind (:func:`compress.tasks.by_kind`): (labels, postprocess)
_READ_HEAD = {"forward": _read_forward_head, "generation": _read_generator_head}

def load_teacher(
    path: Path | str,
    task: Task | str | None = None,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Teacher:
    """Load a fine-tuned teacher checkpoint for ``task`` (inferred from its architecture when None): a Hugging Face
    text model here, an image classifier (Hugging Face or a ``.pt2`` program) through :mod:`compress.teachers.images`."""
    from compress.teachers.images import is_image_source, load_image_teacher
    from compress.teachers.model_files import is_model_file, load_model_file
    from compress.teachers.program_files import is_program_file, load_program_file

    if is_model_file(path) or is_program_file(path):  # a file made elsewhere: the FP32 reference itself
        # an ONNX file or IR runs in its own runtime; a torch.export program that is not an image classifier in PyTorch
        teacher = load_model_file(path) if is_model_file(path) else load_program_file(path, allow_pickle=allow_pickle)
        if task is not None and Task(task) is not teacher.task:
            raise ConfigError(f"{path} is described as a {teacher.task} model, not {Task(task)}",
                              hint="set task: in the model.yaml beside it, or leave --task out")
        return teacher
    if (task is not None and TASKS[Task(task)].inputs == "image") or is_image_source(path):
        image = load_image_teacher(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        if task is not None and Task(task) is not image.task:
            raise ConfigError(f"{path} is an image {'regressor' if TASKS[image.task].targets else 'classifier'}, "
                              f"not a {Task(task)} model", hint=f"leave --task out, or pass --task {image.task}")
        return image
    info = inspect_checkpoint(path, task, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    from compress._optional import require

    require("torch", "loading a PyTorch teacher")
    transformers = require("transformers", "loading a PyTorch teacher")
    # transformers 5 draws a "Loading weights" bar on stderr for every load: edgecompress shows its own progress
    transformers.utils.logging.disable_progress_bar()

    generates = is_generator(info.task)
    auto = getattr(transformers, (_HEADS.get(info.task) or generates) and TASKS[info.task].head or "AutoModel")
    kwargs = dict(trust_remote_code=trust_remote_code, local_files_only=True, use_safetensors=not info.pickled)
    if not any((info.path / name).is_file() for name in TOKENIZER_FILES):
        # transformers 5 builds an empty tokenizer (special tokens only) when there is none: every word would be [UNK]
        raise ModelLoadError(f"{info.path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)",
                             hint="save the tokenizer beside the model: tokenizer.save_pretrained(DIR)")
    try:
        tokenizer = load_tokenizer(info.path, use_fast=True, **kwargs)
    except Exception as e:
        raise ModelLoadError(
            f"{info.path}: cannot load the tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            hint="the checkpoint needs tokenizer files (tokenizer.json or vocab) saved by save_pretrained()",
        ) from e
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{info.path}: no fast tokenizer available", hint="save the checkpoint with a fast tokenizer")
    try:
        model, loading = auto.from_pretrained(str(info.path), output_loading_info=True, **kwargs,
                                              **config_kwargs(info.path))
    except Exception as e:
        raise model_load_error(auto, info.path, kwargs, e) from e
    missing = [k for k in loading.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ModelLoadError(
            f"{info.path}: weights missing from the checkpoint: {', '.join(missing[:3])}"
            + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""),
            hint="for a classifier pass a fine-tuned checkpoint; for a bare encoder use --task feature-extraction",
        )
    if generates:  # a tokenizer saved from another model would feed it nonsense without a word
        check_special_tokens(info.path, tokenizer, info.postprocess.bos_token_id, info.postprocess.eos_token_id)
    if info.labels is not None and model.config.num_labels != len(info.labels):
        raise ConfigError(f"{info.path}: num_labels and id2label disagree", hint="fix config.json")
    model.eval()
    return Teacher(info=info, model=model, tokenizer=tokenizer, sha256=digest_dir(info.path))


def teacher_format(teacher: Any) -> Format:
    """The format a loaded teacher runs in, read without hashing its files (as ``as_artifact`` would): an adopted
    model file's own (ONNX, OpenVINO), PyTorch for every other teacher."""
    return getattr(teacher.info, "format", Format.pytorch)


def source_digest(path: Path | str, **teacher_kwargs: Any) -> str:
    """The content digest every stage records for a PyTorch source it read (an export's ``input_digest``, the
    lineage's ``source.sha256``): the loaded teacher's own ``sha256`` (its weights with the description and tokenizer
    beside them), for a checkpoint folder, a ``.pt2`` program file or a student artifact alike. Compare a source with
    a recorded digest by this, never by ``load_source(path).digest`` (the digest of the files a teacher's manifest
    lists, which for a program file leaves out its ``model.yaml``)."""
    return load_teacher(path, **teacher_kwargs).sha256


def load_source(path: Path | str, **teacher_kwargs: Any) -> Artifact:
    """An artifact directory, or a teacher checkpoint described as a (pytorch, fp32) artifact."""
    from compress.artifact import is_artifact, load_artifact

    if is_artifact(path):
        return load_artifact(path)
    return load_teacher(path, **teacher_kwargs).as_artifact()
