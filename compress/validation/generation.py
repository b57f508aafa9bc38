"""``validate`` of a text generator (task text-generation: a causal LM with a KV cache), batch 1.

What is measured (and how):
- speed: a prompt of ``prompt_tokens`` tokens (capped so that prompt + ``new_tokens`` fit the model's context), then
  ``new_tokens`` tokens decoded greedily one at a time through the backend's ``generate``
  (:class:`compress.host.measure.Generation`): the runtime's own loop where the adapter runs it (ONNX Runtime GenAI's
  generator for an ONNX artifact with genai_config.json, llama.cpp's context, OpenVINO's stateful request), else
  edgecompress's ``prefill`` / ``step`` loop; the report's ``loop`` names it (:func:`loops_of`). Time to first token (TTFT) is the prefill, one sample per round;
  decode is one sample per generated token. Rounds of the artifact and of the teacher's FP32 export *in the same
  runtime and threads* alternate (the order flips each round) until both have ``MIN_ROUNDS`` rounds and the
  profile's ``measure.min_duration_s`` of timed work, so ratios are fair on a shared machine. Prefill tokens/s =
  prompt tokens / TTFT p50; decode tokens/s = 1000 / decode p50 (ms per token). The report's ``latency_ms``,
  ``throughput``, ``speedup`` and ``latency_samples_ms`` are the decode step's (ms per generated token), so a
  profile's ``latency_ms`` budgets read ms per token and ``edgecompress gate`` tests decode speed.
- quality against the teacher (PyTorch FP32): the ``--data`` text tokenized once and cut into windows of
  ``--window`` tokens (llama.cpp's ``llama-perplexity`` definition, :mod:`compress.tasks.generation`; how many
  windows and prompts, and how long, is bounded by default: :mod:`compress.validation.generation_plan`): perplexity,
  KL(teacher || artifact) and top-1 agreement of the next-token distributions over each window's second half;
  then greedy continuations of ``--prompts`` (else the first sentence of each document or paragraph) by the
  artifact and by the teacher: continuation agreement (tokens equal before the first divergence) and a collapse
  check (one token, a repetition loop, or a KL far off); the continuations that diverge go into the report.
- size, cold start and peak memory: as for any artifact (the fresh-process probe runs one prefill).

Every phase reports to the run's progress (the CLI shows bars in a terminal, plain lines in a CI log): the text's
tokenizing, loading, the perplexity windows, each side's continuations a prompt at a time, the FP32 baseline, the
timing rounds, cold start; the bounds come first, in one line. The models are closed on the way out whatever ends
the work (an interrupt included).

Budgets (profile): ``min_decode_tokens_per_s``, ``max_time_to_first_token_ms`` (TTFT p50), ``max_perplexity_increase``
(artifact / teacher perplexity - 1), ``min_top1_agreement``, plus size, memory, cold start, speedup (decode) and the
latency percentiles (ms per token). The classifier budgets (retention, agreement, output cosine/SNR, MAE) do not
apply to a generator and are not judged. A collapse is a failed check ``no_collapse`` whatever the profile.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact
from compress.errors import ConfigError
from compress.host.load import LoadSampler
from compress.host.measure import measure_generations
from compress.host.memory import release_freed
from compress.profiles.budgets import BudgetResult, BudgetStatus, anomalous_latency, budgets_of, verdict_of
from compress.progress import Advance, Progress, start_phase
from compress.validation.decoding import context_of, greedy_artifact, window_logits
from compress.validation.generation_plan import GenerationPlan, announce, encode, plan_generation

log = logging.getLogger(__name__)

MIN_ROUNDS = 5  # timed generations of each side at least
DIVERGING_SHOWN = 10  # rows of the diverging-continuations table


def _eos_ids(post) -> set[int]:
    eos = getattr(post, "eos_token_id", None)
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


# -- timing ----------------------------------------------------------------------------------------------------


def speed_figures(timed: dict[str, dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
    """Tokens per second, TTFT and their ratios to the FP32 baseline, from the stats of
    :func:`~compress.host.measure.measure_generations`' samples."""
    out: dict[str, Any] = {}
    for name, st in timed.items():
        pre = "" if name == "artifact" else f"{name}_"
        ttft, dec = st["time_to_first_token"], st["decode"]
        out[f"{pre}time_to_first_token_ms"] = ttft.as_dict()
        out[f"{pre}decode_ms_per_token"] = dec.as_dict()
        out[f"{pre}prefill_tokens_per_s"] = round(prompt_tokens * 1000.0 / ttft.p50, 3) if ttft.p50 else None
        out[f"{pre}decode_tokens_per_s"] = round(1000.0 / dec.p50, 3) if dec.p50 else None
        host = st.get("decode_host")
        if host is not None:  # each decode token's time outside the runtime's own calls (Python, feeds, copies)
            out[f"{pre}decode_host_ms_per_token"] = round(host.p50, 4)
            out[f"{pre}decode_host_share"] = round(host.p50 / dec.p50, 4) if dec.p50 else None
    if "baseline" in timed and out.get("prefill_tokens_per_s") and out.get("baseline_prefill_tokens_per_s"):
        out["prefill_speedup"] = round(out["prefill_tokens_per_s"] / out["baseline_prefill_tokens_per_s"], 4)
        out["decode_speedup"] = round(out["decode_tokens_per_s"] / out["baseline_decode_tokens_per_s"], 4)
    return out


