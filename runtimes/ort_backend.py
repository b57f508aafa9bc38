"""ONNX Runtime adapter: plain onnxruntime + tokenizers (no torch, no optimum at run time).

Execution providers: ``settings.provider`` (default CPUExecutionProvider; the aliases cpu, cuda,
tensorrt are accepted). CUDAExecutionProvider and TensorrtExecutionProvider come with
``onnxruntime-gpu`` (``pip install 'edgecompress[gpu]'``). ``options``:

- ``provider_options``: passed to the provider, e.g. ``{device_id: 0}`` for CUDA or
  ``{trt_fp16_enable: true, trt_engine_cache_enable: true, trt_engine_cache_path: DIR}`` for TensorRT
  (booleans become the 'True'/'False' strings ONNX Runtime parses);
- ``allow_cpu_fallback``: when true, CPUExecutionProvider is listed after the requested provider and a
  provider that is missing or fails to initialise falls back to the CPU (with a warning). When false
  (the default) both are errors: a GPU profile never silently times the CPU. (Individual nodes a GPU
  provider does not implement still run on the CPU either way; that is ONNX Runtime's partitioning.)
- ``graph_optimization_level`` (disable|basic|extended|all), ``session_config`` (session config entries).

``run`` is synchronous on every provider (inputs are copied to the device, outputs back to the host
before it returns), so :meth:`synchronize` has nothing to wait for.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.device.shipped import decoder_feeds
from compress.errors import ConfigError
from compress.native_stderr import ort_log_severity
from compress.runtimes.base import RuntimeBackend, RuntimeSettings

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
_ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def provider_name(provider: str | None) -> str:
    """The ONNX Runtime provider name for ``provider`` (aliases cpu/cuda/tensorrt; default CPU)."""
    if not provider:
        return CPU
    return _ALIASES.get(provider.strip().lower(), provider.strip())


def provider_options(options: dict[str, Any]) -> dict[str, str]:
    """``options['provider_options']`` as the str -> str mapping ONNX Runtime takes (bool -> 'True'/'False')."""
    raw = options.get("provider_options") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"onnxruntime option provider_options must be a mapping, got {type(raw).__name__}",
                          hint="e.g. provider_options: {device_id: 0}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, dict | list | tuple) or value is None:
            raise ConfigError(f"onnxruntime provider option {key}={value!r} must be a string, number or boolean")
        out[str(key)] = ("True" if value else "False") if isinstance(value, bool) else str(value)
    return out


def provider_list(provider: str, options: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """The providers handed to the session: the requested one with its options, then fallbacks.

    TensorRT is followed by CUDA (when installed: nodes TensorRT rejects run on the GPU); CPU comes last
    only when ``allow_cpu_fallback`` is set.
    """
    out = [(provider, provider_options(options))]
    if provider == "TensorrtExecutionProvider":
        out.append(("CUDAExecutionProvider", {}))
    if provider != CPU and options.get("allow_cpu_fallback"):
        out.append((CPU, {}))
    return out


class OrtBackend(RuntimeBackend):
    name: ClassVar[str] = "onnxruntime"
    module: ClassVar[str] = "onnxruntime"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.onnx})

    @classmethod
    def check_settings(cls, settings: RuntimeSettings) -> None:
        from compress._optional import require

        ort = require(cls.module, "the onnxruntime runtime")
        provider = provider_name(settings.provider)
        provider_options(settings.options)  # a malformed mapping fails now
        available = ort.get_available_providers()
        if provider in available:
            return
        if provider != CPU and settings.options.get("allow_cpu_fallback"):
            log.warning("ONNX Runtime execution provider %s is not available here (available: %s); "
                        "falling back to %s (allow_cpu_fallback)", provider, ", ".join(available), CPU)
            return
        gpu = provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        raise ConfigError(
            f"ONNX Runtime execution provider {provider} is not available here (available: {', '.join(available)})",
            hint=("install onnxruntime-gpu in place of onnxruntime (pip install 'edgecompress[gpu]') on a machine "
                  "with an NVIDIA GPU and CUDA" if gpu else "install the onnxruntime build that provides it"),
        )

    def _load(self) -> None:
        import onnxruntime as ort

        self.check_settings(self.settings)

        from compress.device.shipped import ort_session_options

        opts = ort_session_options(ort, self.settings.threads, self.settings.options.get("graph_optimization_level", "all"),
                                   self.settings.options.get("session_config"))
        opts.log_severity_level = ort_log_severity()  # errors, or none once the CLI keeps native lines off stderr
        provider = provider_name(self.settings.provider)
        available = set(ort.get_available_providers())
        wanted = [(p, o) for p, o in provider_list(provider, self.settings.options) if p in available]
        if not wanted:  # requested provider missing, fallback allowed (check_settings passed)
            wanted = [(CPU, {})]
        self.settings.provider = provider
        self.session = ort.InferenceSession(
            str(self.artifact.model_path), sess_options=opts,
            providers=[p for p, _ in wanted], provider_options=[o for _, o in wanted],
        )
        active = self.session.get_providers()
        # onnxruntime-gpu falls back to the CPU with only a log line when CUDA/cuDNN fail to load
        if provider != CPU and (not active or active[0] != provider):
            if not self.settings.options.get("allow_cpu_fallback"):
                raise ConfigError(
                    f"ONNX Runtime could not initialise {provider} (session providers: {', '.join(active)})",
                    hint="check the CUDA/cuDNN (and TensorRT) libraries onnxruntime-gpu needs, or set "
                    "options.allow_cpu_fallback: true to accept the CPU",
                )
            log.warning("%s did not initialise; running on %s (allow_cpu_fallback)", provider, ", ".join(active))
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._output = self.artifact.manifest.outputs[0].name

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in inputs.items() if k in self._input_names}
        return self.session.run([self._output], feed)[0].astype(np.float32, copy=False)

    def run_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in inputs.items() if k in self._input_names}
        names = [o.name for o in self.session.get_outputs()]
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, self.session.run(names, feed), strict=True)}

    def run_named(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name as the graph returns it (a stateful step's state is fed back unconverted)."""
        feed = {k: v for k, v in inputs.items() if k in self._input_names}
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.native(self.session.run, names, feed), strict=True))

    def step(self, feeds: dict[str, np.ndarray],
             state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One step of a graph with a KV cache (``past_key_values.N.*`` in, ``present.N.*`` out, fed back); a graph
        that also takes ``position_ids`` (ONNX Runtime GenAI's MultiHeadAttention form) gets them from the attention
        mask (the positions of the new tokens among the mask's ones)."""
        return super().step(decoder_feeds(feeds, self._input_names), state)

    def synchronize(self) -> None:
        """Nothing to wait for: ``InferenceSession.run`` returns host outputs after the device finished."""

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("onnxruntime")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["providers"] = self.session.get_providers()
        opts = provider_options(self.settings.options)
        if opts:
            d["provider_options"] = opts
        return d

    def close(self) -> None:
        self.session = None
