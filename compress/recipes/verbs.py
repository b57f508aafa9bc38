"""What each verb is, declared once: the table the recipe schema, the planner, the executor and the CLI read.

Like :data:`compress.runtimes.base.RUNTIMES`, the table holds import strings (``"module:attribute"``) resolved only
when used, so importing it imports no stage, no pydantic model and no ML library (``edgecompress --help`` reads it).

A verb here is a recipe verb: one of the steps (distill, prune, export, quantize: each takes the output of the
teacher or of another step), a measuring verb (validate, package: an artifact × a profile, listed under the
recipe's ``validate:`` and ``package:``), or finetune (the recipe's teacher, when the recipe makes it from a base). Commands that are only commands (inspect, doctor, ...) are listed beside
this table in :data:`compress.cli.COMMANDS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.progress import Progress

TEACHER = "teacher"
SECONDS_PER_TRAIN_STEP = 0.5  # a 3-layer MiniLM student, batch 32, 2 threads


def resolve(target: str) -> Any:
    """The object an import string ``"module:attribute"`` names (the module imported now)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class StepContext:
    """What a verb's recipe adapter gets besides its input, its settings and its output directory."""

    run: Path  #: the run directory (shared caches; reports name their files relative to it)
    work: Path  #: this job's work directory (distillation checkpoints: an interrupted run resumes from them)
    teacher: str  #: the recipe's teacher
    data: dict[str, str]  #: the recipe's data files passed beside the settings (train, eval_data, calibration)
    force: bool  #: the output directory exists (a --rerun of a cached job, or a leftover of an interrupted one)
    say: Progress  #: progress (compress.progress events)


@dataclass(frozen=True)
class Verb:
    """One verb: what it is called with, what it reads, what it takes, what it costs."""

    config: str  #: "module:Class" of its settings model (pydantic)
    command: str  #: "module:attribute" of its Click command
    run: str  #: "module:function" the recipe executor calls: ``run(source, config, out, StepContext) -> summary``
    paths: tuple[str, ...] = ()  #: settings (dotted) that hold a path: relative to the recipe file, ``builtin:`` expanded
    takes_from: tuple[str, ...] = ()  #: a step: the verbs (or the teacher) whose output it may take
    measures: bool = False  #: validate and package: run per artifact × profile, keyed with the profile and CPU
    section: str | None = None  #: a measuring verb: the Recipe field that lists its artifacts and profiles
    trains: bool = False  #: needs a trainable teacher (a checkpoint, not a model file) when it takes the teacher
    makes_teacher: bool = False  #: it makes the recipe's teacher from a base (``data["base"]``), before every step
    deployable: bool = False  #: its output can be validated and packaged
    format: str | None = "pytorch"  #: the format of its output; None: its input's
    format_option: str | None = None  #: the setting that names its output's format (``format``: its default)
    data: dict[str, str] = field(default_factory=dict)  #: inputs beside the settings: name -> the recipe data
    needs: dict[str, str] = field(default_factory=dict)  #: recipe data it cannot run without -> what it is
    defaults: dict[str, tuple[str, ...]] = field(default_factory=dict)  #: option -> recipe data or teacher, first set
    stamped: bool = False  #: every run writes a new directory (a re-measured report never replaces the gated one)
    seconds: float = 0  #: a rough fixed cost (seconds on 2 CPU cores) for --dry-run; previous runs' timings win
    train_steps: Callable[[dict[str, Any], dict[str, str]], float] | None = None  #: (settings, data) -> its steps
    step_name: str = ""  #: --from-artifact's name for such a step (``{setting}`` filled in); "" its verb
    name_defaults: dict[str, str] = field(default_factory=dict)  #: the values ``step_name`` takes when unset

    def config_model(self) -> Any:
        """The pydantic settings model its options are checked against (imported now)."""
        return resolve(self.config)

    def runner(self) -> Callable[..., dict[str, Any]]:
        """The recipe adapter (imported now)."""
        return resolve(self.run)

    def rough_seconds(self, settings: dict[str, Any], data: dict[str, str]) -> float:
        """A rough cost of a job never run before (the dry run labels it an estimate)."""
        if self.train_steps is None:
            return self.seconds
        return self.seconds + self.train_steps(settings, data) * SECONDS_PER_TRAIN_STEP

    def name_for(self, verb: str, config: dict[str, Any]) -> str:
        """How --from-artifact names a step of this verb made with ``config``."""
        if not self.step_name:
            return verb
        return self.step_name.format(**{k: config.get(k) or d for k, d in self.name_defaults.items()})


