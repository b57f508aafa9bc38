"""``validate``: measure an artifact on a device profile and judge it against the profile's budgets.

What is measured (and how):
- task metric of the teacher (PyTorch FP32, the reference) and of the artifact on labelled eval data:
  accuracy and macro-F1 for classifiers; for sentence embeddings the metric is the mean cosine
  similarity to the teacher's embeddings (teacher = 1.0);
- agreement with the teacher: same predicted label (classifiers); for embeddings, the share of eval
  texts whose teacher-nearest neighbour is among the artifact's 3 nearest (top-1 is reported too);
- latency at the profile's input shape (batch × sequence length): warm-up, then alternating rounds of
  the artifact and the teacher's FP32 baseline *on the same runtime* until both reach the minimum
  run count and duration; nearest-rank percentiles with run count and coefficient of variation;
- model size on disk, and a fresh process that loads the artifact and runs one inference:
  import, session creation and first-inference times, and its peak resident memory.

:func:`validate` measures here or on one device (``--remote user@host``); :func:`validate_fleet` on several devices
at once (:mod:`compress.validation.fleet`), a report per device and the worst verdict.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress import __version__
from compress.artifact import Artifact, Format
from compress.device.facts import cpu_model
from compress.errors import ConfigError, MissingBackendError
from compress.host.load import LoadSampler
from compress.host.measure import ForwardPass, probe_cold_start
from compress.profiles.schema import SpeedupBaseline
from compress.progress import Progress, start_phase
from compress.tasks import TASKS, by_kind, is_generator
from compress.validation.common import (
    ValidationReport,
    ValidationRun,
    baseline_artifact,
    conclude,
    latency_texts,
    scoring_batch,
)
from compress.validation.config import ValidateConfig
from compress.validation.estimated import (
    device_check,
    estimate_latency,
    host_settings,
    mark_estimated,
    note_device,
    validate_unrunnable,
)
from compress.validation.metrics import Scores

if TYPE_CHECKING:
    from compress.validation.fleet import FleetReport

log = logging.getLogger(__name__)


# -- the check ----------------------------------------------------------------------------------

def _teacher_dir(art: Artifact, given: str | None) -> Path | None:
    if given:
        return Path(given)
    from compress.artifact import reference_teacher

    src = Path(reference_teacher(art.manifest)[0])
    origin = art.manifest.source.origin
    if origin and str(src) == art.manifest.source.path:  # the checkpoint a GGUF dequantized to, in the cache
        from compress.teachers.gguf_checkpoint import recorded_checkpoint

        return recorded_checkpoint(src, origin)  # held there, or made again from the same file when dropped or damaged
    return src if src.exists() else None  # a checkpoint directory, or an adopted model file


def validate(
    artifact: Artifact | Path | str,
    config: ValidateConfig | None = None,
    *,
    progress: Progress | None = None,
) -> ValidationReport:
    """Measure ``artifact`` on ``config.profile`` (here, or on the one device ``config.remote`` names) and judge it.
    Raises only for bad input; a ``config.remote`` naming several devices is refused (:func:`validate_fleet`).

    ``progress`` receives :mod:`compress.progress` events, one phase after another (evaluating, timing, cold
    start, ...): counted by rows, or by the ``fraction`` reached; the CLI draws bars, library users can ignore it.
    """
    return _validate(artifact, config or ValidateConfig(), progress, fleet=False)


def validate_fleet(
    artifact: Artifact | Path | str,
    config: ValidateConfig,
    *,
    progress: Progress | None = None,
) -> FleetReport:
    """Measure ``artifact`` on every device ``config.remote`` names (a comma list of ``user@host[:port]`` and fleet
    files; one device is a fleet of one) at once over SSH and judge each against its own profile: a
    :class:`~compress.validation.fleet.FleetReport`, a row per device and the worst verdict (what
    ``edgecompress validate`` calls when ``--remote`` names several devices). ``progress`` as :func:`validate`'s."""
    if not config.remote:
        raise ConfigError("validate_fleet measures on the devices config.remote names, and it names none",
                          hint="name them (remote='pi@board1,pi@board2', or a fleet YAML file), or call validate()")
    return _validate(artifact, config, progress, fleet=True)


