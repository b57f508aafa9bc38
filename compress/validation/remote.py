"""Remote validation: measure an artifact on a device over SSH, judge it here like a local run.

``edgecompress validate ARTIFACT --profile P --remote user@host[:port]``:

1. here (the controller): load and verify the artifact, tokenize the eval data and the latency inputs
   with the artifact's tokenizer, run the teacher (the reference) and, when the profile sets a speedup
   budget, export the teacher's FP32 baseline;
2. check the device in one SSH round trip before anything is sent: Python, numpy, the runtime, the
   architecture (the runner, piped to ``python3 -``), then ``mktemp -d`` under the device's $TMPDIR
   and its free space (``df -Pk``) against the bytes to send;
3. send the model files, their manifest, the input tensors (``inputs.npz``), ``job.json`` and
   :mod:`compress.device.remote_runner` as one tar stream (``ssh host tar -x``);
4. run the runner there: it verifies every file's sha256 (an interrupted transfer is detected there),
   predicts the eval batches, times the artifact and the baseline interleaved, probes a cold start in
   a fresh process, and prints one JSON document with the outputs, latency samples and device facts;
5. always remove the remote work directory (also on errors and Ctrl-C), then compute the metrics and
   judge the budgets with the same code as a local run (:func:`compress.validation.metrics.prediction_metrics`,
   :func:`compress.validation.local.conclude`).

SSH is the system OpenSSH client, so ``~/.ssh/config`` (keys, agent, ProxyJump, ControlMaster) applies.
The only options passed are ``BatchMode=yes`` (never a password prompt) and a ``ConnectTimeout``;
host-key checking stays as configured. Every remote path is quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import platform
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress import __version__
from compress.artifact import Artifact
from compress.device.facts import sha256_file
from compress.formats import remote_runtime
from compress.host.measure import LatencyStats
from compress.interrupt import sigterm_as_interrupt
from compress.progress import start_phase
from compress.tasks.embeddings import pooling_of
from compress.validation.common import ValidationReport, ValidationRun
from compress.validation.ssh import (
    ARCH_NAMES,
    DEVICE,
    RUNNER,
    DeviceSession,
    RemoteError,
    RemoteTarget,
)

log = logging.getLogger(__name__)

# test hook: called as hook(target, workdir) after the transfer and before the run
_after_transfer: Callable[[RemoteTarget, str], None] | None = None


# -- the validation -----------------------------------------------------------------------------------

def _npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _model_spec(art: Artifact, prefix: str) -> dict[str, Any]:
    m = art.manifest
    pooling, normalize = pooling_of(m.postprocess)
    return {
        "path": f"{prefix}/{m.model_file}",
        "output": m.outputs[0].name if m.outputs else None,
        "input_names": [t.name for t in m.inputs],
        "format": str(m.format),
        "precision": str(m.precision),
        "pooling": pooling,
        "normalize": normalize,
        # a streaming model: the device runs each sequence call by call (compress.device.shipped.StreamCalls)
        **({"stream": m.stream.model_dump(), "inputs": [t.model_dump() for t in m.inputs]} if m.stream else {}),
    }


def _feeds_for(art: Artifact):
    """The artifact's feed builder; a streaming model's feeds one call from the initial state (its constants and a
    zero state added: what a timed call takes)."""
    from compress.data.tokenization import encoder_for
    from compress.device.shipped import StreamCalls
    from compress.runtimes.base import FirstCallFeeds

    calls = StreamCalls.from_manifest(art.manifest.model_dump(mode="json"))
    return encoder_for(art) if calls is None else FirstCallFeeds(encoder_for(art), calls)


def _stream_reference(run: ValidationRun) -> list[np.ndarray] | None:
    """A streaming model's reference here: the teacher's primary output on each sequence, the state carried."""
    from compress.runtimes.base import load_runtime
    from compress.validation.stream_metrics import stream_outputs

    if run.teacher is None:
        return None
    backend = load_runtime(run.teacher.as_artifact(), settings=run.settings)
    try:
        return stream_outputs(backend, run.dataset, run.progress, "streaming the teacher")
    finally:
        backend.close()


def _ship_model(art: Artifact, prefix: str, files: dict[str, Path], hashes: dict[str, str], tmpdir: Path) -> None:
    for name in art.model_files():
        files[f"{prefix}/{name}"] = art.path / name
        hashes[f"{prefix}/{name}"] = art.manifest.files[name]
    manifest = art.path / "manifest.json"
    if not manifest.is_file():  # an adopted model file (the baseline): its manifest exists only in memory
        manifest = tmpdir / f"{prefix}-manifest.json"
        manifest.write_text(art.manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    files[f"{prefix}/manifest.json"] = manifest
    hashes[f"{prefix}/manifest.json"] = sha256_file(manifest)


def _words_of(scores: np.ndarray, word_ids: list[np.ndarray]) -> np.ndarray:
    """Per-word scores from the device's NaN-padded per-token scores and each batch's word ids (padded with -1)."""
    from compress.device.shipped import first_subtokens

    width = scores.shape[1]
    ids = np.concatenate([np.pad(w, [(0, 0), (0, width - w.shape[1])], constant_values=-1) for w in word_ids])
    return first_subtokens(np.nan_to_num(scores, nan=0.0), ids)


def _prepare(tmpdir: Path, run: ValidationRun, runtime: str,
             word_ids: list[np.ndarray] | None = None) -> tuple[dict[str, Path], str, np.ndarray | None]:
    """Tokenize, run the teacher, export the baseline, write inputs.npz and job.json into ``tmpdir``.

    Returns the files to send (remote relative path -> local path), job.json's sha256 and the teacher's
    outputs on the eval data (None without data or teacher). For a token classifier each eval batch's word ids are
    appended to ``word_ids``: the device returns per-token scores, and each word's are read here.
    """
    from compress.validation.common import baseline_artifact, latency_texts, scoring_batch

    art, profile, settings, config = run.art, run.profile, run.settings, run.config
    dataset, teacher = run.dataset, run.teacher
    meas = profile.measure
    encoder = _feeds_for(art)
    arrays: dict[str, np.ndarray] = {}
    n_batches = n_sequences = 0
    ref = None
    if dataset is not None and art.manifest.stream is not None:  # sequences (compress.data.streams), streamed there
        for n_sequences, seq in enumerate(dataset, 1):
            arrays[f"seq.{n_sequences - 1}"] = seq.values
        ref = _stream_reference(run)
        dataset = None
    if dataset is not None:  # the exact batches a local run feeds (same padding), tokenized here
        words = getattr(art.manifest.preprocess, "words", False)
        for texts, pairs, _ in dataset.batches(scoring_batch(art.manifest, meas)):
            feeds = encoder.encode(texts, pairs)
            if words:
                feeds, ids = encoder.encode_words(texts)
                if word_ids is not None:
                    word_ids.append(ids)
            for name, arr in feeds.items():
                arrays[f"eval.{n_batches}.{name}"] = arr
            n_batches += 1
        if teacher is not None:  # the reference runs here (or comes from the cache, as in a local run)
            from compress.validation.teacher_outputs import teacher_outputs

            ref, _ = teacher_outputs(teacher, dataset, batch_size=meas.eval_batch_size, threads=settings.threads,
                                     use_cache=config.cache, progress=run.progress)
    lat_texts = latency_texts(dataset.inputs if dataset is not None else None, meas.batch_size, meas.sequence_length,
                              art.manifest.preprocess)
    for name, arr in encoder.encode(lat_texts, pad_to=meas.sequence_length).items():
        arrays[f"lat.artifact.{name}"] = arr

    models = {"artifact": _model_spec(art, "artifact")}
    files: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    _ship_model(art, "artifact", files, hashes, tmpdir)
    base_art = None
    if config.measure.baseline and teacher is not None:
        if profile.budgets.min_speedup is not None:
            base_art = baseline_artifact(teacher, runtime, art, allow_pickle=config.allow_pickle)
        else:
            log.info("no speedup budget in profile %s: the FP32 baseline is not sent", profile.name)
    if base_art is not None:
        models["baseline"] = _model_spec(base_art, "baseline")
        _ship_model(base_art, "baseline", files, hashes, tmpdir)
        for name, arr in _feeds_for(base_art).encode(lat_texts, pad_to=meas.sequence_length).items():
            arrays[f"lat.baseline.{name}"] = arr

    _npz(arrays, tmpdir / "inputs.npz")
    files["inputs.npz"] = tmpdir / "inputs.npz"
    hashes["inputs.npz"] = sha256_file(tmpdir / "inputs.npz")
    files["runner.py"] = RUNNER
    hashes["runner.py"] = sha256_file(RUNNER)
    from compress.device.shipped import SHIPPED_FILES

    for name, source in SHIPPED_FILES.items():  # the device code beside the runner, every part of it
        files[name] = DEVICE.parent / source
        hashes[name] = sha256_file(files[name])
    job = {
        "version": 1,
        "runtime": runtime,
        "provider": settings.provider,
        "threads": settings.threads,
        "options": settings.options,
        "models": models,
        "eval_batches": n_batches,
        "stream_sequences": n_sequences,
        "measure": {"warmup": meas.warmup, "min_runs": meas.min_runs, "min_duration_s": meas.min_duration_s,
                    "max_runs": meas.max_runs, "batch_size": meas.batch_size},
        "cold_start": config.measure.cold_start,
        "files": hashes,
    }
    (tmpdir / "job.json").write_text(json.dumps(job, indent=1, default=str), encoding="utf-8")
    files["job.json"] = tmpdir / "job.json"
    return files, sha256_file(tmpdir / "job.json"), ref


@dataclass
class Job:
    """What the controller prepared for one profile, sent to every device measured on it: the files (remote relative
    path -> local path), job.json's sha256, the teacher's outputs (None without data or teacher), a token
    classifier's word ids per eval batch, and the bytes to send."""

    files: dict[str, Path]
    sha256: str
    ref: Any
    word_ids: list[np.ndarray]
    total: int


