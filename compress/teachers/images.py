"""Image-classification teachers: Hugging Face ``AutoModelForImageClassification`` checkpoints, and any ``nn.Module``
saved as a ``torch.export`` program (``.pt2``). Loaded without network and without unpickling by default.

* **Hugging Face** (ViT, DeiT, ResNet, ConvNeXt, MobileNetV2, EfficientNet, MobileViT, ...): a directory with
  ``config.json`` (an ``...ForImageClassification`` architecture), safetensors weights and
  ``preprocessor_config.json``, whose settings become the manifest's ``image`` input description
  (:func:`compress.teachers.image_processors.preprocess_from_hf`); agreement with the teacher's own processor is measured
  when the artifact is exported, and a mismatch fails the export.
* **A program** (``model.pt2``, written by ``torch.export.save``): the program says what it takes (names, shapes
  with dynamic dimensions, dtypes); what it cannot say comes from ``model.yaml`` beside it::

      task: image-classification
      labels: [cat, dog]                 # class names by id
      preprocess: {size: [32, 32], channels: L, mean: [0.5], std: [0.5]}   # an ImagePreprocess

  The directory may also be a ``pytorch`` artifact that holds a program (a pruned CNN): its manifest says it all.
* **timm** (``config.json`` with ``architecture`` and ``pretrained_cfg``, safetensors weights): built and read by
  :mod:`compress.teachers.timm_hub`, preprocessing from timm's data config, checked against timm's own transform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.artifact import (
    MANIFEST,
    Artifact,
    Format,
    ImagePreprocess,
    Manifest,
    Postprocess,
    Precision,
    SourceInfo,
    digest_dir,
    hash_files,
    library_versions,
)
from compress.artifact_entries import TensorSpec
from compress.errors import ConfigError, ModelLoadError
from compress.tasks import TASKS, Task, repeated_class_name, task_for
from compress.tasks.classification import ClassPostprocess
from compress.teachers.checkpoints import InfoTeacher, model_load_error

PROGRAM_FILE = "model.pt2"
#: TorchScript archives and pickled nn.Modules: loading either runs code from the file, so only with --allow-pickle
MODULE_FILES = ("model.ts", "model.pt")
MODULE_SUFFIXES = (".ts", ".pt", ".pth")
PROGRAM_CONFIG = "model.yaml"
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def is_image_source(path: Path | str) -> bool:
    """Does ``path`` hold an image teacher (a Hugging Face image classifier or regressor, a timm checkpoint, or a
    program directory)?"""
    p = Path(path)
    if p.is_file():
        return p.suffix in (".pt2", *MODULE_SUFFIXES)
    if any((p / name).is_file() for name in (PROGRAM_FILE, *MODULE_FILES)):
        return True
    # a probe, not a loader: anything malformed is "not an image source", and the loader that reads it says why
    if (p / MANIFEST).is_file():
        manifest = _json_object(p / MANIFEST)
        return manifest.get("task") == task_for("image") or (
            manifest.get("task") == task_for("image", numbers=True)
            and (manifest.get("preprocess") or {}).get("kind") == "image")
    cfg = p / "config.json"
    if not cfg.is_file():
        return False
    config = _json_object(cfg)
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    from compress.teachers.timm_hub import is_timm_config

    return arch.endswith("ForImageClassification") or is_timm_config(config)


def _json_object(path: Path) -> dict[str, Any]:
    """``path``'s JSON object, or ``{}`` when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class ImageInfo:
    """What an image teacher is, read before any weights load."""

    path: Path
    kind: str  # "hf" | "timm" | "program" (.pt2) | "module" (TorchScript or a pickled nn.Module, opted in)
    config: dict[str, Any]
    labels: list[str]
    preprocess: ImagePreprocess
    weights: list[str]
    pickled: bool = False
    inputs: list[TensorSpec] = field(default_factory=list)
    task: Task = task_for("image")
    postprocess: Postprocess = field(default_factory=ClassPostprocess)
    max_length: int = 0  # no sequences

    @property
    def architecture(self) -> str | None:
        return (self.config.get("architectures") or [None])[0]

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")


