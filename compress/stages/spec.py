"""What each stage accepts and produces, checked in one place, and the one way a stage records itself.

Every stage declares a :class:`StageSpec`: the (format, precision) pairs and tasks it takes, the pairs it
makes, and the libraries whose versions its step records. :meth:`StageSpec.check` refuses an input the stage
does not take with one message shape and the legal next step; :meth:`StageSpec.record` derives the child
artifact's step record (config, versions, input digest, lineage) and refuses, as a bug, an output the stage
did not declare. :meth:`StageSpec.seal` stamps the wall time and output digest when the files are final.
No stage builds a :class:`~compress.artifact.StepRecord` by hand, and no stage calls those two itself either:
:meth:`StageSpec.output` gives it a :class:`StageOutput`, which stages the directory, records the step, seals it,
writes the manifest, renames the directory into place and loads the artifact (the way Olive's ``Pass.run``
wraps a pass). The stage writes its model and says what it made.

A teacher checkpoint (a plain Hugging Face directory, not an artifact) counts as ``pytorch``/``fp32``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.artifact import (
    Artifact,
    Format,
    Manifest,
    Precision,
    StepRecord,
    digest_dir,
    load_artifact,
    write_manifest,
)
from compress.errors import ArtifactError
from compress.storage import check_output, staged_dir
from compress.tasks import Task

_ALL_TASKS = frozenset(Task)


def pairs(fmt: Format, *precisions: Precision) -> dict[Format, frozenset[Precision]]:
    """``{fmt: {precisions}}``: the building block of ``accepts``/``produces``."""
    return {fmt: frozenset(precisions)}


@dataclass(frozen=True)
class StageSpec:
    """A stage's declaration: what it takes, what it makes, what its step record names."""

    stage: str  #: step name in the manifest (``export``, ``quantize``, ...)
    verb: str  #: how messages name the stage ("quantize", "TensorRT export")
    accepts: Mapping[Format, frozenset[Precision]]
    produces: Mapping[Format, frozenset[Precision]]
    versions: tuple[str, ...]  #: libraries whose versions the step records (from the manifest's versions)
    hint: str  #: the legal next step when an input's format is refused
    precision_hint: str | None = None  #: ... when only its precision is refused
    tasks: frozenset[Task] = field(default=_ALL_TASKS)
    config_version: int = 1

    def takes(self, fmt: Format, precision: Precision) -> bool:
        return precision in self.accepts.get(fmt, ())

    def describe_accepts(self) -> str:
        return describe(self.accepts)

    def check(self, art: Artifact) -> None:
        """Refuse an input artifact this stage does not take (exit 2, one line, the legal next step)."""
        if art.format not in self.accepts:
            raise ArtifactError(f"{art.path} is a {art.format} artifact; {self.verb} takes {self.describe_accepts()}",
                                hint=self.hint)
        if art.precision not in self.accepts[art.format]:
            made_here = art.precision in self.produces.get(art.format, ())  # e.g. quantizing an INT8 model again
            raise ArtifactError(f"{art.path} is {'already ' if made_here else ''}{art.format} {art.precision}; "
                                f"{self.verb} takes {self.describe_accepts()}", hint=self.precision_hint or self.hint)
        if art.task not in self.tasks:
            raise ArtifactError(f"{art.path} is a {art.task} model; {self.verb} takes "
                                f"{' or '.join(sorted(t.value for t in self.tasks))} models", hint=self.hint)

    def record(self, manifest: Manifest, config: Any, *, input_digest: str | None,
               lineage: Sequence[StepRecord] = (), extra_config: Mapping[str, Any] | None = None,
               metrics: dict[str, Any] | None = None) -> StepRecord:
        """Append this stage's step to ``manifest`` (after ``lineage``, the input's steps) and return it.

        ``manifest`` is the child's, with its format and precision already set: one this stage does not declare
        is a bug in the stage, not the user's input, so it raises ``AssertionError``.
        """
        made = self.produces.get(manifest.format, frozenset())
        assert manifest.precision in made, (
            f"{self.stage} declared {describe(self.produces)} but made {manifest.format} {manifest.precision}")
        cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
        step = StepRecord(
            stage=self.stage,
            config=cfg | dict(extra_config or {}),
            config_version=self.config_version,
            versions={k: manifest.versions.get(k) for k in self.versions if k in manifest.versions},
            input_digest=input_digest,
            metrics=metrics if metrics is not None else {},
        )
        manifest.steps = [*lineage, step]
        return step

    @staticmethod
    def seal(step: StepRecord, directory: Path, t0: float) -> StepRecord:
        """Stamp the step's wall time (since ``t0``, a ``perf_counter`` reading) and the written files' digest."""
        step.seconds = round(time.perf_counter() - t0, 3)
        step.output_digest = digest_dir(directory)
        return step

    def output(self, out: Path | str, config: Any, *, force: bool = False, t0: float | None = None) -> StageOutput:
        """Claim ``out`` for this stage's artifact (refused now if it exists and ``force`` is off); see
        :class:`StageOutput`. ``config`` is what the step records; ``t0``: when the step's clock started (a
        ``perf_counter`` reading; default now)."""
        return StageOutput(self, check_output(out, force), config, force=force,
                           t0=time.perf_counter() if t0 is None else t0)


