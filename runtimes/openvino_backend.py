"""OpenVINO adapter: IR (.xml/.bin) on CPU, GPU or NPU, with latency/throughput hints and profile threads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format, Precision
from compress.device.shipped import decoder_feeds
from compress.errors import ConfigError
from compress.runtimes.base import RuntimeBackend


def available_devices() -> list[str]:
    import openvino as ov

    return list(ov.Core().available_devices)


def attention_path(compiled) -> dict[str, Any]:
    """Which attention a compiled model runs, read from its runtime graph (``get_runtime_model()``, each node's
    ``layerType``): ``sdpa_kv_cache`` when the plugin fused a stateful cache into its attention node (the CPU plugin's
    ScaledDotProductAttentionWithKVCache: the node reads the cache variables and writes their new values, so no
    Concat per step), ``sdpa`` for a fused attention without the cache, ``decomposed`` for MatMul + Softmax,
    ``none`` where there is no attention. With ``kv_cache_precision``, the CPU plugin's KV_CACHE_PRECISION (the
    element type a fused cache is stored in; the decomposed path keeps the variables in their own type)."""
    nodes = list(compiled.get_runtime_model().get_ops())

    def kind(op) -> str:
        info = op.get_rt_info()
        return info["layerType"].astype(str) if "layerType" in info else op.get_type_name()

    sdpa = [op for op in nodes if kind(op) == "ScaledDotProductAttention"]
    cached = [op for op in sdpa if any(kind(i.get_source_output().get_node()) == "MemoryInput" for i in op.inputs())]
    softmax = sum(kind(op) == "Softmax" for op in nodes)
    path = ("sdpa_kv_cache" if cached and len(cached) == len(sdpa) and not softmax
            else "sdpa" if sdpa and not softmax and not cached else "decomposed" if softmax or sdpa else "none")
    out: dict[str, Any] = {"attention": path, "sdpa_nodes": len(sdpa), "sdpa_with_kv_cache": len(cached),
                           "softmax_nodes": softmax}
    if _has_property(compiled, "KV_CACHE_PRECISION"):
        out["kv_cache_precision"] = _type_name(compiled.get_property("KV_CACHE_PRECISION"))
    return out


class OpenVINOBackend(RuntimeBackend):
    """Settings: ``provider`` is the OpenVINO device (CPU, GPU, GPU.1, NPU; default CPU); ``threads`` sets
    INFERENCE_NUM_THREADS; ``options`` are OpenVINO properties (e.g. PERFORMANCE_HINT: THROUGHPUT,
    NUM_STREAMS, INFERENCE_PRECISION_HINT, KV_CACHE_PRECISION). Defaults: PERFORMANCE_HINT LATENCY, and on CPU
    INFERENCE_PRECISION_HINT f32, so an FP32 artifact is not silently run in bf16 on CPUs that have it; for an FP32
    artifact also KV_CACHE_PRECISION f32, so a generator's cache (fused into the attention, see
    :func:`attention_path`) is not silently stored in u8. A quantized artifact keeps the CPU plugin's default cache
    precision (u8 on x86, what OpenVINO GenAI runs): it is a lossy artifact already, and the u8 cache is a quarter of
    the memory."""

    name: ClassVar[str] = "openvino"
    module: ClassVar[str] = "openvino"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.openvino})
    #: a stateful IR's loop: a request per token, the KV cache in the request's variables (a generator IR of this
    #: project is stateful; one that feeds its cache back as inputs is copied as the base class says)
    generation_loop: ClassVar[str] = "OpenVINO stateful InferRequest (a request per token, the KV cache in its variables)"
    copies_cache: ClassVar[bool] = False

    @classmethod
    def check_settings(cls, settings) -> None:
        from compress._optional import require

        require(cls.module, "the openvino runtime")
        device = settings.provider or "CPU"
        devices = available_devices()
        if device.split(".")[0] not in {d.split(".")[0] for d in devices}:
            raise ConfigError(
                f"OpenVINO device {device} is not present on this machine (available: {', '.join(devices)})",
                hint="run on a machine with that device, or use a profile for an available one "
                "(intel-cpu-openvino for CPU)",
            )

    def _load(self) -> None:
        import openvino as ov

        self.check_settings(self.settings)
        core = ov.Core()
        device = self.settings.provider or "CPU"
        self.settings.provider = device
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if device.startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = "f32"
            if self.artifact.manifest.precision == Precision.fp32:  # its KV cache too (the plugin's default is u8)
                config["KV_CACHE_PRECISION"] = "f32"
            if self.settings.threads:
                config["INFERENCE_NUM_THREADS"] = int(self.settings.threads)
        config.update({str(k): v for k, v in self.settings.options.items()})
        self.core = core
        #: each entry point's compiled model, its request and its input names, by role
        self._entries: dict[str, tuple[Any, Any, set[str]]] = {}
        for entry in self.artifact.manifest.entries:
            compiled = core.compile_model(str(self.artifact.entry_path(entry.role)), device, config)
            self._entries[str(entry.role)] = (compiled, compiled.create_infer_request(),
                                              {p.get_any_name() for p in compiled.inputs})
        self.compiled, self.request, _ = self._entries[self.main]
        step = self._entries[self.step_entries[1]][1]
        self._has_variables = bool(step.query_state())  # a stateful IR (a generator's KV cache inside)
        self.properties = {
            k: _type_name(self.compiled.get_property(k))  # an element type as f32, u8 (not "<Type: 'float32'>")
            for k in ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT",
                      "KV_CACHE_PRECISION")
            if _has_property(self.compiled, k)
        }

    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One inference of the entry ``entry``'s IR on its request: every output by the manifest's name (an output's
        names may list others before it) as the IR returns it (a streaming model's state is fed back unconverted);
        ``outputs`` named: those only, read zero-copy and copied once (the request reuses its output buffers), a name
        the IR lacks read from its first output."""
        if self._entries.get(str(entry)) is None:
            self.entry(entry)  # an entry the artifact lacks: refused in one line
            raise ConfigError(f"{self.artifact.path}: the OpenVINO request of {entry} is closed")
        compiled, request, names = self._entries[str(entry)]
        feed = {k: np.require(v, requirements='C') for k, v in feeds.items() if k in names}
        if outputs is not None:
            result = self.native(request.infer, feed, share_inputs=True, share_outputs=True)
            return {n: np.array(result[_port(compiled, n)], copy=True) for n in outputs}
        result = self.native(request.infer, feed, share_inputs=True, share_outputs=False)
        wanted = [t.name for t in self.entry(entry).outputs]
        return {next((n for n in wanted if n in o.get_names()), o.get_any_name()): np.array(result[o])
                for o in compiled.outputs}

    # -- a generator's stateful IR: the KV cache lives in the InferRequest's variables ----------------
    @property
    def stateful(self) -> bool:
        """True for an IR with internal state (OpenVINO's make_stateful: ReadValue/Assign variables), else as the
        base class says (state fed back as graph inputs/outputs)."""
        if self._variables():
            return True
        return super().stateful

    def _variables(self) -> bool:
        return bool(getattr(self, "_has_variables", False))

    def prefill(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Any]:
        """A stateful IR: the request's variables reset (an empty KV cache), then the prompt in one call. Outputs:
        ``logits`` [1, S, V] float32; the state is the InferRequest itself (opaque: pass it back to :meth:`step`)."""
        if not self._variables():
            return super().prefill(feeds)
        first, then = self.step_entries
        request = self._entries[then][1]
        request.reset_state()
        return self._infer_step(first, feeds), request

    def step(self, feeds: dict[str, np.ndarray], state: Any) -> tuple[dict[str, np.ndarray], Any]:
        """A stateful IR: one more chunk (a decode token) on the cache the request holds. ``attention_mask`` covers
        the past and the new tokens; ``position_ids`` come from it where the IR takes them, ``beam_idx`` is
        0 (batch 1, no beams) where it takes one."""
        if not self._variables():
            return super().step(feeds, state)
        return self._infer_step(self.step_entries[1], feeds), state

    def _infer_step(self, entry: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.call(entry, decoder_feeds(feeds, self._entries[entry][2]))
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def _step(self, entry: str, feeds: dict[str, np.ndarray],
              state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return super()._step(entry, decoder_feeds(feeds, self._entries[entry][2]), state)

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("openvino")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["device"] = self.settings.provider
        d["device_name"] = _device_name(self.core, self.settings.provider)
        d["properties"] = self.properties
        if self._variables():  # a generator's stateful IR: did the plugin fuse the cache into its attention?
            d["attention"] = attention_path(self.compiled)
        return d

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self._entries = {}


def _port(compiled, name: str):
    """The compiled model's output named ``name`` (among each output's names), else its first."""
    return next((o for o in compiled.outputs if name in o.get_names()), compiled.outputs[0])


def _has_property(compiled, key: str) -> bool:
    try:
        return key in [str(p) for p in compiled.get_property("SUPPORTED_PROPERTIES")]
    except Exception:  # noqa: BLE001
        return False


def _type_name(value) -> str:
    """An OpenVINO element type as its short name (u8, f16, f32); other values as ``str``."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _device_name(core, device: str) -> str | None:
    try:
        return str(core.get_property(device, "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001
        return None
