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
- ``genai_loop``: false times a generator in edgecompress's loop even where ONNX Runtime GenAI could run it
  (default true; see below).

``run`` is synchronous on every provider (inputs are copied to the device, outputs back to the host
before it returns), so :meth:`synchronize` has nothing to wait for.

A generator (:meth:`OrtBackend.generate`, what ``validate`` times) runs in ONNX Runtime GenAI's own loop
(``og.Generator``: the prompt appended, then ``generate_next_token`` per token, the KV cache kept by the runtime in
one buffer that past and present share) when the artifact carries ``genai_config.json`` (the builder's export, and
every quantized child of it), ``onnxruntime-genai`` is installed and the provider is the CPU or CUDA: that loop is
what an application shipping the file runs. Its session takes the threads, graph optimisation level and session
config entries this adapter's session has (:func:`genai_overlay`); the artifact's files are not changed. Elsewhere
it runs edgecompress's prefill/step loop with IO binding (:class:`BoundCache`): the cache stays in ONNX Runtime's
memory between steps (no numpy copy in or out), and a GroupQueryAttention graph writes each step's keys and values
into one preallocated buffer that is both its past and its present (ONNX Runtime GenAI's
``past_present_share_buffer``), so the cache is not copied at all. ``prefill``/``step`` (the perplexity windows,
parity) keep numpy state.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.device.shipped import decoder_feeds
from compress.errors import ConfigError
from compress.native_stderr import ort_log_severity
from compress.runtimes.base import RuntimeBackend, RuntimeSettings, StateSpec
from compress.tasks.generation import GENAI_CONFIG, Generated

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
#: the loops :meth:`OrtBackend.generate` times, as a report names them
GENAI_LOOP = ("ONNX Runtime GenAI {version} generator (og.Generator: the prompt appended, then generate_next_token "
              "per token; the KV cache in the runtime, past and present sharing one buffer)")
BOUND_LOOP = ("edgecompress run_steps with ONNX Runtime IO binding (prefill, then one session run per token; the KV "
              "cache kept in ONNX Runtime's memory{shared})")
SHARED = ", past and present sharing one preallocated buffer"
#: session config entries an ONNX Runtime GenAI session takes over from this adapter's session options (those set)
_MIRRORED_ENTRIES = ("session.force_spinning_stop", "session.intra_op.allow_spinning",
                     "session.inter_op.allow_spinning", "session.intra_op_thread_affinities")
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


def genai_overlay(opts: Any, entries: Sequence[str] = (), model_file: str | None = None) -> dict[str, Any]:
    """The ``genai_config.json`` overlay that gives ONNX Runtime GenAI's decoder session what ``opts`` (an
    ``onnxruntime.SessionOptions``) sets: intra/inter-op threads (where set), the graph optimisation level and the
    session config entries named in ``entries`` (and :data:`_MIRRORED_ENTRIES`) that ``opts`` holds (GenAI passes a
    session option it does not know, a string, to the session as a config entry); ``model_file``: the graph's file."""
    session: dict[str, Any] = {"graph_optimization_level": opts.graph_optimization_level.name}
    if opts.intra_op_num_threads:
        session["intra_op_num_threads"] = int(opts.intra_op_num_threads)
    if opts.inter_op_num_threads:
        session["inter_op_num_threads"] = int(opts.inter_op_num_threads)
    for key in dict.fromkeys([*_MIRRORED_ENTRIES, *entries]):
        try:
            session[key] = str(opts.get_session_config_entry(key))
        except Exception:  # noqa: BLE001 - onnxruntime raises a plain error for an entry not set
            continue
    decoder: dict[str, Any] = {"session_options": session}
    if model_file:
        decoder["filename"] = model_file
    return {"model": {"decoder": decoder}}