class StageOutput:
    """The artifact a stage is writing: every step of the bookkeeping around the model, in one place.

    ::

        output = QUANTIZE_ONNX.output(out, config, force=force)  # refuses an existing --out now; the clock starts
        with output.writing(need_bytes=n) as o:                  # a staging directory, renamed to out on success
            save_model(o.dir / "model.onnx")
            manifest = child_manifest(art.manifest, precision=Precision.int8, model_file="model.onnx")
            step = o.describe(manifest, input_digest=art.digest, lineage=art.manifest.steps)
            check(o.draft())          # the manifest so far, written, for the stage's own checks of its files
            step.metrics["parity"] = ...
        return output.artifact        # sealed (time, output digest), manifest written, renamed, loaded

    Nothing is at ``out`` unless the block finishes: an error, Ctrl-C or SIGTERM removes the staging directory
    (:func:`~compress.storage.staged_dir`). Long work that resumes (distillation's run directory) happens
    before :meth:`writing`, outside the output.
    """

    def __init__(self, spec: StageSpec, path: Path, config: Any, *, force: bool, t0: float) -> None:
        self.spec = spec
        self.path = path  #: where the artifact appears
        self.config = config
        self.force = force
        self.t0 = t0
        self.manifest: Manifest | None = None
        self.step: StepRecord | None = None
        self.artifact: Artifact | None = None  #: the loaded artifact, once :meth:`writing` has finished
        self._dir: Path | None = None

    @property
    def dir(self) -> Path:
        """The staging directory the stage writes its files into (inside :meth:`writing` only)."""
        if self._dir is None:
            raise AssertionError(f"{self.spec.stage} writes {self.path} inside `with output.writing():`")
        return self._dir

    @contextlib.contextmanager
    def writing(self, *, need_bytes: int | None = None, load: bool = True) -> Iterator[StageOutput]:
        """Stage the directory; when the block ends, seal the step, write the manifest and rename it to ``out``.

        ``need_bytes``: what the stage expects to write (for a full-disk message); ``load``: load (and verify)
        the written artifact into :attr:`artifact`.
        """
        with staged_dir(self.path, self.force, need_bytes=need_bytes) as tmp:
            self._dir = tmp
            try:
                yield self
                if self.step is None or self.manifest is None:
                    raise AssertionError(f"{self.spec.stage} wrote {self.path} without describing it")
                self.spec.seal(self.step, tmp, self.t0)
                write_manifest(tmp, self.manifest)
            finally:
                self._dir = None
        if load:
            self.artifact = load_artifact(self.path)

    def describe(self, manifest: Manifest, *, input_digest: str | None, lineage: Sequence[StepRecord] = (),
                 extra_config: Mapping[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                 config: Any = None) -> StepRecord:
        """What the stage made: the child's ``manifest`` (its format and precision set) gets this stage's step
        after ``lineage`` (see :meth:`StageSpec.record`). Returns the step, whose metrics the stage may still fill
        in. ``config``: what the step records instead of the output's config (adopt records what it adopted)."""
        self.manifest = manifest
        self.step = self.spec.record(manifest, self.config if config is None else config, input_digest=input_digest,
                                     lineage=lineage, extra_config=extra_config, metrics=metrics)
        return self.step

    def draft(self, directory: Path | None = None) -> Artifact:
        """Write the manifest as it stands into ``directory`` (default: the staging directory) and return that
        directory as an artifact, for the stage's own checks of what it wrote (parity, reload)."""
        if self.manifest is None:
            raise AssertionError(f"{self.spec.stage}: describe the output before drafting its manifest")
        directory = self.dir if directory is None else directory
        write_manifest(directory, self.manifest)
        return Artifact(directory, self.manifest)


def describe(table: Mapping[Format, Iterable[Precision]]) -> str:
    """``onnx fp32, openvino fp32``: a spec's pairs, as messages print them."""
    return ", ".join(f"{fmt} {'/'.join(sorted(p.value for p in precs))}" for fmt, precs in table.items())


def spec_for(specs: Sequence[StageSpec], art: Artifact) -> StageSpec:
    """The spec of a stage family (one per backend) that takes ``art``; refuse it, naming them all, if none does."""
    for spec in specs:
        if spec.takes(art.format, art.precision) and art.task in spec.tasks:
            return spec
    for spec in specs:
        if spec.takes(art.format, art.precision):
            spec.check(art)  # refuses the task, the only thing left that can fail

    def union(tables: Iterable[Mapping[Format, frozenset[Precision]]]) -> dict[Format, frozenset[Precision]]:
        out: dict[Format, frozenset[Precision]] = {}
        for table in tables:
            for fmt, precs in table.items():
                out[fmt] = out.get(fmt, frozenset()) | precs
        return out

    family = StageSpec(specs[0].stage, specs[0].verb, union(s.accepts for s in specs),
                       union(s.produces for s in specs), (), specs[0].hint, specs[0].precision_hint)
    family.check(art)
    raise AssertionError("unreachable: the family takes what none of its members takes")