def _labels(config: dict[str, Any], where: str) -> list[str]:
    id2label = config.get("id2label") or {}
    if id2label:
        return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    n = config.get("num_labels")
    if not n:
        raise ModelLoadError(f"{where}: no labels (id2label / num_labels)", hint="save the classifier with its labels")
    return [f"LABEL_{i}" for i in range(int(n))]


def _task(config: dict[str, Any]) -> Task:
    """A Hugging Face or timm image model's task: a regressor says ``problem_type: regression`` in its config (its
    ``num_labels`` outputs are numbers, not class scores)."""
    return task_for("image", numbers=config.get("problem_type") == "regression")


def _hf_info(path: Path, *, allow_pickle: bool, trust_remote_code: bool) -> ImageInfo:
    from compress.teachers.checkpoints import _read_json, inspect_weights, refuse_remote_code
    from compress.teachers.image_processors import preprocess_from_hf

    config = _read_json(path / "config.json")
    refuse_remote_code(path, config, trust_remote_code)
    weights, pickled = inspect_weights(path, allow_pickle=allow_pickle)
    from compress.teachers.timm_hub import is_timm_config, timm_labels, timm_preprocess

    if is_timm_config(config):  # timm's hub format: architecture + pretrained_cfg (compress.teachers.timm_hub)
        return ImageInfo(path=path, kind="timm", config={**config, "architectures": [config["architecture"]],
                                                         "model_type": "timm"},
                         labels=timm_labels(config, str(path)), preprocess=timm_preprocess(config, str(path)),
                         weights=weights, pickled=pickled, task=_task(config))
    if (path / MANIFEST).is_file():  # an artifact (a distilled student): its manifest says how images are read
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return ImageInfo(path=path, kind="hf", config=config, labels=_labels(config, str(path)),
                         preprocess=ImagePreprocess.model_validate(manifest["preprocess"]), weights=weights,
                         pickled=pickled, task=_task(config))
    if not (path / PREPROCESSOR_CONFIG).is_file():
        raise ModelLoadError(f"{path}: no {PREPROCESSOR_CONFIG} (how images become pixel_values)",
                             hint="save the image processor with the model: processor.save_pretrained(DIR)")
    preprocess = preprocess_from_hf(_read_json(path / PREPROCESSOR_CONFIG), source=str(path))
    n_channels = int(config.get("num_channels", 3))
    if n_channels == 1:
        preprocess = preprocess.model_copy(update={"channels": "L", "mean": preprocess.mean[:1],
                                                   "std": preprocess.std[:1]})
    return ImageInfo(path=path, kind="hf", config=config, labels=_labels(config, str(path)), preprocess=preprocess,
                     weights=weights, pickled=pickled, task=_task(config))


def _program_files(path: Path) -> tuple[Path, Path]:
    if path.is_file():
        return path, path.with_suffix(".yaml")
    found = next((path / n for n in (PROGRAM_FILE, *MODULE_FILES) if (path / n).is_file()), path / PROGRAM_FILE)
    return found, path / PROGRAM_CONFIG