def loops_of(backends: dict[str, Any], art: Artifact, context: int) -> dict[str, Any]:
    """Which loop each side was timed in (the runtime's own, or edgecompress's prefill/step loop), and the artifact's
    bytes moved per decode token at ``context`` tokens (an estimate, :func:`~compress.estimates.generation.
    bytes_per_token`): a slow route says why."""
    from compress.estimates.generation import bytes_per_token, model_facts

    out: dict[str, Any] = {f"{'' if n == 'artifact' else n + '_'}loop": b.generation_loop for n, b in backends.items()}
    with contextlib.suppress(Exception):  # a file the estimate cannot read leaves the figure out, not the report
        out["bytes_per_token"] = bytes_per_token(model_facts(art), context, backends["artifact"].copies_cache)
    return out


# -- quality ---------------------------------------------------------------------------------------------------


def quality(backend, teacher, windows: np.ndarray | None, post, progress: Progress | None = None) -> dict[str, Any]:
    """Perplexity of the artifact on ``windows`` and, with a ``teacher``, KL and top-1 agreement against it (the
    teacher's logits of a batch of windows, then the artifact's of the same windows: one counted phase), through the
    task's streaming form (:meth:`compress.tasks.TaskInfo.stream`)."""
    from compress.tasks import TASKS

    m = backend.artifact.manifest
    stream = TASKS[m.task].stream(m.model_copy(update={"postprocess": post}))
    who = "artifact and teacher logits" if teacher is not None else "artifact logits"
    tick = start_phase(progress, f"perplexity windows of {windows.shape[1]} tokens ({who})", len(windows))
    ours = window_logits(backend, windows)
    if teacher is None:
        for i, cand in enumerate(ours):
            stream.update(outputs=cand, labels=windows[i:i + 1])
            tick(1)
        return dict(stream.result())
    done = 0
    for ref in teacher.logits(windows):
        ref = np.asarray(ref, dtype=np.float32)
        for row in range(len(ref)):  # a tick per window: a batch of a real model's windows takes a while
            stream.update(outputs=next(ours), labels=windows[done:done + 1], ref=ref[row:row + 1])
            done += 1
            tick(1)
    return dict(stream.result())


def teacher_greedy(teacher, prompt_ids: list[list[int]], new_tokens: int, eos: set[int], *,
                   use_cache: bool = True, progress: Progress | None = None) -> list[list[int]]:
    """The teacher's greedy continuations of ``prompt_ids``, from the cache (compress.cache, teacher-outputs/) when
    this teacher already continued these prompts alike (the key: its sha256, the prompts' ids, the new tokens, EOS);
    ``progress`` hears a counted phase, a prompt at a time, when the teacher runs."""
    import hashlib
    import json

    from compress import cache as ec_cache
    from compress.validation.teacher_outputs import KIND

    sha = getattr(getattr(teacher, "teacher", None), "sha256", None)
    key = json.dumps({"greedy": sha, "prompts": prompt_ids, "new_tokens": new_tokens, "eos": sorted(eos)})
    path = ec_cache.kind_dir(KIND) / f"greedy-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    if use_cache and sha and path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                ec_cache.touch(path)
                return stored["tokens"]
        except (OSError, ValueError):  # a damaged entry is recomputed
            pass
    tick = start_phase(progress, f"the teacher's continuations ({new_tokens} new tokens each)", len(prompt_ids))
    tokens = []
    for ids in prompt_ids:
        tokens.append(list(teacher.greedy(ids, new_tokens, eos=sorted(eos) or None)))
        tick(1)
    if use_cache and sha:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"key": key, "tokens": tokens}), encoding="utf-8")
        tmp.replace(path)
        ec_cache.enforce_limit(keep=path)
    return tokens