def prepare_job(run: ValidationRun, runtime: str, tmpdir: Path) -> Job:
    """Tokenize, run the teacher, export the baseline, write the job into ``tmpdir`` (see :func:`_prepare`)."""
    word_ids: list[np.ndarray] = []
    files, sha, ref = _prepare(tmpdir, run, runtime, word_ids)
    return Job(files, sha, ref, word_ids, sum(p.stat().st_size for p in files.values()))


def check_device(device: DeviceSession, run: ValidationRun, runtime: str) -> None:
    """Preflight ``device`` (Python, numpy, runtime, work dir, free space), then check the profile's architecture
    against the device's ``uname -m`` and its ``hardware.identify`` (a mismatch is a warning in ``run.warnings``);
    ``device.device_match`` is set."""
    target = device.target
    start_phase(run.progress, f"checking {target.spec}")
    device.preflight(runtime, run.settings.provider, str(run.art.format))
    check_arch(target, run.profile, device.facts)
    device.device_match = _identify(target, run.profile, device.facts, run.warnings)


def measure_on(device: DeviceSession, job: Job, progress=None) -> tuple[dict[str, Any], float]:
    """Send ``job`` to the checked ``device`` (after checking its free space) and run it; (the runner's result,
    seconds the transfer took). The caller cleans the device up."""
    target = device.target
    need = job.total + max(1 << 20, job.total // 20)
    if device.avail_bytes is not None and device.avail_bytes < need:
        raise RemoteError(
            f"not enough free space on {target.spec}: {device.avail_bytes / 2**20:.1f} MiB free under "
            f"{os.path.dirname(device.workdir)}, {need / 2**20:.1f} MiB needed",
            hint="free space there, or point TMPDIR on the device at a bigger disk",
        )
    start_phase(progress, f"sending {job.total / 2**20:.1f} MiB to {target.spec}")
    transfer_s = device.send(job.files)
    if _after_transfer is not None:
        _after_transfer(target, device.workdir)
    start_phase(progress, f"measuring on {target.spec}")
    return device.run(job.sha256), transfer_s


def validate_remote(target, run: ValidationRun):
    """The remote half of :func:`compress.validation.validate` (called from it after data and teacher load).
    ``target``: one device's :class:`RemoteTarget` (several devices: :func:`compress.validation.fleet.measure_remote`)."""
    runtime = remote_runtime(run.art.format)
    device = DeviceSession(target)
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="edgecompress-remote-") as tmp:
        try:
            # the device first: a missing runtime or a wrong architecture fails before any work here
            check_device(device, run, runtime)
            job = prepare_job(run, runtime, Path(tmp))
            res, transfer_s = measure_on(device, job, run.progress)
        finally:
            device.cleanup()
    return judge(run, device, job, res, transfer_s)


