"""Validation: measure an artifact on a device profile and judge it against the profile's budgets.

``validate`` runs here (:mod:`compress.validation.local`), estimates latency when this machine is not the
profiled device, or measures over SSH on the device itself (:mod:`compress.validation.remote`, which ships
:mod:`compress.device.remote_runner`); ``validate_fleet`` measures on several devices at once
(:mod:`compress.validation.fleet`). Its settings: :mod:`compress.validation.config`. Metrics come from
:mod:`compress.validation.metrics`, budget judging from :mod:`compress.profiles.budgets`: the same code for every
path.
"""