def continuations(backend, teacher, tok, prompts: list[str], new_tokens: int, post, context: int,
                  kl_mean: float | None, progress: Progress | None = None, *, use_cache: bool = True) -> dict[str, Any]:
    """Greedy continuations of ``prompts`` by the artifact (and the teacher, :func:`teacher_greedy`): agreement,
    collapse, and the rows that diverge from the teacher's (prompt, where, both texts)."""
    from compress.tasks.generation import KL_COLLAPSE, collapse, continuation_agreement

    eos = _eos_ids(post)
    prompt_ids = [encode(tok, text)[: max(1, context - new_tokens)] for text in prompts]
    theirs_all = (teacher_greedy(teacher, prompt_ids, new_tokens, eos, use_cache=use_cache, progress=progress)
                  if teacher else None)
    tick: Advance = start_phase(progress, f"the artifact's continuations ({new_tokens} new tokens each)", len(prompts))
    cand, ref, rows = [], [], []
    for i, (text, ids) in enumerate(zip(prompts, prompt_ids, strict=True)):
        mine = greedy_artifact(backend, ids, new_tokens, eos, context)
        cand.append(mine)
        if theirs_all is not None:
            theirs = theirs_all[i]
            ref.append(theirs)
            at = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b),
                      None if len(mine) == len(theirs) else min(len(mine), len(theirs)))
            if at is not None:
                rows.append({"prompt": text, "diverges_at": at,
                             "teacher": tok.decode(theirs, skip_special_tokens=True),
                             "artifact": tok.decode(mine, skip_special_tokens=True)})
        tick(1)
    out: dict[str, Any] = {"prompts": len(prompts), "collapse": collapse(cand, kl_mean=kl_mean)}
    if out["collapse"] and teacher is not None and collapse(ref) is not None and (kl_mean or 0.0) <= KL_COLLAPSE:
        # the teacher's own greedy continuations loop alike (a small or random model): not the artifact's doing
        out["teacher_collapse"], out["collapse"] = collapse(ref), None
    out["artifact_continuations"] = [tok.decode(c, skip_special_tokens=True) for c in cand[:DIVERGING_SHOWN]]
    if teacher is not None:
        out["continuation_agreement"] = round(float(continuation_agreement(cand, ref)), 6)
        out["diverging"] = sorted(rows, key=lambda r: r["diverges_at"])[:DIVERGING_SHOWN]
        out["diverging_count"] = len(rows)
    return out


# -- the whole check -------------------------------------------------------------------------------------------


def _teacher(tdir: Path | None, art: Artifact, warnings: list[str], config):
    """The causal LM teacher (PyTorch FP32), or None when it is not on this machine."""
    from compress.teachers.gguf_checkpoint import is_gguf, source_changed

    if tdir is None:
        changed = source_changed(art.manifest.source.origin or {})  # a GGUF rewritten since, its checkpoint dropped
        why = (f"{changed}, and the checkpoint it dequantized to is gone from the cache; restore the file or pass "
               "--teacher" if changed else "the recorded source is not on this machine; pass --teacher")
        warnings.append(f"no teacher: {why} (perplexity is measured, KL, top-1 and continuation agreement are not)")
        return None
    from compress.validation.gguf_reference import GgufReference

    if is_gguf(tdir):  # an adopted GGUF: the file itself in llama.cpp, as an adopted ONNX file in ONNX Runtime
        return GgufReference.load(tdir)
    from compress.teachers.lm import CausalLM

    return CausalLM.load(tdir, trust_remote_code=config.trust_remote_code)