def _validate(artifact: Artifact | Path | str, config: ValidateConfig, progress: Progress | None, *, fleet: bool):
    """:func:`validate`, or with ``fleet`` :func:`validate_fleet`: the same checks and preparation, then the
    measurement here, on one device or on the fleet."""
    from compress.profiles.load import load_profile
    from compress.runtimes.base import RuntimeSettings, runtime_class
    from compress.runtimes.host import runtime_for

    t_start = time.perf_counter()
    profile = load_profile(config.profile)
    from compress.validation.user_metric import load_metric

    user_metric = load_metric(config.metric) if config.metric else None  # fails before anything is measured
    if isinstance(artifact, Artifact):
        art = artifact
    else:
        from compress.teachers.load import load_source

        art = load_source(artifact, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    measure = by_kind(_KINDS, art.manifest, "validate")  # a kind it does not take: refused before any other check
    given = [p for p in config.given() if p.startswith("generation.")]
    if given and not is_generator(art.manifest):  # a text generator's options on another model: not ignored
        raise ConfigError(f"{config.option(given[0])} applies to text generators (task text-generation); "
                          f"{art.path.name} is a {art.manifest.task} model", hint="drop it")
    profile = runtime_for(profile, art.format)  # host: the runtime the artifact's format needs
    runtime_name = profile.runtime.name
    cls = runtime_class(runtime_name)
    remote = None
    if config.remote:  # checked before any data or teacher is loaded
        if TASKS[art.manifest.task].labels == "spans":
            raise ConfigError("--remote does not measure a question-answering model yet (its windows and best spans "
                              "are read here)", hint="validate on the host, or run validate on the device itself")
        from compress.validation.fleet import remote_of

        remote = remote_of(config, profile, art, fleet=fleet)
    # threads: the profile's, else one per core of the profiled device (the target's parallelism, not ours)
    settings = RuntimeSettings(
        threads=profile.runtime.threads or profile.hardware.cores,
        provider=profile.runtime.provider,
        options=dict(profile.runtime.options),
    )
    warnings: list[str] = []
    if remote is None:
        # Is this machine the profiled device? If not, latency is a roofline estimate (UNVERIFIED) while
        # accuracy is still measured here: the artifact's arithmetic is the same on any CPU.
        device, estimating = device_check(profile, config, warnings)
        run_settings = host_settings(settings)  # no more threads than this process may use (affinity, cgroup)
        if not estimating:  # this machine is the device: what it runs is what it is
            settings = run_settings
        cls.check_artifact(art, run_settings)  # a missing device/provider/engine target fails before data loads
        if not cls.runs_here() and not estimating:
            raise MissingBackendError(f"{runtime_name} does not run on this machine ({sys.platform}), so "
                                      f"{profile.name} cannot be measured here",
                                      hint="run validate on the device (or --remote), or let it estimate "
                                      "(--estimate auto or always)")

    run = ValidationRun(art, profile, config, settings, None, None, warnings, progress, t_start, user_metric)
    return measure(run, runtime_name, remote, None if remote else (run_settings, device, estimating))


def _validate_forward(run: ValidationRun, runtime_name: str, remote, here) -> ValidationReport:
    """One forward pass per batch: the eval rows predicted and scored against the labels and the teacher, then timed
    beside the teacher's FP32 baseline (here, or on the ``remote`` device; ``here`` as :func:`_validate_generation`
    takes it)."""
    from compress.cache import usage as cache_usage
    from compress.runtimes.base import load_runtime, runtime_class

    config, art, m = run.config, run.art, run.art.manifest
    dataset = _eval_data(config, m)
    teacher = _teacher(art, config, run.warnings)
    run = dataclasses.replace(run, dataset=dataset, teacher=teacher)
    if remote is not None:  # the device measures; this machine tokenizes, runs the teacher and judges
        from compress.validation.fleet import measure_remote

        report = measure_remote(remote, run)
        return report.model_copy(update={"data": _data_record(config, dataset)})

    run_settings, device, estimating = here
    if not runtime_class(runtime_name).runs_here():  # Core ML away from Apple's systems: the latency is estimated
        report = validate_unrunnable(run, device, runtime_name)
        return report.model_copy(update={"data": _data_record(config, dataset)})
    log.info("loading %s in %s", art.path, runtime_name)
    backend = load_runtime(art, runtime_name, run_settings)
    metrics: dict[str, Any] = {}
    cache_use: dict[str, Any] = {}

    # accuracy, agreement and fidelity
    if dataset is not None:
        metrics.update(_accuracy(backend, run, run_settings, cache_use))

    # latency: artifact and the teacher's FP32 baseline, interleaved, same runtime and settings
    stats, estimates, batch = _latency(backend, run, runtime_name, metrics, estimating)
    env = _environment(backend, {**cache_usage(), **cache_use})
    backend.close()

    # cold start, peak memory
    cold = None
    if config.measure.cold_start:
        start_phase(run.progress, "cold start in a fresh process")
        cold = probe_cold_start(art, runtime_name, run.settings.threads, run.settings.provider,
                                run.profile.measure.batch_size, run.profile.measure.sequence_length,
                                feeds=_plain_feeds(batch))
    report = conclude(run, metrics, stats, cold, env)
    report = report.model_copy(update={"data": _data_record(config, dataset)})
    return mark_estimated(report, run, device, estimates) if estimating else note_device(report, device)


def _validate_generation(run: ValidationRun, runtime_name: str, remote, here) -> ValidationReport:
    """A causal LM: prompts through its KV cache, tokens/s, perplexity (``here``: the run settings, device and whether
    latency is estimated, for a run on this machine)."""
    from compress.validation.generation import validate_generation

    if remote is not None:
        raise ConfigError("--remote does not measure a text generator yet", hint="run validate on the device")
    return validate_generation(run.art, run, runtime_name, *here, tdir=_teacher_dir(run.art, run.config.teacher),
                               environment=_environment)


def _validate_stream(run: ValidationRun, runtime_name: str, remote, here) -> ValidationReport:
    """A streaming model: each sequence call by call, the state carried (here or on the ``remote`` device)."""
    from compress.validation.stream import validate_stream

    run_settings, device, estimating = here or (None, None, False)
    return validate_stream(run.art, run, runtime_name, run_settings, device, estimating,
                           tdir=_teacher_dir(run.art, run.config.teacher), environment=_environment, remote=remote)


#: how validate measures a model of each kind (:func:`compress.tasks.by_kind`), once the checks every kind shares
#: have passed
_KINDS: dict[str, Callable[..., ValidationReport]] = {"forward": _validate_forward, "generation": _validate_generation,
                                                      "stream": _validate_stream}


def _eval_data(config: ValidateConfig, m):
    """``config.data`` read as the manifest ``m`` describes inputs and labels (SQuAD JSON for QA); None without."""
    from compress.data.inputs import load_inputs

    if config.data and TASKS[m.task].labels == "spans":  # question answering: SQuAD-format JSON
        from compress.data.squad import load_squad

        return load_squad(config.data, limit=config.limit)
    if not config.data:
        return None
    one_label = m.labels is not None and TASKS[m.task].labels != "values"  # labels named by class
    label2id = {name: i for i, name in enumerate(m.labels)} if one_label else None
    return load_inputs(config.data, m.preprocess, text_column=config.text_column,
                       text_pair_column=config.text_pair_column, label_column=config.label_column, label2id=label2id,
                       num_labels=len(m.labels) if one_label else None, require_labels=one_label, limit=config.limit,
                       targets=TASKS[m.task].targets)


def _teacher(art: Artifact, config: ValidateConfig, warnings: list[str]):
    """The teacher (``--teacher``, else the recorded source if it is here), with a warning when it is not the recorded
    one or there is none (None)."""
    from compress.artifact import reference_teacher
    from compress.teachers.load import load_teacher

    m = art.manifest
    tdir = _teacher_dir(art, config.teacher)
    if tdir is None:
        if config.teacher is None:
            warnings.append("no teacher: the recorded source is not on this machine; pass --teacher")
        return None
    teacher = load_teacher(tdir, m.task, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    ref_path, ref_sha = reference_teacher(m)
    if teacher.sha256 != ref_sha:
        warnings.append(f"teacher {tdir} differs from the artifact's recorded teacher ({ref_path}, "
                        f"sha256 {ref_sha[:12]}…): retention is measured against the teacher given")
    return teacher


def _latency(backend, run: ValidationRun, runtime_name: str, metrics: dict[str, Any], estimating: bool):
    """The artifact's and its FP32 baseline's latency (same runtime and settings) timed interleaved, or estimated
    (roofline): (stats, estimates or None, the artifact's batch)."""
    meas, m, dataset = run.profile.measure, run.art.manifest, run.dataset
    texts = latency_texts(dataset.inputs if dataset is not None else None, meas.batch_size, meas.sequence_length,
                          m.preprocess)
    batch = backend.encode(texts, pad_to=meas.sequence_length)
    if estimating:  # roofline of the artifact (and the FP32 baseline) against the profile's peaks
        start_phase(run.progress, "estimating latency (roofline)")
        stats, estimates = estimate_latency(run, runtime_name)
        return stats, estimates, batch
    runs: dict[str, Callable[[], Any]] = {"artifact": _runner(backend, batch)}
    baseline_backend = None
    if run.config.measure.baseline and run.teacher is not None:
        baseline_backend = _baseline_backend(run, runtime_name, metrics)
        if baseline_backend is not None:
            runs["baseline"] = _runner(baseline_backend, baseline_backend.encode(texts, pad_to=meas.sequence_length))
    with LoadSampler() as load:  # how busy the machine was while it timed (the report's host_load)
        stats = ForwardPass(runs, batch_size=meas.batch_size, warmup=meas.warmup, min_runs=meas.min_runs,
                            min_duration_s=meas.min_duration_s, max_runs=meas.max_runs,
                            phase=f"timing {' and '.join(runs)}").measure(run.progress)
    run.host_load = load.result
    if baseline_backend is not None:
        baseline_backend.close()
    return stats, None, batch


def _plain_feeds(batch) -> dict[str, Any] | None:
    """The timed batch for the cold-start probe when it is plain arrays by input name (else the probe makes its own)."""
    import numpy as np

    if isinstance(batch, dict) and batch and all(isinstance(v, np.ndarray) and v.dtype != object for v in batch.values()):
        return batch
    return None


def _baseline_backend(run: ValidationRun, runtime_name: str, metrics: dict[str, Any]):
    """The teacher's FP32 baseline loaded for timing beside the artifact: in PyTorch on every core when the profile's
    ``measure.speedup_baseline`` asks for what the artifact replaces, else in the artifact's runtime and settings
    (the baseline exported once and cached: :func:`~compress.validation.common.baseline_artifact`); None where
    there is none (the artifact is the PyTorch model itself: noted in the warnings)."""
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.teachers.load import teacher_format

    art, teacher, profile = run.art, run.teacher, run.profile
    if art.format is Format.pytorch:
        run.warnings.append("the artifact is the PyTorch model itself: no separate FP32 baseline")
        return None
    if profile.measure.speedup_baseline is SpeedupBaseline.pytorch and teacher_format(teacher) is Format.pytorch:
        threads = host_settings(RuntimeSettings(threads=profile.hardware.cores)).threads
        metrics["speedup_baseline"] = f"teacher in PyTorch FP32 on {threads} thread(s)"
        return load_runtime(teacher.as_artifact(), "torch", RuntimeSettings(threads=threads))
    base_art = baseline_artifact(teacher, runtime_name, art, allow_pickle=run.config.allow_pickle)
    return None if base_art is None else load_runtime(base_art, runtime_name, run.settings)


def _environment(backend, cache: dict[str, Any]) -> dict[str, Any]:
    """Where the figures were measured: this machine, its Python and edgecompress, the runtime, the cache."""
    return {
        "host": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "edgecompress": __version__,
        "runtime": backend.describe(),
        "measured_on": "local",
        "cache": cache,
    }


def _accuracy(backend, run: ValidationRun, settings, cache_use: dict[str, Any]) -> dict[str, Any]:
    """The artifact's outputs on the eval rows scored batch by batch as they come (:class:`Scores`, through the
    task's streaming form) against the teacher's (from the cache when this teacher already ran on these rows): the
    task metric (or the user's), agreement, retention, and every output's fidelity."""
    from compress.validation.teacher_outputs import other_outputs_fidelity, predict_batches, teacher_outputs

    m = backend.artifact.manifest
    teacher, dataset, bs = run.teacher, run.dataset, scoring_batch(m, run.profile.measure)
    ref = None
    if teacher is not None:
        ref, cache_use["teacher_outputs"] = teacher_outputs(
            teacher, dataset, batch_size=run.profile.measure.eval_batch_size, threads=settings.threads,
            use_cache=run.config.cache, progress=run.progress)
    scores, done = Scores(m, run.user_metric), 0
    for cand, labels in predict_batches(backend, dataset, bs,
                                        start_phase(run.progress, "evaluating the artifact", len(dataset))):
        scores.update(cand, labels, None if ref is None else ref[done:done + len(cand)])
        done += len(cand)
    metrics = {**scores.result(), "eval_batch_size": bs}
    if len(m.outputs) > 1 and teacher is not None and "output_fidelity" in metrics:
        metrics["output_fidelity"].update(other_outputs_fidelity(backend, run, settings))
    return metrics


def _data_record(config: ValidateConfig, dataset) -> dict[str, Any] | None:
    """Which data the report's metrics come from (None without --data)."""
    if dataset is None:
        return None
    from compress.validation.teacher_outputs import data_digest

    return {"path": str(Path(config.data).resolve()), "rows": len(dataset), "limit": config.limit,
            "sha256": data_digest(dataset)}


def _runner(backend, batch) -> Callable[[], Any]:
    def run():
        out = backend.run(batch)
        backend.synchronize()
        return out

    return run
