"""Settings of ``edgecompress search``."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from compress.errors import ConfigError
from compress.settings import For, Section, Settings


class Objective(StrEnum):
    latency = "latency"  # lowest p50 (timed side by side)
    size = "size"  # smallest artifact
    energy_proxy = "energy-proxy"  # least estimated energy per inference (operation energies x counted ops and bytes)


class Short(Section):
    """Short fidelity: the quick trials the search explores the space with."""

    trials: int | None = Field(None, ge=1, description="At most this many short-fidelity trials (default: time).")
    explore_share: float = Field(0.5, gt=0, lt=1, description="Share of the time budget for short-fidelity trials.")
    steps: Annotated[int, For("forward")] = Field(300, ge=1, description="Distillation steps of a short-fidelity student.")
    # a generator search reads it where --space names a shape (each shape is recovered over it)
    recover_steps: Annotated[int, For("forward", "generation")] = Field(
        100, ge=0, description="Pruning recovery steps at short fidelity.")


class Full(Section):
    """Full fidelity: how the promoted candidates are built."""

    promote: Annotated[int, For("forward")] = Field(
        3, ge=1, description="Short-fidelity candidates retrained at full fidelity.")
    epochs: Annotated[float, For("forward")] = Field(
        3.0, gt=0, description="Distillation epochs of a full-fidelity student.")
    augment: Annotated[int, For("forward")] = Field(
        1, ge=0, description="Embedding-neighbour copies of every training sentence, labelled by the teacher, for a "
        "full-fidelity student (distill --augment): what lets a small student keep the teacher's accuracy.")
    augment_join: Annotated[int, For("forward")] = Field(
        1, ge=0, description="Sentence-length copies of the training texts (each joined to another of its label) in a "
        "full-fidelity text recovery (prune --recover-augment-join): SST-2 trains on phrases and is judged on whole "
        "sentences, and these copies are what raised a pruned 2-layer student's test retention.")
    average: Annotated[bool, For("forward")] = Field(
        True, description="Full-fidelity text students and recoveries keep the mean of their weights over the second "
        "half of training (distill --average --average-start 0.5, prune --recover-average), not the last or best step.")
    recover_steps: Annotated[int, For("forward")] = Field(
        24000, ge=0,
        description="Pruning recovery steps at full fidelity: text students distil from the teacher again, on the "
        "--full-augment and --full-augment-join copies too. On SST-2, a 2-layer student pruned to half its heads and "
        "15% of its FFN neurons kept 0.978 dev / 0.984 test retention (INT8) after 4,000 such steps and 0.9987 / 0.9848 "
        "after 24,000 (about 50 min on 2 cores); with another seed 0.974 / 0.980.")
    qat_steps: Annotated[int, For("forward")] = Field(
        0, ge=0, description="Quantization-aware distillation steps (quantize --qat-steps) for each ONNX Runtime INT8 "
        "candidate at full fidelity; 0: post-training INT8 only. A model file has nothing to train.")


class Generation(Section):
    """Generator searches (a causal LM teacher): how each candidate is validated (as validate's options)."""

    limit: Annotated[int, For("generation")] = Field(
        16, ge=1, description="Generators: perplexity windows and prompts each candidate is validated on (validate "
        "--limit).")
    prompt_tokens: Annotated[int, For("generation")] = Field(
        64, ge=1, description="Generators: prompt length timed (time to first token).")
    new_tokens: Annotated[int, For("generation")] = Field(
        32, ge=1, description="Generators: tokens generated per prompt (decode tokens/s).")
    calibration_samples: Annotated[int, For("generation")] = Field(
        16, ge=1, description="Generators: windows of 128 tokens of --train that GPTQ, AWQ and scale estimation "
        "calibrate on (quantize --calibration-samples; every accuracy-aware step calibrates again).")


class Study(Section):
    """The Optuna study: its sampler's seed and where it is stored."""

    seed: int = Field(0, description="Sampler seed.")
    storage: str | None = Field(None, description="Optuna storage URL (default: sqlite in the search directory).")
    name: str = Field("edgecompress-search", description="The study's name in the storage.")
    heartbeat_s: int = Field(
        30, ge=1, description="Seconds between a worker's heartbeats in the study: a trial whose worker has been "
        "silent for four of them (its machine died, or was killed) is failed and queued again, for any worker.")
    artifact_store: str | None = Field(
        None, description="A directory every worker of a shared study can reach (a network mount), or s3://BUCKET: "
        "each full-fidelity artifact is uploaded there (Optuna's artifact store), so the worker that ends the search "
        "times and chooses among the candidates built on every machine.")


class SearchConfig(Settings):
    """What ``edgecompress search`` explores and how it spends its time. Budgets come from the profile."""

    MOVED: ClassVar[dict[str, str]] = {
        "trials": "short.trials", "explore_share": "short.explore_share", "short_steps": "short.steps",
        "short_recover_steps": "short.recover_steps", "promote": "full.promote", "full_epochs": "full.epochs",
        "full_augment": "full.augment", "full_augment_join": "full.augment_join", "full_average": "full.average",
        "full_recover_steps": "full.recover_steps", "qat_steps": "full.qat_steps", "seed": "study.seed",
        "storage": "study.storage", "study_name": "study.name", "heartbeat_s": "study.heartbeat_s",
        "artifact_store": "study.artifact_store",
        "limit": "generation.limit", "prompt_tokens": "generation.prompt_tokens", "new_tokens": "generation.new_tokens",
        "calibration_samples": "generation.calibration_samples",
    }

    teacher: str = Field(..., description="The fine-tuned teacher checkpoint directory, or a model file (.onnx, .xml).")
    profile: str = Field(..., description="Device profile (name or YAML): the budgets every candidate must meet.")
    metric: Annotated[str | None, For("forward")] = Field(
        None, description="Your metric, module:function(outputs, labels) -> number (higher is better), that candidates "
        "are validated with instead of the task's; it runs that code (compress.validation.user_metric).")
    train: str = Field(..., description="Transfer data: distillation, pruning recovery, vocabulary; calibration (a model file's only use of it).")
    eval: str = Field(..., description="Labelled data the search ranks candidates on.")
    holdout: str | None = Field(
        None, description="Labelled data the search never sees, for the final check (default: half of --eval, "
        "which the search then does not rank on).")
    time_budget_s: float = Field(7200.0, gt=0, description="Wall-clock seconds the search may spend in all.")
    objective: Objective = Field(Objective.latency, description="What the chosen candidate minimises.")
    distill: Annotated[dict[str, Any], For("forward")] = Field(default_factory=dict, description="Other distill options for every student.")
    prune: Annotated[dict[str, Any], For("forward")] = Field(default_factory=dict, description="Other prune options for every pruned candidate.")
    space: dict[str, list[Any]] = Field(default_factory=dict, description="Narrowed choices per dimension.")
    short: Short = Field(default_factory=Short, description="Short-fidelity trials.")
    full: Full = Field(default_factory=Full, description="Full-fidelity candidates.")
    study: Study = Field(default_factory=Study, description="The Optuna study.")
    generation: Generation = Field(default_factory=Generation, description="Generator searches: validation lengths.")

    @field_validator("space")
    @classmethod
    def _known_dims(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        from compress.search.space import ALL_DIMENSIONS

        for k, choices in v.items():
            if k not in ALL_DIMENSIONS:
                raise ValueError(f"unknown dimension {k!r} (known: {', '.join(ALL_DIMENSIONS)})")
            bad = [c for c in choices if c not in ALL_DIMENSIONS[k]]
            if bad or not choices:
                raise ValueError(f"{k}: choices {bad or choices} not in {ALL_DIMENSIONS[k]}")
        return v


def parse_duration(text: str) -> float:
    """Seconds in '2h', '90m', '45s', '1h30m' or a bare number of seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", t):
        raise ConfigError(f"time budget {text!r} is not a duration", hint="write e.g. 2h, 90m, 1h30m or 600 (seconds)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def parse_space(text: str) -> dict[str, list[Any]]:
    """``layers=2,3;quant=int8-dynamic,int4`` -> {"layers": [2, 3], "quant": ["int8-dynamic", "int4"]}."""
    from compress.search.space import ALL_DIMENSIONS

    out: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, vals = part.partition("=")
        key = key.strip()
        if key not in ALL_DIMENSIONS or not vals.strip():
            raise ConfigError(f"--space: {part!r} is not DIMENSION=CHOICE,...",
                              hint=f"dimensions: {', '.join(ALL_DIMENSIONS)}; e.g. --space 'layers=2,3;vocab=true'")
        kinds = {type(c) for c in ALL_DIMENSIONS[key]}
        choices: list[Any] = []
        for v in vals.split(","):
            v = v.strip()
            if bool in kinds:
                choices.append(v.lower() in ("1", "true", "yes"))
            elif int in kinds:
                choices.append(int(v) if v.isdigit() else v)
            elif float in kinds:
                try:
                    choices.append(float(v))
                except ValueError:
                    choices.append(v)
            else:
                choices.append(v)
        out[key] = choices
    return out