def _check_teacher(tdir: Path | None, art: Artifact, config) -> None:
    """The teacher checkpoint's faults, each one line, before the plan is said or anything loads: its own code
    untrusted, unsafe weights (:func:`~compress.teachers.checkpoints.check_checkpoint`), a vocabulary not the
    artifact's (another model's teacher: the logits would not line up)."""
    if tdir is None or not (Path(tdir) / "config.json").is_file():
        return
    from compress.tasks.generation import artifact_vocab
    from compress.teachers.checkpoints import check_checkpoint

    check_checkpoint(tdir, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    mine, theirs = artifact_vocab(tdir), artifact_vocab(art.path)
    if None not in (mine, theirs) and mine != theirs:
        raise ConfigError(f"{tdir}: the teacher's vocabulary has {mine} tokens and the artifact's {theirs}: it is "
                          "another model's teacher", hint="pass the checkpoint the artifact was made from as --teacher")


def reference_of(tdir: Path, teacher) -> str:
    """What the quality figures were measured against, in words: a GGUF file itself in llama.cpp, the checkpoint a
    GGUF dequantizes to in PyTorch (the file named), or a checkpoint in PyTorch."""
    from compress.teachers.lm_config import gguf_origin
    from compress.validation.gguf_reference import GgufReference

    if isinstance(teacher, GgufReference):
        return f"{Path(tdir).name} itself in llama.cpp"
    origin = gguf_origin(tdir)
    if origin:
        return (f"PyTorch FP32 of {Path(origin['path']).name} ({origin['file_type_name']}) as transformers' GGUF "
                f"loader dequantizes it ({tdir}); --teacher {Path(origin['path']).name} compares with the file in "
                "llama.cpp")
    return f"PyTorch FP32 of {tdir}"


def _teacher_record(tdir: Path, art: Artifact, warnings: list[str]):
    """The report's teacher (path, sha256); a warning when it is not the checkpoint the artifact was made from."""
    from types import SimpleNamespace

    from compress.artifact import reference_teacher
    from compress.validation.gguf_reference import reference_sha256

    sha = reference_sha256(tdir)
    ref_path, ref_sha = reference_teacher(art.manifest)
    if sha != ref_sha:
        warnings.append(f"teacher {tdir} differs from the artifact's recorded teacher ({ref_path}, sha256 "
                        f"{ref_sha[:12]}…): quality is measured against the teacher given")
    return SimpleNamespace(path=Path(tdir), sha256=sha)


def _check_baseline(art: Artifact, tdir: Path | None, config) -> None:
    """A GGUF artifact's FP32 baseline is exported by llama.cpp's converter, from a source tree: without one, a
    one-line refusal before the work (with the way around it), not an error after the quality windows."""
    from compress.teachers.gguf_checkpoint import is_gguf

    if not config.measure.baseline or tdir is None or str(art.manifest.format) != "gguf" or is_gguf(tdir):
        return
    from compress.stages.export.lm.gguf import ENV, llama_cpp_tree

    if llama_cpp_tree() is None:
        raise ConfigError(f"the FP32 baseline a GGUF artifact's speedup is timed against is exported by llama.cpp's "
                          f"converter, and no llama.cpp source tree is named ({ENV})",
                          hint=f"pass --no-baseline (no speedup judged), or set {ENV} to a llama.cpp tree (pip download "
                               "--no-binary :all: --no-deps llama-cpp-python==0.3.36, extract it: its vendor/llama.cpp)")


def _baseline(tdir: Path | None, art: Artifact, runtime_name: str, settings, warnings: list[str]):
    """The teacher's FP32 export in the artifact's format (cached: compress.cache baselines/KEY), loaded in the same
    runtime and settings; None when there is no teacher or the artifact is itself FP32 from it."""
    import hashlib

    from compress import cache as ec_cache
    from compress.artifact import load_artifact
    from compress.runtimes.base import load_runtime
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.validation.gguf_reference import reference_sha256

    if tdir is None:
        return None
    sha = reference_sha256(tdir)
    if all(s.stage == "export" for s in art.manifest.steps) and art.manifest.source.sha256 == sha:
        warnings.append("the artifact is the teacher's FP32 export itself: no separate FP32 baseline timed")
        return None
    cfg = ExportConfig(format=str(art.format))
    key = hashlib.sha256(f"generator{sha}{cfg.model_dump_json()}".encode()).hexdigest()[:20]
    where = ec_cache.kind_dir("baselines") / key
    base = None
    if (where / "manifest.json").is_file():
        try:
            base = load_artifact(where)
            ec_cache.touch(where)
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            log.warning("rebuilding damaged baseline cache %s", where)
    if base is None:
        log.info("exporting the teacher's FP32 baseline to %s", where)
        base = export(tdir, where, cfg, force=True)
        ec_cache.enforce_limit(keep=where)
    return load_runtime(base, runtime_name, settings)


def _quality(plan: GenerationPlan, backend, teacher, post, config, warnings: list[str],
             progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The quality half: perplexity windows, then greedy continuations of the prompts; (generation figures, the
    report's top-level metrics)."""
    metrics: dict[str, Any] = {}
    gen: dict[str, Any] = {"batch_size": 1}
    windows = plan.windows
    if windows is not None:
        q = quality(backend, teacher, windows, post.model_copy(update={"window": windows.shape[1]}), progress)
        gen.update({"window": int(windows.shape[1]), "windows": int(len(windows)), **q})
        for key in ("perplexity_increase", "top1_agreement", "kl_mean", "perplexity"):
            if q.get(key) is not None:
                metrics[key] = q[key]
    if plan.prompts:
        gen.update(continuations(backend, teacher, plan.tokenizer, plan.prompts, plan.new_tokens, post, plan.context,
                                 gen.get("kl_mean"), progress, use_cache=config.cache))
    elif windows is None:
        warnings.append("no --data text nor --prompts: quality (perplexity, agreement, collapse) was not measured")
    return gen, metrics


def _closed_with(held: contextlib.ExitStack, model):
    """``model``, its ``close`` called when ``held`` ends (also on Ctrl-C or SIGTERM: llama.cpp's model freed then,
    not by its destructor at the interpreter's exit, where it printed a traceback)."""
    close = getattr(model, "close", None)
    if callable(close):
        held.callback(close)
    return model


def validate_generation(art: Artifact, run, runtime_name: str, run_settings, device, estimating: bool, *,
                        tdir: Path | None, environment):
    """Validate a text-generation artifact (see the module doc); ``run`` is the
    :class:`~compress.validation.common.ValidationRun` with the teacher unloaded (``run.teacher`` None), ``tdir`` the
    teacher checkpoint (None: not on this machine), ``environment(backend, cache)`` the report's environment.
    Every phase reports to ``run.progress``; the bounds (:mod:`compress.validation.generation_plan`) are said first."""
    from compress.host.measure import probe_cold_start
    from compress.runtimes.base import load_runtime
    from compress.validation.common import conclude

    config, profile, warnings, progress = run.config, run.profile, run.warnings, run.progress
    _check_baseline(art, tdir, config)  # refused before any work, not after the windows
    _check_teacher(tdir, art, config)  # its faults said before the plan is
    if tdir is not None and Path(tdir).is_dir() and config.measure.baseline:
        from compress.host.memory import check_memory, route_stage, safetensors_parameters

        # the teacher, the artifact and the FP32 baseline side by side: the route's measured peak (compress.host.memory)
        check_memory(route_stage("validate", str(art.manifest.format)), 4 * (safetensors_parameters(tdir) or 0),
                     art.path.name)
    post = art.manifest.postprocess
    plan = plan_generation(art, config, context_of(art), progress)
    warnings += plan.notes
    announce(plan, MIN_ROUNDS, progress)
    prompt, new_tokens = plan.speed_prompt, plan.new_tokens
    with contextlib.ExitStack() as held:  # every model is closed here, whatever ends the work
        teacher, teacher_held = None, held.enter_context(contextlib.ExitStack())
        if plan.windows is not None or plan.prompts:
            start_phase(progress, "loading the teacher")
            teacher = _closed_with(teacher_held, _teacher(tdir, art, warnings, config))
        start_phase(progress, "loading the artifact")
        backend = _closed_with(held, load_runtime(art, runtime_name, run_settings))
        gen, metrics = _quality(plan, backend, teacher, post, config, warnings, progress)
        compared = teacher is not None
        if compared:
            gen["reference"] = reference_of(tdir, teacher)
            teacher_held.close()  # the teacher goes before the FP32 baseline comes: never three models at once
            teacher = None
            release_freed()
        backends = {"artifact": backend}
        if config.measure.baseline:
            start_phase(progress, "the teacher's FP32 baseline (exported once, then cached)")
            base_backend = _closed_with(held, _baseline(tdir, art, runtime_name, run_settings, warnings))
            if base_backend is not None:
                backends["baseline"] = base_backend
                metrics["speedup_baseline"] = "the teacher's FP32 export on the same runtime and threads (decode)"
        meas = profile.measure
        with LoadSampler() as load:  # how busy the machine was while it timed (the report's host_load)
            timed = measure_generations(
                backends, prompt, new_tokens, warmup=1 if meas.warmup else 0, min_rounds=MIN_ROUNDS,
                min_duration_s=meas.min_duration_s, max_rounds=max(MIN_ROUNDS, meas.max_runs // new_tokens),
                progress=progress, phase=f"timing generation ({' and '.join(backends)}: a {len(prompt)}-token prompt "
                                         f"+ {new_tokens} new tokens, at least {MIN_ROUNDS} rounds)")
            timed = {name: samples.stats() for name, samples in timed.items()}
        run.host_load = load.result
        gen.update({"prompt_tokens": len(prompt), "new_tokens": new_tokens, **speed_figures(timed, len(prompt)),
                    **loops_of(backends, art, len(prompt) + new_tokens // 2)})
        metrics["decode_tokens_per_s"] = gen["decode_tokens_per_s"]
        metrics["time_to_first_token_ms"] = timed["artifact"]["time_to_first_token"].p50
        metrics["prefill_tokens_per_s"] = gen["prefill_tokens_per_s"]
        metrics["generation"] = gen
        env = environment(backend, {})

    cold = None
    if config.measure.cold_start:
        start_phase(progress, "cold start in a fresh process")
        cold = probe_cold_start(art.path, runtime_name, run_settings.threads, run_settings.provider, 1,
                                min(len(prompt), 64))
    stats = {name: st["decode"] for name, st in timed.items()}
    # a generator's own budgets (the profile's generator_budgets over its budgets), those that read a classifier's or
    # an embedder's outputs (a forward pass's) left out
    judged = run.profile.model_copy(update={"budgets": run.profile.generator_limits().model_copy(
        update={k: None for k in budgets_of("forward")})})
    run.profile, run.teacher = judged, _teacher_record(tdir, art, warnings) if compared else None
    report = conclude(run, metrics, stats, cold, env)
    if config.data:  # what the quality figures were measured on (the gate compares it)
        import hashlib

        raw = Path(config.data).read_bytes()
        report = report.model_copy(update={"data": {
            "path": str(Path(config.data).resolve()), "rows": gen.get("windows"), "limit": config.limit,
            "sha256": hashlib.sha256(raw).hexdigest()}})
    estimate = None
    if estimating:  # away from the profiled device: the bandwidth/compute estimate (compress.estimates.generation)
        from compress.estimates.generation import speed_estimate

        estimate = speed_estimate(art, run.profile, gen["prompt_tokens"], new_tokens, report.warnings)
    return _finish(report, timed, gen, new_tokens, estimating, device, estimate)


def _finish(report, timed, gen: dict[str, Any], new_tokens: int, estimating: bool, device, estimate=None):
    """The generator's own checks on top of :func:`~compress.validation.common.conclude`'s: TTFT noise, collapse,
    the shape timed, and (away from the profiled device) the speed budgets UNVERIFIED."""
    met = dict(report.metrics)
    met["input_shape"] = {"batch_size": 1, "prompt_tokens": gen["prompt_tokens"], "new_tokens": new_tokens}
    met["latency_unit"] = "ms per generated token (decode step)"
    budgets = list(report.budgets)
    warnings = list(report.warnings)
    ttft = [b for b in budgets if b.name == "max_time_to_first_token_ms"]
    for b in ttft:  # judged on TTFT's own spread, not the decode step's
        if b.status is BudgetStatus.anomalous:
            b.status, b.passed, b.note = (BudgetStatus.passed if b.measured <= b.limit else BudgetStatus.failed,
                                          b.measured <= b.limit, None)
    anomalous_latency(timed["artifact"]["time_to_first_token"], ttft, busy=bool((report.host_load or {}).get("busy")))
    if "collapse" in gen:
        reason = gen["collapse"]
        budgets.append(BudgetResult(name="no_collapse", limit=0, measured=1.0 if reason else 0.0, passed=not reason,
                                    comparison="<=", note=f"generations collapse: {reason}" if reason else None))
        if reason:
            warnings.append(f"the artifact's generations collapse: {reason}")
    if estimating:
        speed = {"min_decode_tokens_per_s": "decode_tokens_per_s", "max_time_to_first_token_ms": "time_to_first_token_ms"}
        if estimate is not None:  # the device's figures are the estimate's; this host's timings stay beside them
            met["estimate"] = estimate.as_dict()
            for key in (*speed.values(), "prefill_tokens_per_s"):
                met[f"{key}_this_host"] = met.get(key)
                met[key] = getattr(estimate, key)
        for b in budgets:
            if b.name in (*speed, "min_speedup", "latency_p50_ms",
                          "latency_p95_ms", "latency_p99_ms", "min_throughput", "max_cold_start_ms"):
                b.status, b.passed = BudgetStatus.unverified, False
                b.note = f"timed on this host, not on the profiled device ({device.reason})"
                if estimate is not None and b.name in speed:
                    b.measured, b.estimated, b.measured_on = met[speed[b.name]], True, "estimate (bandwidth roofline)"
                    holds = b.measured <= b.limit if b.comparison == "<=" else b.measured >= b.limit
                    b.note = ("estimated, not measured on the device: the estimate "
                              + ("is within the limit" if holds else "misses the limit (likely to fail on the device)"))
        warnings.insert(0, f"{device.reason}: " + (
            "decode tokens/s, TTFT and prefill tokens/s are ESTIMATED (bandwidth / weight + KV bytes; prefill by "
            "the roofline; this host's timings beside them as *_this_host)" if estimate is not None else
            "generation speed was timed on this host (no estimate could be made)") + "; speed budgets are UNVERIFIED")
    return report.model_copy(update={"metrics": met, "budgets": budgets, "warnings": warnings,
                                     "verdict": verdict_of(budgets)})


def perplexity_line(gen: dict[str, Any]) -> str | None:
    """One line of the text summary on quality (None when not measured)."""
    if gen.get("perplexity") is None:
        return None
    line = f"perplexity {gen['perplexity']:.4g} on {gen.get('windows')} windows of {gen.get('window')} tokens"
    if gen.get("teacher_perplexity") is not None:
        line += (f" (teacher {gen['teacher_perplexity']:.4g}, {gen['perplexity_increase']:+.2%}); KL "
                 f"{gen['kl_mean']:.4g} nats, top-1 agreement {gen['top1_agreement']:.4f}")
    return line


def summary_lines(met: dict[str, Any]) -> list[str]:
    """The text summary's generator lines: speed, quality, continuations, collapse."""
    gen = met.get("generation")
    if not gen:
        return []
    lines = []
    t = gen["time_to_first_token_ms"]
    speed = (f"prompt {gen['prompt_tokens']} tokens: TTFT p50 {t['p50']:.2f} ms (n={t['n']}, CV {t['cv']:.1%}), "
             f"prefill {gen['prefill_tokens_per_s']:.1f} tokens/s; decode {gen['new_tokens']} tokens: "
             f"{gen['decode_tokens_per_s']:.1f} tokens/s (p50 {gen['decode_ms_per_token']['p50']:.3f} ms/token, "
             f"CV {gen['decode_ms_per_token']['cv']:.1%})")
    lines.append(speed)
    if gen.get("baseline_decode_tokens_per_s"):
        lines.append(f"FP32 export, same runtime and threads: prefill {gen['baseline_prefill_tokens_per_s']:.1f}, "
                     f"decode {gen['baseline_decode_tokens_per_s']:.1f} tokens/s → prefill "
                     f"{gen['prefill_speedup']:.2f}x, decode {gen['decode_speedup']:.2f}x")
    if (ppl := perplexity_line(gen)) is not None:
        lines.append(ppl)
    if gen.get("reference"):
        lines.append(f"quality against {gen['reference']}")
    if "prompts" in gen:
        agree = gen.get("continuation_agreement")
        lines.append(f"{gen['prompts']} prompts continued" + (
            f": continuation agreement {agree:.4f}, {gen.get('diverging_count', 0)} diverge from the teacher"
            if agree is not None else ""))
        if gen.get("collapse"):
            lines.append(f"COLLAPSE: {gen['collapse']}")
    return lines


def diverging_markdown(met: dict[str, Any]) -> list[str]:
    """report.md's table of the continuations that diverge from the teacher's."""
    rows = (met.get("generation") or {}).get("diverging") or []
    if not rows:
        return []

    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")[:160]

    out = ["", "## Continuations that diverge from the teacher", "",
           "| prompt | diverges at token | teacher | artifact |", "|---|---|---|---|"]
    out += [f"| {cell(r['prompt'])} | {r['diverges_at']} | {cell(r['teacher'])} | {cell(r['artifact'])} |"
            for r in rows]
    return out


__all__ = ["continuations", "diverging_markdown", "quality", "speed_figures", "summary_lines",
           "validate_generation"]
