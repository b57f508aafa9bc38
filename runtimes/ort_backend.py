"""ONNX Runtime adapter: plain onnxruntime + tokenizers (no torch, no optimum at run time)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.errors import ConfigError
from compress.runtimes.base import RuntimeBackend


class OrtBackend(RuntimeBackend):
    name: ClassVar[str] = "onnxruntime"
    module: ClassVar[str] = "onnxruntime"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.onnx})

    @classmethod
    def check_settings(cls, settings) -> None:
        from compress._optional import require

        ort = require(cls.module, "the onnxruntime runtime")
        provider = settings.provider or "CPUExecutionProvider"
        available = ort.get_available_providers()
        if provider not in available:
            raise ConfigError(
                f"ONNX Runtime execution provider {provider} is not available here",
                hint=f"available: {', '.join(available)}; install the onnxruntime build that provides it",
            )

    def _load(self) -> None:
        import onnxruntime as ort

        self.check_settings(self.settings)

        opts = ort.SessionOptions()
        if self.settings.threads:
            opts.intra_op_num_threads = self.settings.threads
            opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = self.settings.options.get("graph_optimization_level", "all")
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        for key, value in (self.settings.options.get("session_config") or {}).items():
            opts.add_session_config_entry(str(key), str(value))
        provider = self.settings.provider or "CPUExecutionProvider"
        self.settings.provider = provider
        self.session = ort.InferenceSession(str(self.artifact.model_path), sess_options=opts, providers=[provider])
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._output = self.artifact.manifest.outputs[0].name

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in inputs.items() if k in self._input_names}
        return self.session.run([self._output], feed)[0].astype(np.float32, copy=False)

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("onnxruntime")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["providers"] = self.session.get_providers()
        return d

    def close(self) -> None:
        self.session = None
