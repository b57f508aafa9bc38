"""The settings of ``edgecompress validate`` (:class:`ValidateConfig`) and its sections: what is measured beside
accuracy (:class:`MeasureOptions`, when latency is estimated: :class:`EstimateMode`) and a text generator's prompts,
lengths and window (:class:`GenerationOptions`). A leaf of the validation package: the CLI, a recipe's step and a
search build it; :mod:`compress.validation.local` and the others read it."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from compress.settings import Section, Settings

__all__ = ["CONFIG_VERSION", "EstimateMode", "GenerationOptions", "MeasureOptions", "ValidateConfig"]


class EstimateMode(StrEnum):
    """When validate estimates latency instead of measuring it."""

    auto = "auto"  # estimate when this machine is not the profiled device (arch or identify differs)
    always = "always"  # estimate even on the device (e.g. to compare the estimator with a measurement)
    never = "never"  # time on this machine whatever the profile says (its figures are this machine's)


#: 2: the measurement options nested in ``measure`` (baseline, cold_start, estimate); a flat v1 key names its new home
CONFIG_VERSION = 2


class MeasureOptions(Section):
    """What validate measures beside accuracy: the FP32 baseline, the cold start, and when latency is estimated."""

    baseline: bool = Field(
        True, description="Time the teacher's FP32 baseline (speedup; the profile's measure.speedup_baseline says which).")
    cold_start: bool = Field(True, description="Measure cold start and peak memory in a fresh process.")
    estimate: EstimateMode = Field(
        EstimateMode.auto,
        description="auto: estimate latency (roofline, UNVERIFIED) when this machine is not the profiled device; "
        "always: estimate even on it; never: time on this machine regardless.",
    )


class GenerationOptions(Section):
    """Text generators (task text-generation): the prompts continued, the prompt and generation lengths timed, the
    perplexity window."""

    prompts: str | None = Field(
        None, description="Prompts to continue (.txt one a line, .jsonl prompt/text; at most `limit`, default 8); "
        "default: the first sentence of each --data document or paragraph.")
    prompt_tokens: int = Field(128, ge=1, description="Prompt length timed (TTFT, prefill tokens/s), "
                               "capped by the model's context.")
    new_tokens: int = Field(128, ge=1, description="Tokens generated per prompt (decode tokens/s, "
                            "continuations), capped at half the model's context when it leaves no room for a prompt.")
    window: int | None = Field(None, ge=4, description="Perplexity window in tokens (default: the "
                               "artifact's, 256, cut to the model's context; a longer one given is refused).")


class ValidateConfig(Settings):
    """Settings of ``edgecompress validate``; the measurement options in ``measure`` (the CLI's flat flags and a
    version-1 recipe's keys ``baseline``, ``cold_start``, ``estimate`` nest there through ``MOVED``)."""

    MOVED: ClassVar[dict[str, str]] = {**{k: f"measure.{k}" for k in MeasureOptions.model_fields},
                                       **{k: f"generation.{k}" for k in GenerationOptions.model_fields}}

    profile: str = Field("host", description="Built-in profile name, 'host', or a profile YAML path.")
    data: str | None = Field(None, description="Labelled eval data (CSV/TSV/JSONL/Parquet/datasets dir).")
    teacher: str | None = Field(
        None, description="Teacher checkpoint; default: the source recorded in the artifact's manifest."
    )
    text_column: str | None = Field(None, description="Text column (auto-detected when omitted).")
    text_pair_column: str | None = Field(None, description="Second text column for pair tasks.")
    label_column: str | None = Field(None, description="Label column (auto-detected when omitted).")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many rows (text generators: perplexity "
                              "windows and prompts; default 16 windows, 8 prompts).")
    measure: MeasureOptions = Field(default_factory=MeasureOptions, description="What is measured beside accuracy.")
    allow_pickle: bool = Field(False, description="Allow a pickled teacher checkpoint.")
    trust_remote_code: bool = Field(False, description="Allow the teacher's own Python code to run.")
    cache: bool = Field(True, description="Reuse and store the teacher's outputs on the eval data in the cache "
                        "(compress.cache); False runs the teacher afresh and stores nothing.")
    remote: str | None = Field(
        None, description="Measure on a device over SSH, user@host[:port] (system ssh; ~/.ssh/config applies)."
    )
    metric: str | None = Field(
        None, description="A user's metric, module:function, called with the outputs and labels (higher is better); "
        "it runs that code (compress.validation.user_metric).")
    remote_python: str = Field("python3", description="Python 3 on the remote device (with numpy and the runtime).")
    ssh_config: str | None = Field(
        None, description="ssh_config file for ssh -F (default: ssh's own, i.e. ~/.ssh/config)."
    )
    generation: GenerationOptions = Field(default_factory=GenerationOptions,
                                          description="Text generators: prompts, lengths, window.")
