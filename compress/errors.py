"""One error hierarchy for the library; the CLI turns these into one line and an exit code.

Exit codes (:data:`EXIT_CODES`, what ``edgecompress --help`` lists): 2 for anything the user can fix (bad input,
config, missing backend, existing output), 1 for a validation that ran and found a budget failed, and the rest below.
"""

from __future__ import annotations

import re

#: every exit code the CLI ends with -> what it means: ``edgecompress --help`` prints this table, and a test checks
#: that each error class's ``exit_code`` has its entry
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "a budget failed: validate, run, gate (a regression), quantize (a collapse, the accuracy, --strict: slower "
       "than its input)",
    2: "bad input, usage or environment (disk full, read-only output, too little memory)",
    3: "an unexpected error (a bug: rerun with --debug, report it); gate: reports not comparable",
    4: "validate with only unverified budgets (--unverified-exit-code)",
    5: "ANOMALOUS: none failed, but a latency near its limit is too noisy to judge (validate, run)",
    6: "INFEASIBLE: search measured candidates and none meets every budget",
    7: "INCOMPLETE: validate on several devices: one did not answer (the others' verdicts are in the report); none failed",
    130: "Ctrl-C",
    143: "SIGTERM (partial outputs are removed on either signal)",
}


def exit_codes_help() -> str:
    """The exit-code block of the CLI's help (Click keeps a ``\\b`` paragraph's lines), from :data:`EXIT_CODES`."""
    return "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


class EdgeCompressError(Exception):
    """Base of every error the library raises on purpose.

    ``hint`` is the fix, shown after the message: ``<message>; <hint>``.
    """

    exit_code = 2
    label = "error"  # how the CLI prefixes the one line it prints

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigError(EdgeCompressError):
    """An option or configuration value is invalid or options contradict each other."""


class ProfileError(EdgeCompressError):
    """A device profile is unknown or its file is invalid."""


class DataError(EdgeCompressError):
    """An input data file is missing, empty, unreadable, or lacks a needed column or label."""


class ModelLoadError(EdgeCompressError):
    """A teacher/model directory is missing, not a model, corrupt, or needs an opt-in to load."""


class ArtifactError(EdgeCompressError):
    """An artifact directory is missing, malformed, or of the wrong kind for the step."""


class IntegrityError(ArtifactError):
    """An artifact file does not match the sha256 recorded in its manifest."""


class OutputExistsError(EdgeCompressError):
    """The output path exists and ``force`` was not given."""


class StorageError(EdgeCompressError):
    """A file cannot be written (or read) because of the user's environment: a full disk, a quota,
    a read-only file system, no permission (see ``compress.storage``)."""


class MemoryShortage(EdgeCompressError):
    """A step would need more memory than the machine has available, estimated before the work
    (``compress.host.memory``)."""


class MissingBackendError(EdgeCompressError):
    """An optional backend (runtime, exporter, data reader) is not installed."""


class StageError(EdgeCompressError):
    """A stage (export, quantize, ...) ran but could not produce a correct artifact."""


class ParityError(StageError):
    """An exported/converted model disagrees with its source beyond tolerance."""

    def __init__(self, message: str, *, max_abs_diff: float, atol: float, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.max_abs_diff = max_abs_diff
        self.atol = atol


class BudgetFailed(EdgeCompressError):
    """Validation ran and at least one budget failed (exit code 1)."""

    exit_code = 1


class Regressed(EdgeCompressError):
    """The regression gate found a metric worse than the baseline's beyond noise (exit code 1)."""

    exit_code = 1


class NotComparable(EdgeCompressError):
    """The regression gate's two reports were measured under different conditions (exit code 3)."""

    exit_code = 3


class Unverified(EdgeCompressError):
    """No budget failed, but some were not measured (estimates, or measurements switched off): not a pass.

    The CLI prints it as ``UNVERIFIED: …`` (not as an error); the exit code is ``--unverified-exit-code``
    (default 4).
    """

    exit_code = 4
    label = "UNVERIFIED"


class QuantizationCollapsed(StageError):
    """``quantize --strict``: the quantized model's own parity check fell below the collapse floor (exit code 1)."""

    exit_code = 1


class SlowerThanInput(StageError):
    """quantize --strict: the INT8 model runs slower than its input on the target (timed here), nothing written."""

    exit_code = 1


class Anomalous(EdgeCompressError):
    """No budget failed, but a latency measurement is too noisy near its limit to judge (exit code 5): ANOMALOUS."""

    exit_code = 5
    label = "ANOMALOUS"


class Infeasible(EdgeCompressError):
    """A search measured candidates and none meets every budget (exit code 6): INFEASIBLE."""

    exit_code = 6
    label = "INFEASIBLE"


class Incomplete(EdgeCompressError):
    """Validation on several devices: a device did not answer (unreachable, or dropped off mid-run) and none of the
    others failed (exit code 7): INCOMPLETE. The others' verdicts are kept in the report."""

    exit_code = 7
    label = "INCOMPLETE"


class AccuracyBudgetError(StageError):
    """Accuracy-aware quantization found no precision mix that meets the accuracy budget (exit code 1).

    Carries the numbers (metric name, FP32 baseline, best reachable metric, the lowest metric the
    budget allows, the costliest layers) and where the best candidate and its report were written.
    """

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        metric: str,
        baseline: float,
        best: float,
        allowed_min: float,
        costliest: list[str],
        best_candidate: str | None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.metric = metric
        self.baseline = baseline
        self.best = best
        self.allowed_min = allowed_min
        self.costliest = costliest
        self.best_candidate = best_candidate


#: a line that only says where in a native library an error was raised (OpenVINO's "Exception from
#: src/inference/src/cpp/core.cpp:84:", "Check 'res.status == pugi::status_ok' failed at src/.../input_model.cpp:219:")
_WHERE_ONLY = re.compile(r"^(?:Exception from \S+:\d+:?|Check '.*' failed at \S+:\d+:?)$")


def first_line(e: BaseException, limit: int = 200, default: str | None = None) -> str:
    """The first line of an exception's message that says what went wrong, at most ``limit`` characters, for a
    one-line error: a library's message can run to pages, and a native library's starts with the source locations it
    passed through (skipped). A longer line is cut at a word's end, marked "…". ``default`` stands in for an empty
    message (None: the exception's type name)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if not _WHERE_ONLY.match(ln)] or lines
    return shorten(said[0] if said else type(e).__name__ if default is None else default, limit)


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: whole, or cut at the end of a word (not mid-word) and marked "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:.") + "…"