class BoundCache:
    """One generation's KV cache kept in ONNX Runtime's memory between steps (IO binding): each step's present
    tensors are OrtValues fed back as the next past without a numpy copy. With ``capacity`` (a graph whose attention
    writes into its past: GroupQueryAttention, ONNX Runtime GenAI's ``past_present_share_buffer``) the past and the
    present of a layer are one preallocated buffer of ``capacity`` positions, the attention mask saying how many
    hold tokens: the step appends to it and nothing is copied."""

    def __init__(self, session: Any, spec: StateSpec, capacity: int | None = None) -> None:
        from onnxruntime import OrtValue

        self.session, self.spec, self.capacity = session, spec, capacity
        self.inputs = {i.name for i in session.get_inputs()}
        self.outputs = [o.name for o in session.get_outputs()]
        self._ortvalue = OrtValue

    def initial(self) -> dict[str, Any]:
        """The state before the prefill: numpy zeros of no past, or the shared buffers (zeros, ``capacity`` long
        where the past grows)."""
        if self.capacity is None:
            return self.spec.initial()
        # the numpy arrays are the buffers' memory (an OrtValue made from numpy does not own it): held here
        self._arrays = [np.zeros(tuple(self.capacity if d == 0 else d for d in p.shape), dtype=p.dtype)
                        for p in self.spec.pairs]
        return {p.input: self._ortvalue.ortvalue_from_numpy(a) for p, a in zip(self.spec.pairs, self._arrays, strict=True)}

    def run(self, inputs: dict[str, Any], native) -> dict[str, Any]:
        """One step: every output by name, the state as OrtValues (the shared buffers themselves), the rest numpy.
        ``native`` times the session's run (:meth:`RuntimeBackend.native`)."""
        binding = self.session.io_binding()
        for name, value in inputs.items():
            if name not in self.inputs:
                continue
            if isinstance(value, self._ortvalue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        shared = {p.output: inputs[p.input] for p in self.spec.pairs} if self.capacity is not None else {}
        for name in self.outputs:
            if name in shared:
                binding.bind_ortvalue_output(name, shared[name])
            else:
                binding.bind_output(name)
        native(self.session.run_with_iobinding, binding)
        state = set(self.spec.outputs)
        # a shared buffer goes back as the OrtValue bound (the one whose memory is held), not get_outputs' view of it
        return {name: shared.get(name, value) if name in state else value.numpy()
                for name, value in zip(self.outputs, binding.get_outputs(), strict=True)}


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
        self._session_options = opts
        self._wanted = wanted
        self._sessions: dict[str, Any] = {}  # one per entry point, by role, opened at its first call
        self._names: dict[str, set[str]] = {}  # each session's input names
        self._closed = False
        self._bound: BoundCache | None = None  # the IO-bound cache while edgecompress's loop generates
        self._genai_model = None  # ONNX Runtime GenAI's model, loaded at the first generate
        self.genai_version = self._genai_route(provider)
        if self.genai_version:
            self.generation_loop, self.copies_cache = GENAI_LOOP.format(version=self.genai_version), False
            if provider == CPU:  # og.Model holds its own copy of the weights: the session waits until it is used
                return
        else:
            shares = self._shares_buffer()
            self.generation_loop = BOUND_LOOP.format(shared=SHARED if shares else "")
            self.copies_cache = not shares  # a concatenating attention writes past and new into a new present
        for entry in self.artifact.manifest.entries:
            self.session_for(entry.role)

    @property
    def session(self) -> Any:
        """The main entry's ONNX Runtime session (:meth:`session_for`)."""
        return self.session_for(self.main)

    def session_for(self, role: str) -> Any:
        """The session of the entry point ``role`` (one per entry's graph): made at load, except for a generator that
        ONNX Runtime GenAI runs on the CPU, where it is made at its first use (a prefill, a window): a generation
        alone (the FP32 baseline's timing, an export's parity check) then holds one copy of the weights, og.Model's,
        not two. None once closed."""
        role = str(role)
        if role not in self._sessions and not self._closed:
            self._open_session(role)
        return self._sessions.get(role)

    def _open_session(self, role: str) -> None:
        import onnxruntime as ort

        provider, wanted = self.settings.provider, self._wanted
        session = ort.InferenceSession(
            str(self.artifact.entry_path(role)), sess_options=self._session_options,
            providers=[p for p, _ in wanted], provider_options=[o for _, o in wanted],
        )
        active = session.get_providers()
        # onnxruntime-gpu falls back to the CPU with only a log line when CUDA/cuDNN fail to load
        if provider != CPU and (not active or active[0] != provider):
            if not self.settings.options.get("allow_cpu_fallback"):
                raise ConfigError(
                    f"ONNX Runtime could not initialise {provider} (session providers: {', '.join(active)})",
                    hint="check the CUDA/cuDNN (and TensorRT) libraries onnxruntime-gpu needs, or set "
                    "options.allow_cpu_fallback: true to accept the CPU",
                )
            log.warning("%s did not initialise; running on %s (allow_cpu_fallback)", provider, ", ".join(active))
        self._sessions[role] = session
        self._names[role] = {i.name for i in session.get_inputs()}

    def _input_names(self, role: str) -> set[str]:
        """The input names of the entry ``role``'s graph (its session opened if it waits)."""
        return set() if self.session_for(role) is None else self._names[str(role)]

    def _genai_config(self) -> dict[str, Any] | None:
        """The artifact's genai_config.json (read once), None where it has none."""
        if not hasattr(self, "_genai_cfg"):
            path = self.artifact.path / GENAI_CONFIG
            try:
                self._genai_cfg = json.loads(path.read_text()) if path.is_file() else None
            except (OSError, ValueError):
                self._genai_cfg = None
        return self._genai_cfg

    def _genai_route(self, provider: str) -> str | None:
        """ONNX Runtime GenAI's version where :meth:`generate` runs in its loop (the artifact carries
        genai_config.json, onnxruntime-genai imports, the provider is the CPU or CUDA, option genai_loop is not
        false), else None."""
        if not self.settings.options.get("genai_loop", True) or provider not in (CPU, CUDA):
            return None
        if self._genai_config() is None or self.state_spec is None:
            return None
        from compress._optional import is_available, version_of

        if not is_available("onnxruntime_genai"):
            return None
        try:
            import onnxruntime_genai  # noqa: F401 - an installed wheel that does not load leaves edgecompress's loop
        except (ImportError, OSError) as e:
            log.debug("onnxruntime_genai does not import (%s): generating in edgecompress's loop", e)
            return None
        return version_of("onnxruntime_genai") or "?"

    def _shares_buffer(self) -> bool:
        """Whether the graph's attention writes into its past (the builder's GroupQueryAttention graphs: its
        genai_config.json says ``past_present_share_buffer``), so one buffer serves as past and present."""
        config = self._genai_config() or {}
        return bool(config.get("search", {}).get("past_present_share_buffer")) and self.state_spec is not None

    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One session run of the entry ``entry``'s graph: the outputs named (None: every output) as the graph returns
        them (a stateful step's state is fed back unconverted; while :meth:`generate` runs edgecompress's loop, the
        step entry's state as OrtValues in ONNX Runtime's memory: :class:`BoundCache`)."""
        if self._bound is not None and entry == self.step_entries[1]:
            return self._bound.run(feeds, self.native)
        session = self.session_for(self.entry(entry).role)
        if session is None:
            raise ConfigError(f"{self.artifact.path}: the ONNX Runtime session is closed")
        names = self._names[str(entry)]
        feed = {k: v for k, v in feeds.items() if k in names}
        wanted = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
        return dict(zip(wanted, self.native(session.run, wanted, feed), strict=True))

    def _step(self, entry: str, feeds: dict[str, np.ndarray],
              state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One call of a graph with a KV cache (``past_key_values.N.*`` in, ``present.N.*`` out, fed back); a graph
        that also takes ``position_ids`` (ONNX Runtime GenAI's MultiHeadAttention form) gets them from the attention
        mask (the positions of the new tokens among the mask's ones)."""
        return super()._step(entry, decoder_feeds(feeds, self._input_names(entry)), state)

    def prefill(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if self._bound is not None:
            return self._step(self.step_entries[0], feeds, self._bound.initial())
        return super().prefill(feeds)

    def generate(self, prompt_ids: Sequence[int], new_tokens: int, *, eos: Collection[int] = (),
                 context: int | None = None, logits: bool = False, timed: bool = False) -> Generated:
        """Greedy decoding as :meth:`RuntimeBackend.generate` says, in ONNX Runtime GenAI's generator where the
        artifact can run there (:attr:`generation_loop` names the loop), else in edgecompress's prefill/step loop with
        the cache IO-bound (:class:`BoundCache`)."""
        limit = max(0, new_tokens if context is None else min(new_tokens, context - len(prompt_ids)))
        span = len(prompt_ids) + limit + 1  # the last token fed back too
        longest = (self._genai_config() or {}).get("model", {}).get("context_length") or span
        # the generator holds at most the model's context; the last token's step logits need one position more
        if self.genai_version and (span <= longest or not logits):
            return self._genai_generate(list(prompt_ids), limit, set(eos), min(span, longest), logits, timed)
        first, then = self.step_entries
        if first != then:  # a prefill graph, then a decode graph: the cache goes between two sessions as numpy
            return super().generate(prompt_ids, new_tokens, eos=eos, context=context, logits=logits, timed=timed)
        shares = self._shares_buffer()
        self._bound = BoundCache(self.session_for(then), self._require_state(), span if shares else None)
        try:
            return super().generate(prompt_ids, new_tokens, eos=eos, context=context, logits=logits, timed=timed)
        finally:
            self._bound = None

    # -- ONNX Runtime GenAI's loop -------------------------------------------------------------------------------
    def genai_model(self) -> Any:
        """ONNX Runtime GenAI's model of the artifact (loaded once), its decoder session given this adapter's
        settings (:func:`genai_overlay`; the artifact's genai_config.json is not changed) and provider, and no end
        token of its own: the generator would stop there by itself (the token not even kept), where :meth:`generate`
        stops at its caller's ``eos`` only (a timed run gives none: it makes every token asked for)."""
        if self._genai_model is None:
            import onnxruntime_genai as og

            config = og.Config(str(self.artifact.path))
            config.clear_providers()
            if self.settings.provider == CUDA:
                config.append_provider("cuda")
                for key, value in provider_options(self.settings.options).items():
                    config.set_provider_option("cuda", key, value)
            entries = list(self.settings.options.get("session_config") or {})
            overlay = genai_overlay(self._session_options, entries, self.artifact.manifest.model_file)
            overlay["model"]["eos_token_id"] = -1  # no token has it (a number replaces a list; a list would be merged)
            config.overlay(json.dumps(overlay))
            self._genai_model = og.Model(config)
        return self._genai_model

    def _genai_generate(self, prompt: list[int], limit: int, eos: set[int], max_length: int, logits: bool,
                        timed: bool) -> Generated:
        """:meth:`generate` in ``og.Generator`` (``limit`` tokens at most, the generator ``max_length`` long): the
        prompt appended (the prefill), then ``generate_next_token`` per token, arg-max (``do_sample`` off, no
        penalties). Each token's seconds count from the previous token (the first: from the generator's creation,
        which allocates its cache), the og calls' share its native seconds. The stop tokens are the caller's ``eos`` alone (:meth:`genai_model` gives the generator none of its own).
        ``logits``: each made token's step logits are read with ``get_logits`` (which runs the model on the pending
        token); timed runs leave the prompt's logits out."""
        import onnxruntime_genai as og

        model = self.genai_model()
        limit = min(limit, max_length - len(prompt))  # a generator at its max_length makes no more
        tokens: list[int] = []
        step_logits: list[np.ndarray] = []
        seconds: list[float] = []
        native: list[float] = []
        mark = [time.perf_counter(), self.native_seconds]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, min_length=0, do_sample=False, num_beams=1,
                                  repetition_penalty=1.0)
        gen = self.native(og.Generator, model, params)
        self.native(gen.append_tokens, prompt)
        prompt_logits = None if timed else np.array(gen.get_output("logits")[0], dtype=np.float32)
        while len(tokens) < limit:
            self.native(gen.generate_next_token)
            tokens.append(int(self.native(gen.get_next_tokens)[0]))
            if timed:
                now = time.perf_counter()
                seconds.append(now - mark[0])
                native.append(self.native_seconds - mark[1])
                mark[:] = [now, self.native_seconds]
            if logits:  # get_logits runs the model on the pending token (the one just made)
                step_logits.append(np.array(self.native(gen.get_logits)[0, -1], dtype=np.float32))
            if tokens[-1] in eos:
                break
        return Generated(prompt_logits, tokens, step_logits, tuple(seconds), tuple(native))

    def synchronize(self) -> None:
        """Nothing to wait for: ``InferenceSession.run`` returns host outputs after the device finished."""

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("onnxruntime")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        # a session that waits is not opened to be described: the provider it will take
        main = self._sessions.get(self.main)
        d["providers"] = main.get_providers() if main is not None else [self.settings.provider]
        if self.genai_version:
            d["genai"] = self.genai_version
        opts = provider_options(self.settings.options)
        if opts:
            d["provider_options"] = opts
        return d

    def close(self) -> None:
        self._sessions, self._closed = {}, True
        self._genai_model = None
