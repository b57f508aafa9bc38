"""Validation: measure an artifact on a device profile and judge it against the profile's budgets.

``validate`` runs here (:mod:`compress.validation.local`), estimates latency when this machine is not the
profiled device, or measures over SSH on the device itself (:mod:`compress.validation.remote`, which ships
:mod:`compress.device.remote_runner`). Metrics come from :mod:`compress.validation.metrics`, budget judging from
:mod:`compress.profiles.budgets`: the same code for every path.
"""

from __future__ import annotations

from compress.profiles.budgets import BudgetResult, BudgetStatus, judge, verdict_of
from compress.validation.common import ValidationReport, baseline_artifact, conclude, latency_texts
from compress.validation.local import EstimateMode, ValidateConfig, validate

__all__ = [
    "BudgetResult", "BudgetStatus", "EstimateMode", "ValidateConfig", "ValidationReport", "baseline_artifact",
    "conclude", "judge", "latency_texts", "validate", "verdict_of",
]