def _distill_steps(settings: dict[str, Any], data: dict[str, str]) -> float:
    training, augmentation = settings.get("training") or {}, settings.get("augmentation") or {}
    if "max_steps" in training:
        return training["max_steps"]
    rows = min(_train_rows(data.get("train")), int(settings.get("max_train_rows") or 10**9))
    return rows * (1 + int(augmentation.get("copies", 0)) + int(augmentation.get("join", 0))) * float(
        training.get("epochs", 3.0)) / int(training.get("batch_size", 32))


def _qat_steps(settings: dict[str, Any], data: dict[str, str]) -> float:
    return float((settings.get("qad") or {}).get("steps") or 0)


def _recover_steps(settings: dict[str, Any], data: dict[str, str]) -> float:
    return int((settings.get("recovery") or {}).get("steps", 0))


def _finetune_steps(settings: dict[str, Any], data: dict[str, str]) -> float:
    training = settings.get("training") or {}
    if "max_steps" in training:
        return training["max_steps"]
    return _train_rows(data.get("train")) * float(training.get("epochs", 3.0)) / int(training.get("batch_size", 32))


def _train_rows(path: str | None) -> int:
    """Rows of a table (lines less the header), or sentences of a CoNLL file (blank-line separated)."""
    if not path or not Path(path).is_file():
        return 1000
    with open(path, "rb") as f:
        if Path(path).suffix.lower() in (".txt", ".conll", ".iob", ".bio"):
            return max(sum(1 for line in f if not line.strip()), 1)
        return max(sum(1 for _ in f) - 1, 1)


_TRAINING_DATA = {"train": "train", "eval_data": "eval"}
_PARITY_DATA = {"sample_data": ("eval", "train")}

#: verb -> what it is. The order is the recipe's: the steps' verbs first (as error messages list them).
VERBS: dict[str, Verb] = {
    "distill": Verb(
        config="compress.stages.distill.config:DistillConfig", command="compress.cli.distill:distill_cmd",
        run="compress.recipes.steps:run_distill", paths=("student.checkpoint",), takes_from=(TEACHER,),
        trains=True, data=_TRAINING_DATA, needs={"train": "transfer data"}, train_steps=_distill_steps,
        step_name="student"),
    "prune": Verb(
        config="compress.stages.prune.config:PruneConfig", command="compress.cli.prune:prune_cmd",
        run="compress.recipes.steps:run_prune", paths=("vocab.corpus", "importance.data", "recovery.teacher",
                                                             "recovery.teacher_cache"),
        takes_from=(TEACHER, "distill", "prune"), trains=True, data=_TRAINING_DATA, seconds=60,
        train_steps=_recover_steps, step_name="pruned"),
    "export": Verb(
        config="compress.stages.export.config:ExportConfig", command="compress.cli.export:export_cmd",
        run="compress.recipes.steps:run_export",
        paths=("sample_data", "calibration.data", "tensorrt.timing_cache"),
        takes_from=(TEACHER, "distill", "prune", "export"), deployable=True, format="onnx", format_option="format",
        defaults=_PARITY_DATA, seconds=30, step_name="{format}", name_defaults={"format": "onnx"}),
    "quantize": Verb(
        config="compress.stages.quantize.config:QuantizeConfig", command="compress.cli.quantize:quantize_cmd",
        run="compress.recipes.steps:run_quantize",
        paths=("calibration.data", "sample_data", "accuracy.data", "qad.data", "qad.source"),
        takes_from=("export",), deployable=True, format=None, data={"calibration": "calibration"},
        defaults=_PARITY_DATA, seconds=20, train_steps=_qat_steps, step_name="quantized-{precision}",
        name_defaults={"precision": "int8"}),
    # the recipe's teacher when the recipe fine-tunes it (teacher: {finetune: {base: ...}}): a job, not a step
    "finetune": Verb(
        config="compress.stages.finetune.config:FinetuneConfig", command="compress.cli.finetune:finetune_cmd",
        run="compress.recipes.steps:run_finetune", trains=True, makes_teacher=True, data=_TRAINING_DATA,
        needs={"train": "training data"}, seconds=30, train_steps=_finetune_steps, step_name="teacher"),
    "validate": Verb(
        config="compress.validation.config:ValidateConfig", command="compress.cli.validate:validate_cmd",
        run="compress.recipes.steps:run_validate", paths=("data", "teacher", "ssh_config", "generation.prompts"), measures=True,
        section="validate_", defaults={"data": ("eval",), "teacher": (TEACHER,)}, stamped=True, seconds=90),
    "package": Verb(
        config="compress.packaging.config:PackageConfig", command="compress.cli.package:package_cmd",
        run="compress.recipes.steps:run_package", measures=True, section="package", seconds=60),
}
#: the verbs a recipe step names (distill, prune, export, quantize)
STEP_VERBS = tuple(name for name, v in VERBS.items() if v.takes_from)
#: the verbs listed per artifact × profile (validate, package)
MEASURING_VERBS = tuple(name for name, v in VERBS.items() if v.measures)
