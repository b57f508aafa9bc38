"""Core ML adapter: a Core ML package (``model.mlpackage``) run by Core ML through coremltools, the runtime an iOS or
macOS app uses. Core ML exists on Apple's systems only: on Linux and Windows the adapter does not load
(:meth:`CoreMLBackend.runs_here` is False), and ``validate`` estimates instead of measuring.

Settings: ``options.compute_units`` picks where Core ML may run the model: ``all`` (CPU, GPU and Neural Engine; Core
ML's default), ``cpu_and_ne``, ``cpu_and_gpu`` or ``cpu_only``. ``threads`` and ``provider`` do not apply (Core ML
schedules its own work). A package takes one row per call (what the export writes): larger batches run row by row.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.errors import ConfigError, MissingBackendError
from compress.runtimes.base import RuntimeBackend, RuntimeSettings

COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_and_gpu": "CPU_AND_GPU", "cpu_only": "CPU_ONLY"}


class CoreMLBackend(RuntimeBackend):
    name: ClassVar[str] = "coreml"
    module: ClassVar[str] = "coremltools"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.coreml})
    #: outputs come back float32 by Core ML's names: no state fed back by name
    named_outputs: ClassVar[bool] = False

    @classmethod
    def runs_here(cls) -> bool:
        return sys.platform == "darwin"

    @classmethod
    def check_settings(cls, settings: RuntimeSettings) -> None:
        units = settings.options.get("compute_units", "all")
        if units not in COMPUTE_UNITS:
            raise ConfigError(f"unknown Core ML compute_units {units!r}",
                              hint=f"runtime.options.compute_units is one of {', '.join(COMPUTE_UNITS)}")

    def _load(self) -> None:
        if not self.runs_here():
            raise MissingBackendError(f"Core ML runs only on macOS and iOS; this is {sys.platform}",
                                      hint="validate on a Mac (or estimate: edgecompress validate --estimate auto)")
        import coremltools as ct

        self.check_settings(self.settings)
        units = getattr(ct.ComputeUnit, COMPUTE_UNITS[self.settings.options.get("compute_units", "all")])
        self.model = ct.models.MLModel(str(self.artifact.model_path), compute_units=units)
        spec = self.model.get_spec().description
        self._types = {i.name: (np.float32 if i.type.multiArrayType.dataType in (65552, 65568) else np.int32)
                       for i in spec.input}

    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One prediction of the package (its one entry, ``model``): every output float32 by Core ML's names, or
        those named. A package of several entry points is not run here."""
        if str(self.entry(entry).role) != self.main or len(self.artifact.manifest.entries) > 1:
            raise ConfigError(f"the coreml runtime runs a package of one model, not the entry {entry}")
        feeds = {n: np.ascontiguousarray(feeds[n], dtype=t) for n, t in self._types.items()}
        out = {k: np.asarray(v, dtype=np.float32) for k, v in self.model.predict(feeds).items()}
        return out if outputs is None else {n: out[n] for n in outputs}

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("coremltools")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["compute_units"] = self.settings.options.get("compute_units", "all")
        return d

    def close(self) -> None:
        self.model = None