def judge(run: ValidationRun, device: DeviceSession, job: Job, res: dict[str, Any],
          transfer_s: float) -> ValidationReport:
    """The report of one device's measurement: its outputs scored against the reference here, its latency and
    cold start judged against ``run.profile``'s budgets, where each number was measured."""
    from compress.validation.common import conclude, scoring_batch
    from compress.validation.metrics import prediction_metrics

    target, ref, word_ids, total = device.target, job.ref, job.word_ids, job.total
    dataset, m, meas = run.dataset, run.art.manifest, run.profile.measure
    metrics: dict[str, Any] = {}
    if dataset is not None and m.stream is not None:  # the device's outputs, call by call, split by sequence
        from compress.validation.stream_metrics import stream_metrics

        cand = np.load(io.BytesIO(base64.b64decode(res["outputs_npy_b64"])), allow_pickle=False)
        cand = np.split(cand, np.cumsum(res["stream_calls"])[:-1])
        labels = [r for s in dataset for r in s.labels] if all(s.labels is not None for s in dataset) else None
        metrics.update(stream_metrics(m, cand, ref, labels, run.user_metric))
    elif dataset is not None:
        cand = np.load(io.BytesIO(base64.b64decode(res["outputs_npy_b64"])), allow_pickle=False)
        if word_ids:  # per-token scores from the device: each word's, at its first sub-token
            cand = _words_of(cand, word_ids)
        if len(cand) != len(dataset):
            raise RemoteError(f"the device returned {len(cand)} outputs for {len(dataset)} eval rows")
        metrics.update(prediction_metrics(m, cand, ref, dataset.labels, run.user_metric,
                                          batch_size=scoring_batch(m, meas)))  # the batches a local run scores
    stats = {name: LatencyStats.from_samples(s, meas.batch_size) for name, s in res["latency_s"].items()}
    dev = res.get("device") or device.facts
    rt = res.get("runtime") or {}
    where = (f"remote: {target.destination} ({dev.get('hostname')}, {dev.get('cpu')}, {dev.get('machine')}), "
             f"{rt.get('runtime')} {rt.get('version')}")
    env = {
        "host": dev.get("hostname"),
        "machine": dev.get("machine"),
        "cpu": dev.get("cpu"),
        "python": dev.get("python"),
        "edgecompress": __version__,
        "runtime": rt,
        "measured_on": where,
        "remote": {
            "target": target.spec,
            "device": dev,
            "numpy": res.get("numpy"),
            "bytes_sent": total,
            "transfer_s": round(transfer_s, 3),
            "files_verified_on_device": res.get("verified_files"),
            "runner_phases_s": res.get("phases_s"),
        },
        "device_match": device.device_match,
        "controller": {"host": platform.node(), "machine": platform.machine(), "python": platform.python_version()},
        "measured_where": {
            "artifact_outputs_and_metric": where,
            "teacher_outputs": f"controller {platform.node()} (PyTorch FP32, the reference)",
            "tokenization": f"controller {platform.node()} (the artifact's tokenizer)",
            "latency": where,
            "baseline_latency": where if "baseline" in stats else None,
            "cold_start_and_peak_memory": (f"{where}; fresh process with numpy + runtime only (no tokenizer)"
                                           if res.get("cold_start") else None),
            "size": "artifact files (sha256 verified on the device)",
        },
    }
    return conclude(run, metrics, stats, res.get("cold_start"), env)


