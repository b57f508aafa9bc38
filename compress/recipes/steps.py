"""Each verb as the recipe executor calls it: ``run(source, config, out, ctx) -> summary``.

One adapter per verb, named in :data:`compress.recipes.verbs.VERBS`: it calls the verb on ``source`` (the teacher or
the output of the job it takes), writes ``out``, and returns the figures the run's index shows. What only a recipe
does lives here (the run directory's shared caches, a strict parity check); what the verb decides is the verb's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.recipes.verbs import StepContext


def run_distill(source: str, config, out: Path, ctx: StepContext) -> dict[str, Any]:
    from compress.stages.distill import distill
    from compress.stages.distill.config import RUN_CONFIG

    work = ctx.work  # checkpoints: an interrupted distillation resumes from them
    # one teacher-output cache per run directory: every student of this teacher on this data reuses the rows
    # the teacher already labelled (a cache whose key differs is rebuilt, never misread)
    distill(source, ctx.data["train"], out, config, eval_data=ctx.data.get("eval_data"), run_dir=work,
            resume=(work / RUN_CONFIG).is_file(), force=ctx.force, progress=ctx.say,
            teacher_cache=ctx.run / "teacher-cache")
    return _artifact_summary(out)


def run_finetune(source: str, config, out: Path, ctx: StepContext) -> dict[str, Any]:
    from compress.stages.finetune import finetune

    work = ctx.work  # checkpoints: an interrupted fine-tune resumes from them
    result = finetune(source, ctx.data["train"], out, config, eval_data=ctx.data.get("eval_data"),
                      retain_data=ctx.data.get("retain_data"), run_dir=work,
                      resume=(work / "checkpoint.pt").is_file(), force=ctx.force, progress=ctx.say)
    m = result.metrics
    return {**_artifact_summary(out), "mode": m["mode"], "eval_metric": m.get("eval_metric"),
            "trainable_parameters": m["trainable_parameters"]}


def run_prune(source: str, config, out: Path, ctx: StepContext) -> dict[str, Any]:
    from compress.stages.prune import prune

    rec = config.recovery
    if rec.teacher and not rec.teacher_cache and Path(rec.teacher).resolve() == Path(ctx.teacher).resolve():
        # recoveries from the recipe's teacher share its outputs (apart from the students' cache: other rows)
        cache = rec.model_copy(update={"teacher_cache": str(ctx.run / "teacher-cache-recovery")})
        config = config.model_copy(update={"recovery": cache})
    prune(source, out, config, train=ctx.data.get("train"), eval_data=ctx.data.get("eval_data"), force=ctx.force,
          progress=ctx.say)
    return _artifact_summary(out)


def run_export(source: str, config, out: Path, ctx: StepContext) -> dict[str, Any]:
    from compress.stages.export import export

    export(source, out, config, force=ctx.force)
    return _artifact_summary(out)


def _calibrate_generator(config, parent, ctx: StepContext):
    """Weight-only: the recipe's text calibrates only a data-aware INT4 algorithm."""
    from compress.recipes.generation import calibration_for

    return calibration_for(config, ctx.data, str(parent.format))


def _calibrate_static(config, parent, ctx: StepContext):
    """Static INT8 (one forward pass, a stream's calls) calibrates on the recipe's calibration data, if it has any."""
    from compress.stages.quantize.static import calibrates

    if ctx.data.get("calibration") and calibrates(parent, config):
        config = config.model_copy(
            update={"calibration": config.calibration.model_copy(update={"data": ctx.data["calibration"]})})
    return config


#: how a recipe's data calibrates quantize, for a parent of each kind (:func:`compress.tasks.by_kind`)
_CALIBRATES = {"forward": _calibrate_static, "generation": _calibrate_generator, "stream": _calibrate_static}


def run_quantize(source: str, config, out: Path, ctx: StepContext) -> dict[str, Any]:
    from compress.artifact import load_artifact
    from compress.stages.quantize import quantize
    from compress.tasks import by_kind

    parent = load_artifact(source)
    config = by_kind(_CALIBRATES, parent, "quantize")(config, parent, ctx)
    if config.qad.steps and not config.qad.data and not config.calibration.data and ctx.data.get("calibration"):
        # QAD trains on the recipe's data
        config = config.model_copy(update={"qad": config.qad.model_copy(update={"data": ctx.data["calibration"]})})
    if "strict" not in config.model_fields_set:  # a recipe gates a release: a collapsed INT8 stops it
        config = config.model_copy(update={"strict": True})
        from compress.stages.quantize.config import applies, backend_of

        # speed is its validate's to judge (min_speedup), against noise, where quantize times it (ONNX Runtime)
        if config.speed.refuse_slower is None and "refuse_slower" in applies(backend_of(str(parent.format),
                                                                                         str(parent.task))):
            config = config.model_copy(update={"speed": config.speed.model_copy(update={"refuse_slower": False})})
    quantize(source, out, config, force=ctx.force, progress=ctx.say)
    return _artifact_summary(out)


def run_validate(source: str, config, out: Path, ctx: StepContext) -> dict[str, Any]:
    from compress.reports.render import failed_summary, write_report
    from compress.validation.local import validate

    report = validate(source, config, progress=ctx.say)
    write_report(report, out / "report")  # staged, then renamed; the job's record is written after it
    m = report.metrics
    summary = {"verdict": report.verdict, "profile": report.profile.get("name"),
               "p50_ms": (m.get("latency_ms") or {}).get("p50"), "retention": m.get("retention"),
               "size_mb": m.get("size_mb"), "report": str((out / "report" / "report.json").relative_to(ctx.run))}
    if m.get("generation") is not None:  # a text generator: its speed and quality figures (docs/guides/lm.md)
        summary |= {k: m.get(k) for k in GENERATOR_FIGURES}
    if report.verdict == "fail":  # which budgets, as validate alone says them
        summary["failed"] = failed_summary(report.budgets)
    return summary


#: a generator validation's headline figures, as its report's metrics name them
GENERATOR_FIGURES = ("decode_tokens_per_s", "time_to_first_token_ms", "prefill_tokens_per_s", "perplexity_increase",
                     "top1_agreement")


def run_package(source: str, config, out: Path, ctx: StepContext) -> dict[str, Any]:
    from compress.packaging.bundle import package
    from compress.packaging.report import write_package_report
    from compress.storage import staged_dir

    say = ctx.say
    with staged_dir(out, force=True) as tmp:  # bundle and reports appear together, or not at all
        report = package(source, tmp / "bundle.zip", config, progress=say)
        write_package_report(report, tmp / "bundle.zip", tmp / "report")
    return {"verdict": report.verdict, "profile": report.profile.get("name"),
            "zipped_mb": round(report.bundle["zipped_bytes"] / 2**20, 2),
            "unzipped_mb": round(report.bundle["unzipped_bytes"] / 2**20, 2),
            "cold_start_ms": ((report.cold_start or {}).get("median") or {}).get("total_ms"),
            "report": str((out / "report" / "report.json").relative_to(ctx.run))}


def _artifact_summary(path: Path) -> dict[str, Any]:
    from compress.artifact import load_artifact

    art = load_artifact(path, verify=False)
    out = {"format": str(art.format), "precision": str(art.precision), "size_mb": round(art.size_bytes() / 2**20, 2)}
    if (reason := art.manifest.collapsed()) is not None:  # quantize's own check found it collapsed: NOT SHIPPABLE
        out["collapsed"] = reason
    return out