def _program_info(path: Path) -> ImageInfo:
    """A program's description: its manifest (a pytorch artifact) or the ``model.yaml`` beside it."""
    program_file, yaml_file = _program_files(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        from compress.artifact import load_artifact

        m = load_artifact(path).manifest
        if not isinstance(m.preprocess, ImagePreprocess):
            raise ModelLoadError(f"{path}: not an image artifact", hint="pass an image classifier")
        task = task_for("image", numbers=TASKS[m.task].targets)
        labels = list(m.labels or []) if not TASKS[task].targets else [  # a regressor's outputs, by number
            f"LABEL_{i}" for i in range(int(m.outputs[0].shape[-1]) if m.outputs else 1)]
        return ImageInfo(path=path, kind="program", config={"architectures": [m.source.architecture]},
                         labels=labels, preprocess=m.preprocess, weights=[m.model_file],
                         inputs=list(m.inputs), task=task)
    if not yaml_file.is_file():
        raise ModelLoadError(
            f"{path}: no {yaml_file.name} beside {program_file.name} (task, labels and preprocessing)",
            hint=f"write {yaml_file.name} with task: image-classification, labels: [...] and preprocess: {{size: [H, W]}}")
    from compress.teachers.model_description import read_yaml_mapping

    meta = read_yaml_mapping(yaml_file, "task, labels and preprocess")
    unknown = sorted(set(meta) - {"task", "labels", "preprocess", "architecture"})
    if unknown:
        raise ConfigError(f"{yaml_file}: unknown key {unknown[0]!r}", hint="known keys: task, labels, preprocess, architecture")
    task = meta.get("task", task_for("image"))
    if task not in (task_for("image"), task_for("image", numbers=True)):
        raise ConfigError(f"{yaml_file}: task {task!r} is not supported for programs",
                          hint="task: image-classification (or regression)")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels:  # a regressor names its outputs (finetune writes LABEL_0, ...)
        raise ConfigError(f"{yaml_file}: labels must be a non-empty list of class names (a regressor's: one name per "
                          "output)", hint="labels: [cat, dog]")
    if why := repeated_class_name([str(x) for x in labels]):
        raise ConfigError(f"{yaml_file}: labels: {why}",
                          hint="labels: [cat, dog]")
    from pydantic import ValidationError

    try:
        preprocess = ImagePreprocess.model_validate({"kind": "image", **(meta.get("preprocess") or {})})
    except ValidationError as e:
        err = e.errors()[0]
        where = " -> ".join(str(p) for p in err["loc"]) or "preprocess"
        raise ConfigError(f"{yaml_file}: preprocess -> {where}: {err['msg']}", hint="see the preprocess keys in docs/guides/images.md") from e
    arch = str(meta.get("architecture") or program_file.stem)
    kind = "program" if program_file.suffix == ".pt2" else "module"
    return ImageInfo(path=path, kind=kind, config={"architectures": [arch]}, labels=[str(x) for x in labels],
                     preprocess=preprocess, weights=[program_file.name], pickled=kind == "module", task=Task(task))


def inspect_image_source(path: Path | str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ImageInfo:
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file or directory", hint="pass a checkpoint directory or a .pt2 program")
    if p.is_file() or any((p / name).is_file() for name in (PROGRAM_FILE, *MODULE_FILES)):
        return _program_info(p)
    if (p / MANIFEST).is_file():  # an artifact: a program (a pruned CNN) or a checkpoint (a distilled student)
        try:
            model_file = json.loads((p / MANIFEST).read_text(encoding="utf-8")).get("model_file", "")
        except (OSError, ValueError):
            model_file = ""
        if str(model_file).endswith(".pt2"):
            return _program_info(p)
    return _hf_info(p, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


@dataclass
class ImageTeacher(InfoTeacher):
    """A loaded image classifier in PyTorch, with the same face as :class:`compress.teachers.load.Teacher`."""

    info: ImageInfo
    model: Any  # nn.Module in eval mode (a program's module for .pt2)
    sha256: str
    tokenizer: Any = None  # image models have none
    processor: Any = None  # the Hugging Face image processor, for the agreement check

    @property
    def input_names(self) -> list[str]:
        return [self.info.preprocess.input_name]

    primary_output = "logits"

    def encoder(self):
        from compress.device.feeds import ImageFeeds

        return ImageFeeds.from_spec(self.info.preprocess.model_dump())

    def call(self, model: Any, tensors: dict[str, Any]) -> Any:
        """The model's logits for ``tensors`` (feeds by input name)."""
        if self.info.kind == "hf":
            out = model(**tensors)
            return out.logits if hasattr(out, "logits") else out[0]
        out = model(*[tensors[n] for n in self.input_names])
        return out[0] if isinstance(out, (tuple, list)) else out

    def example_inputs(self) -> dict[str, Any]:
        """Two images' feeds: what the exporter traces with (batch 2, so the batch axis is seen as dynamic)."""
        import numpy as np
        import torch

        rng = np.random.default_rng(0)
        feeds = self.encoder()
        h, w = feeds.output_shape() or (self.info.preprocess.size[0],) * 2
        images = [rng.integers(0, 256, (h, w, 1 if feeds.channels == "L" else 3), dtype=np.uint8) for _ in range(2)]
        return {k: torch.from_numpy(v) for k, v in feeds.encode(images).items()}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {self.input_names[0]: {0: "batch_size"}, self.primary_output: {0: "batch_size"}}

    def save_inputs(self, directory: Path) -> None:
        """Keep the teacher's own processor config beside the model (the manifest's ``preprocess`` is what runs)."""
        import shutil

        if (self.path / PREPROCESSOR_CONFIG).is_file():
            shutil.copy2(self.path / PREPROCESSOR_CONFIG, Path(directory) / PREPROCESSOR_CONFIG)

    def source(self) -> SourceInfo:
        return SourceInfo(path=str(self.path.resolve()), sha256=self.sha256, architecture=self.info.architecture,
                          model_type=self.info.model_type)

    def manifest(self) -> Manifest:
        """Describe the teacher as a (pytorch, fp32) artifact: the root of every lineage."""
        pp = self.info.preprocess
        h, w = self.encoder().output_shape() or ("height", "width")
        c = 1 if pp.channels == "L" else 3
        shape: list[int | str] = ["batch_size", c, h, w] if pp.layout == "NCHW" else ["batch_size", h, w, c]
        inputs = self.info.inputs or [TensorSpec(name=pp.input_name, dtype="float32", shape=shape)]
        root = self.path if self.path.is_dir() else self.path.parent
        return Manifest(  # a regressor's outputs are numbers, not classes: no labels
            task=self.task, format=Format.pytorch, precision=Precision.fp32,
            labels=None if TASKS[self.task].targets else self.info.labels,
            model_file=self.info.weights[0], inputs=inputs,
            outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch_size", len(self.info.labels)])],
            preprocess=pp, max_length=0, source=self.source(),
            files=hash_files(root) if self.path.is_dir() else {self.path.name: self.sha256},
            versions=library_versions(),
        )

    def as_artifact(self) -> Artifact:
        return Artifact(self.path if self.path.is_dir() else self.path.parent, self.manifest())


def _digest(info: ImageInfo) -> str:
    if info.path.is_dir():
        return digest_dir(info.path)
    from compress.artifact import digest_of
    from compress.device.facts import sha256_file

    program_file, yaml_file = _program_files(info.path)
    return digest_of({p.name: sha256_file(p) for p in (program_file, yaml_file) if p.is_file()})


def load_image_teacher(path: Path | str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ImageTeacher:
    """Load an image-classification teacher (see the module doc)."""
    info = inspect_image_source(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    from compress._optional import require

    require("torch", "loading a PyTorch teacher")
    if info.kind == "program":
        from compress.teachers.programs import load_program, program_inputs, training_mode_ops

        program_file = info.path / info.weights[0] if info.path.is_dir() else info.path
        program = load_program(program_file, allow_pickle=allow_pickle)
        training = training_mode_ops(program)
        if training:
            raise ModelLoadError(
                f"{program_file} was exported in training mode: {training[0]}"
                + (f" and {len(training) - 1} more" if len(training) > 1 else ""),
                hint="call model.eval() before torch.export.export, then save it again")
        specs = program_inputs(program)
        if len(specs) != 1:
            raise ModelLoadError(f"{program_file}: the program takes {len(specs)} inputs; an image classifier takes one",
                                 hint="export the module with a single image tensor argument")
        if not info.inputs:  # the program's own shape; its dynamic first dimension is the batch
            shape = list(specs[0].shape)
            if shape and isinstance(shape[0], str):
                shape[0] = "batch_size"
            info.inputs = [specs[0].model_copy(update={"name": info.preprocess.input_name, "shape": shape})]
        model = program.module()
        return ImageTeacher(info=info, model=model, sha256=_digest(info))
    if info.kind == "module":
        return ImageTeacher(info=info, model=_load_module(info, allow_pickle), sha256=_digest(info))
    if info.kind == "timm":
        from compress.teachers.timm_hub import TimmProcessor, load_timm_model

        model = load_timm_model(info.path, info.config, info.weights, pickled=info.pickled)
        return ImageTeacher(info=info, model=model, sha256=_digest(info), processor=TimmProcessor(info.config))
    transformers = require("transformers", "loading a Hugging Face image classifier")
    transformers.utils.logging.disable_progress_bar()
    kwargs = dict(trust_remote_code=trust_remote_code, local_files_only=True, use_safetensors=not info.pickled)
    auto = transformers.AutoModelForImageClassification
    try:
        model = auto.from_pretrained(str(info.path), **kwargs)
    except Exception as e:
        raise model_load_error(auto, info.path, kwargs, e) from e
    processor = None
    try:
        # the slow (PIL) processor: the one ImageFeeds reproduces and the one a checkpoint's config describes
        processor = transformers.AutoImageProcessor.from_pretrained(str(info.path), local_files_only=True, use_fast=False)
    except Exception:  # noqa: BLE001 - agreement is then measured against the config's own description only
        processor = None
    model.eval()
    return ImageTeacher(info=info, model=model, sha256=_digest(info), processor=processor)


def _load_module(info: ImageInfo, allow_pickle: bool):
    """A TorchScript archive (``torch.jit.load``) or a pickled ``nn.Module`` (``torch.load``): both run code from the
    file, so both need ``allow_pickle``, the opt-in checkpoints have."""
    import torch

    file = info.path / info.weights[0] if info.path.is_dir() else info.path
    if not allow_pickle:
        raise ModelLoadError(f"{file} is a TorchScript archive or a pickled module: loading it runs code from the file",
                             hint="save it with torch.export.save as model.pt2 (loaded without running code), or pass "
                             "--allow-pickle if you trust where it came from")
    try:
        model = torch.jit.load(str(file), map_location="cpu")
    except Exception:  # noqa: BLE001 - not TorchScript: a pickled module, perhaps
        try:
            model = torch.load(str(file), map_location="cpu", weights_only=False)
        except Exception as e:
            raise ModelLoadError(f"{file}: neither TorchScript nor a pickled module ({type(e).__name__})",
                                 hint="save the module with torch.export.save (model.pt2)") from e
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{file} holds a {type(model).__name__}, not a module",
                             hint="save the whole module (or better, torch.export.save it as model.pt2)")
    return model.eval()


def write_student(model, teacher: ImageTeacher, directory: Path) -> Manifest:
    """Save a Hugging Face image classifier derived from ``teacher`` (a distilled student, a pruned ViT) into
    ``directory`` and describe it: the teacher's labels and pinned preprocessing, the teacher as its source."""
    model.save_pretrained(str(directory), safe_serialization=True)
    teacher.save_inputs(directory)
    config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    info = ImageInfo(path=Path(directory), kind="hf", config=config, labels=list(teacher.info.labels),
                     preprocess=teacher.info.preprocess,
                     weights=sorted(f.name for f in Path(directory).glob("*.safetensors")))
    manifest = ImageTeacher(info=info, model=model, sha256=digest_dir(directory)).manifest()
    manifest.source = teacher.lineage()[0]
    return manifest


def prove_reload(directory: Path, call, probe, what: str, atol: float = 1e-4) -> float:
    """The largest |difference| between the logits of the model written to ``directory`` (loaded as any teacher is,
    without unpickling) and ``call`` (the model in memory) on ``probe``; above ``atol`` nothing is kept."""
    import torch

    back = load_image_teacher(directory)
    with torch.inference_mode():
        diff = float((back.call(back.model, {back.input_names[0]: probe}) - call(probe)).abs().max())
    if diff > atol:
        raise ConfigError(f"the written {what} differs from the model in memory by {diff:.3g}",
                          hint="rerun with --debug and report it; no artifact was written")
    return diff