def _identify(target: RemoteTarget, profile, facts: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Does the device match the profile's ``hardware.identify``? A mismatch is a warning: the figures
    are still the device's own, but the budgets are another device's. Same keys as a local run's
    ``environment.device_match`` (``host_*`` describe the device here); ``how`` is ``remote-class``,
    ``remote-identified`` or ``remote-not-identified``."""
    model = str(facts.get("model") or facts.get("cpu") or "")
    pattern = getattr(profile.hardware, "identify", None)
    out = {"is_device": True, "how": "remote-class", "host_arch": facts.get("machine"), "host_model": model,
           "reason": f"measured on {target.destination} ({model}); {profile.name} describes a class of CPUs"}
    if pattern:
        if re.search(pattern, model, flags=re.IGNORECASE):
            out.update(how="remote-identified",
                       reason=f"{target.destination} ({model}) matches {profile.name}'s identify /{pattern}/")
        else:
            out.update(is_device=False, how="remote-not-identified",
                       reason=f"{target.destination} ({model}) does not match {profile.name}'s identify /{pattern}/")
            warnings.append(
                f"{target.spec} ({model}) does not match profile {profile.name}'s identify /{pattern}/: the figures "
                f"are that device's, judged against {profile.name}'s budgets"
            )
    return out


def check_arch(target: RemoteTarget, profile, facts: dict[str, Any]) -> None:
    """The profile must describe a device of the architecture we reached (``uname -m`` there)."""
    machine = str(facts.get("machine", "")).lower()
    arch = ARCH_NAMES.get(machine, machine)
    want = str(profile.hardware.arch)
    if arch and arch != want:
        raise RemoteError(
            f"{target.spec} is {machine} ({facts.get('cpu')}) but profile {profile.name} describes an {want} device",
            hint="use the profile of this device (`edgecompress profiles list`) or a YAML file describing it",
        )

