"""The common runtime interface and the registry of adapters.

An adapter loads an artifact with profile settings (threads, provider, options), runs a batch of
encoded inputs, and describes itself. Concrete adapters are imported lazily by import string, so
``import compress.runtimes`` pulls in no runtime.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from compress._optional import is_available, require
from compress.artifact import Artifact, Format
from compress.artifact_entries import Entry, Role, state_input_of
from compress.data.tokenization import encoder_for
from compress.device.feeds import TextFeeds
from compress.device.shipped import StreamCalls, first_subtokens, pool, token_feeds
from compress.errors import ConfigError
from compress.formats import FORMATS
from compress.tasks.embeddings import pooling_of
from compress.tasks.generation import Generated

# runtime name -> "module:Class". New runtimes (openvino, tensorrt) register here; the runtime a format runs in when a
# profile or the user names none is that format's entry in compress.formats.FORMATS.
RUNTIMES: dict[str, str] = {
    "torch": "compress.runtimes.torch_backend:TorchBackend",
    "onnxruntime": "compress.runtimes.ort_backend:OrtBackend",
    "openvino": "compress.runtimes.openvino_backend:OpenVINOBackend",
    "tensorrt": "compress.runtimes.tensorrt_backend:TensorRTBackend",
    "executorch": "compress.runtimes.executorch_backend:ExecuTorchBackend",
    "litert": "compress.runtimes.litert_backend:LiteRTBackend",
    "coreml": "compress.runtimes.coreml_backend:CoreMLBackend",
    "llamacpp": "compress.runtimes.llamacpp_backend:LlamaCppBackend",
}


@dataclass(frozen=True)
class StatePair:
    """One piece of state a stateful step feeds back: the graph input that takes it, the output that returns its
    next value, and its initial shape and dtype (a KV cache's past starts with 0 positions, a recurrent state with
    zeros of its full size)."""

    input: str
    output: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def initial(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=self.dtype)

    @classmethod
    def of(cls, tensor: Any, output: str, sizes: dict[str, int] | None = None) -> StatePair:
        """The pair of the input ``tensor`` (a :class:`~compress.artifact_entries.TensorSpec`) and ``output``: a symbolic
        dimension of the initial shape is ``sizes[name]`` when given, else 1 for a batch axis and 0 for any other (a
        past that grows from nothing)."""
        sizes = sizes or {}
        shape = tuple(d if isinstance(d, int) and d >= 0 else
                      sizes.get(str(d), 1 if "batch" in str(d).lower() else 0) for d in tensor.shape)
        return cls(tensor.name, output, shape, tensor.dtype)


@dataclass(frozen=True)
class StateSpec:
    """The state a runtime feeds back between steps, one :class:`StatePair` per input/output pair.

    Given (``StateSpec((StatePair(...), ...))``) or read from a manifest's tensors (:meth:`from_tensors`)."""

    pairs: tuple[StatePair, ...]

    @property
    def inputs(self) -> list[str]:
        return [p.input for p in self.pairs]

    @property
    def outputs(self) -> list[str]:
        return [p.output for p in self.pairs]

    def initial(self) -> dict[str, np.ndarray]:
        """The state before the first step, by input name."""
        return {p.input: p.initial() for p in self.pairs}

    def split(self, outputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """A step's outputs as (the outputs that are not state, the next state by input name)."""
        state = {p.input: outputs[p.output] for p in self.pairs}
        rest = {k: v for k, v in outputs.items() if k not in set(self.outputs)}
        return rest, state

    @classmethod
    def from_tensors(cls, inputs: Sequence[Any], outputs: Sequence[Any],
                     sizes: dict[str, int] | None = None) -> StateSpec | None:
        """The pairs among a graph's tensors (:class:`~compress.artifact_entries.TensorSpec`: name, dtype, shape) whose
        output renamed (``present.N.key`` -> ``past_key_values.N.key``, ``stateN`` -> ``state``, ``x_out`` ->
        ``x_in`` or ``x``) is an input; None when there are none. A symbolic dimension of the initial shape is
        ``sizes[name]`` when given, else 1 for a batch axis and 0 for any other (a past that grows from nothing)."""
        sizes = sizes or {}
        by_name = {t.name: t for t in inputs}
        pairs = []
        for out in outputs:
            name = state_input_of(out.name, by_name)
            if name is not None:
                pairs.append(StatePair.of(by_name[name], out.name, sizes))
        return cls(tuple(pairs)) if pairs else None


def entry_state(entry: Entry) -> StateSpec | None:
    """The state an entry point feeds back between its calls: the pairs its manifest entry declares (``state``: output
    -> input, the initial shape and dtype the input's, as :meth:`StateSpec.from_tensors` makes them), else those its
    tensors' names say; None when there are none."""
    if not entry.state:
        return StateSpec.from_tensors(entry.inputs, entry.outputs)
    takes = {t.name: t for t in entry.inputs}
    returns = {t.name for t in entry.outputs}
    bad = next(((o, i) for o, i in entry.state.items() if o not in returns or i not in takes), None)
    if bad is not None:
        raise ConfigError(f"the entry {entry.role}'s state {bad[0]} -> {bad[1]} is not an output -> input of it",
                          hint="state maps an output of the entry to the input it feeds: {present.0.key: "
                          "past_key_values.0.key}")
    return StateSpec(tuple(StatePair.of(takes[name], out) for out, name in entry.state.items()))


#: the entry a stateful step's first call and each next call run, by the main entry's role: one graph for both; the
#: decoder (the encoder called once before it, :meth:`RuntimeBackend.encoder_outputs`); a prefill graph, then a decode
STEP_ENTRIES: dict[Role, tuple[Role, Role]] = {
    Role.model: (Role.model, Role.model),
    Role.encoder: (Role.decoder, Role.decoder),
    Role.prefill: (Role.prefill, Role.decode),
}


@dataclass
class RuntimeSettings:
    """How to run: threads (None = runtime default), provider/device, runtime-specific options."""

    threads: int | None = None
    provider: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class RuntimeBackend(ABC):
    """Load an artifact and run it. Subclasses implement ``_load``, :meth:`call` (the one way in: one call of one of
    the artifact's entry points) and ``version``; ``run``, ``predict``, ``run_stream``, ``prefill``/``step`` and
    ``generate`` are built on :meth:`call` here."""

    name: ClassVar[str]
    module: ClassVar[str]  # the Python module this adapter needs
    formats: ClassVar[frozenset[Format]]
    declared_state: StateSpec | None = None  # the state fed back between steps (see state_spec)
    #: the loop a generator's tokens are made in here, as a report names it: edgecompress's own (:meth:`generate` on
    #: :meth:`run_steps`: a call per token, numpy feeds) unless the adapter runs its runtime's own loop
    generation_loop: ClassVar[str] = "edgecompress run_steps (prefill, then one runtime call per token; numpy feeds)"
    #: whether a step of that loop copies the whole KV cache (state fed back as fresh arrays each call): the report's
    #: bytes moved per token count it
    copies_cache: ClassVar[bool] = True
    native_seconds: float = 0.0  # seconds spent in the runtime's own calls so far (see native)
    #: whether :meth:`call` returns every output the entry names, by name, dtypes as the graph returns them: what a
    #: state fed back between calls needs (a stream, a KV cache fed back); an adapter that casts or drops outputs says no
    named_outputs: ClassVar[bool] = True

    def __init__(self, artifact: Artifact, settings: RuntimeSettings | None = None) -> None:
        if artifact.format not in self.formats:
            raise ConfigError(
                f"runtime {self.name} cannot run {artifact.format} artifacts",
                hint=f"use one of: {', '.join(r for r, f in _FORMATS_BY_RUNTIME().items() if artifact.format in f)}",
            )
        require(self.module, f"the {self.name} runtime")
        self.artifact = artifact
        # a copy: adapters resolve defaults into it (provider, device) without touching the caller's object
        self.settings = dataclasses.replace(settings) if settings else RuntimeSettings()
        self.settings.options = dict(self.settings.options)
        self._load()
        self.encoder = self._make_encoder()

    # -- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Create the session/model from ``self.artifact`` honouring ``self.settings``."""

    @abstractmethod
    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One call of the entry point ``entry`` (a role among the manifest's entries: ``model``; ``encoder``,
        ``decoder``; ``prefill``, ``decode``): the ``outputs`` named (None: every output) by name, as the runtime
        returns them (dtypes kept where :attr:`named_outputs`). Feeds the entry does not take are left out. An entry
        the artifact lacks, or one the runtime cannot run, is refused in one line (:meth:`entry`)."""

    def entry(self, role: str) -> Entry:
        """The manifest's entry ``role``; one it lacks is refused in one line naming those it has."""
        return self.artifact.manifest.entry(role)

    @property
    def main(self) -> str:
        """The main entry's role: what :meth:`run` and :meth:`predict` call (``model``, ``encoder`` or ``prefill``)."""
        return str(self.artifact.manifest.main.role)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch through the main entry; return its primary output (logits or last hidden state, the
        manifest's first output; the runtime's first where it names them otherwise) as float32 numpy."""
        outs = self.artifact.manifest.outputs
        primary = outs[0].name if outs else None
        out = self.call(self.main, inputs, None if primary is None else [primary])
        return np.asarray(out[primary] if primary in out else next(iter(out.values())), dtype=np.float32)

    def run_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Every output of one batch through the main entry by name (float32), for per-output fidelity."""
        return {name: np.asarray(v, dtype=np.float32) for name, v in self.call(self.main, inputs).items()}

    def outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """:meth:`run_outputs` on a batch of any size (in slices of a fixed batch, as :meth:`predict` runs)."""
        parts = self._in_slices(self.run_outputs, inputs)
        if len(parts) == 1 or parts[0] is None:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    @classmethod
    @abstractmethod
    def version(cls) -> str | None:
        """Version string of the underlying runtime."""

    @classmethod
    def runs_here(cls) -> bool:
        """Whether this runtime can run on this machine's operating system at all (Core ML: Apple's only); where it
        cannot, validate estimates what it would measure."""
        return True

    @classmethod  # noqa: B027 - optional: most need no check
    def check_settings(cls, settings: RuntimeSettings) -> None:
        """Fail fast (ConfigError) when ``settings`` name a device/provider this machine lacks."""

    @classmethod
    def check_artifact(cls, artifact: Artifact, settings: RuntimeSettings) -> None:
        """Fail fast when ``artifact`` cannot run here with ``settings`` (device, provider, engine target)."""
        cls.check_settings(settings)

    # -- shared ---------------------------------------------------------------------------------
    def _make_encoder(self) -> TextFeeds:
        encoder = encoder_for(self.artifact)
        calls = self.stream_calls
        return encoder if calls is None else FirstCallFeeds(encoder, calls)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.artifact.manifest.inputs]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph is fixed to (its first input's first dimension is a number), else None."""
        inputs = self.artifact.manifest.inputs
        first = inputs[0].shape[0] if inputs and inputs[0].shape else None
        return first if isinstance(first, int) and first > 0 else None

    def _in_slices(self, run, inputs: dict[str, np.ndarray]) -> list[Any]:
        """``run`` on ``inputs`` in slices of the graph's fixed batch size (many exported files take exactly one
        sample); one call when the graph's batch is dynamic or the batch fits."""
        fixed = self.fixed_batch
        rows = len(next(iter(inputs.values()))) if inputs else 0
        if fixed is None or rows <= fixed or rows % fixed:
            return [run(inputs)]
        return [run({k: v[i:i + fixed] for k, v in inputs.items()}) for i in range(0, rows, fixed)]

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run and post-process: logits for classifiers, pooled sentence embeddings for encoders. A graph fixed to
        a batch size runs a larger batch in slices of that size."""
        post = self.artifact.manifest.postprocess
        if getattr(post, "scores_output", None):  # an ssd detector's class scores are a second output
            from compress.tasks.detection import join_scores

            return join_scores(post, self.outputs(inputs), self.artifact.manifest.outputs[0].name)
        pooling, normalize = pooling_of(post)
        parts = self._in_slices(self.run, inputs)
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if pooling:
            return pool(out, inputs["attention_mask"], pooling, normalize)
        return out

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, pad_to: int | None = None):
        return self.encoder.encode(texts, pairs, pad_to)

    def predict_text(self, texts: Sequence[Any], pairs: Sequence[str] | None = None) -> np.ndarray:
        """The outputs for raw inputs (texts, images, arrays); for token classification the scores of each word
        (:func:`compress.device.shipped.first_subtokens`; texts are lists of words, or strings split at white
        space)."""
        if getattr(self.artifact.manifest.preprocess, "words", False):
            feeds, word_ids = self.encoder.encode_words(texts)
            return first_subtokens(self.predict(feeds), word_ids)
        return self.predict(self.encode(texts, pairs))

    def synchronize(self) -> None:  # noqa: B027 - optional: host runtimes are synchronous
        """Wait for asynchronous device work (GPU runtimes override); host runtimes are synchronous.

        Latency on a GPU is timed on the host (``compress.host.measure.measure_interleaved``) around
        ``run()`` followed by ``synchronize()``: the timer stops only after the device finished, so it
        times completed work (plus the host<->device copies a caller pays anyway), never an enqueue.
        """

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.name,
            "version": self.version(),
            "provider": self.settings.provider,
            "threads": self.settings.threads,
            "format": str(self.artifact.format),
            "precision": str(self.artifact.precision),
        }

    def close(self) -> None:  # noqa: B027 - optional: most sessions free themselves
        """Release the session/model."""

    # -- a stateful step (a KV cache, a recurrent state fed back) ----------------------------------
    @property
    def step_entries(self) -> tuple[str, str]:
        """The entries a stateful step's first call and each next call run (:data:`STEP_ENTRIES`)."""
        first, then = STEP_ENTRIES[self.artifact.manifest.main.role]
        return str(first), str(then)

    @property
    def state_spec(self) -> StateSpec | None:
        """The state this model feeds back between steps: given (``backend.declared_state = StateSpec(...)``), else
        a streaming model's (the manifest's ``stream.state``), else the step entry's (:func:`entry_state`: its
        declared ``state``, or read from its tensors); None for a model of one forward pass."""
        if self.declared_state is None:
            calls = self.stream_calls
            if calls is not None:
                initial = calls.initial_state()
                self.declared_state = StateSpec(tuple(StatePair(i, o, initial[i].shape, str(initial[i].dtype))
                                                      for o, i in calls.state.items()))
            else:
                self.declared_state = entry_state(self.entry(self.step_entries[1])) or StateSpec(())
        return self.declared_state if self.declared_state.pairs else None

    @property
    def stream_calls(self) -> StreamCalls | None:
        """A streaming model's calls (:class:`~compress.device.shipped.StreamCalls`, from the manifest's ``stream``);
        None for any other."""
        return StreamCalls.from_manifest(self.artifact.manifest.model_dump(mode="json"))

    def run_stream(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """One sequence (a ``.wav``'s samples, an ``.npz``'s rows joined) through a streaming model call by call, the
        state carried: every output that is not state, ``[calls, ...]``."""
        calls = self.stream_calls
        if calls is None:
            raise ConfigError(f"{self.artifact.path} is not a streaming model (its manifest has no stream)",
                              hint="describe the stream in model.yaml's stream: block and adopt the file again")
        if not self.named_outputs:
            raise ConfigError(f"runtime {self.name} cannot run a streaming model (no call returns its state)",
                              hint="run it in onnxruntime or openvino")
        main = self.main
        return calls.run(lambda feeds: self.call(main, feeds), values)

    @property
    def stateful(self) -> bool:
        """Whether this runtime runs the model as a stateful step (:meth:`prefill` / :meth:`step`)."""
        return self.state_spec is not None and self.named_outputs

    def prefill(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The first step (a prompt, a stream's first chunk) from the initial state, through the first step entry
        (``model``, ``decoder`` or ``prefill``): (outputs, state)."""
        spec = self._require_state()
        return self._step(self.step_entries[0], feeds, spec.initial())

    def step(self, feeds: dict[str, np.ndarray],
             state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One step with ``state`` (by input name) fed in, through the step entry (``model``, ``decoder`` or
        ``decode``): (the outputs that are not state, the next state)."""
        self._require_state()
        return self._step(self.step_entries[1], feeds, state)

    def _step(self, entry: str, feeds: dict[str, np.ndarray],
              state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return self._require_state().split(self.call(entry, {**feeds, **state}))

    def encoder_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """An encoder + decoder model's encoder, called once on ``feeds``: the outputs the decoder takes (an input of
        the decoder's entry named as the encoder's output), which every decoder call is then fed; {} for a model
        without an encoder entry."""
        if Role.encoder not in self.artifact.manifest.roles:
            return {}
        takes = {t.name for t in self.entry(Role.decoder).inputs}
        return {k: v for k, v in self.call(Role.encoder, feeds).items() if k in takes}

    def run_steps(self, feeds: dict[str, np.ndarray], steps: int,
                  next_feeds: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray] | None], *,
                  timed: bool = False) -> tuple[list[dict[str, np.ndarray]], list[float]]:
        """The one loop through a stateful model's state (a KV cache, a recurrent state): :meth:`prefill` on ``feeds``,
        then up to ``steps`` :meth:`step` calls, each fed ``next_feeds(outputs, feeds)`` of the call before (None:
        stop there). Returns every call's outputs and, ``timed``, each call's seconds (the call and
        :meth:`synchronize`; making the next feeds is not timed). :meth:`generate` and the timed generation
        (:class:`compress.host.measure.Generation`) run on it."""
        seen, seconds = [], []
        t0 = time.perf_counter()
        outputs, state = self.prefill(feeds)
        if timed:
            self.synchronize()
            seconds.append(time.perf_counter() - t0)
        seen.append(outputs)
        for _ in range(steps):
            feeds = next_feeds(outputs, feeds)
            if feeds is None:
                break
            t0 = time.perf_counter()
            outputs, state = self.step(feeds, state)
            if timed:
                self.synchronize()
                seconds.append(time.perf_counter() - t0)
            seen.append(outputs)
        return seen, seconds

    def generate(self, prompt_ids: Sequence[int], new_tokens: int, *, eos: Collection[int] = (),
                 context: int | None = None, logits: bool = False, timed: bool = False) -> Generated:
        """Greedy decoding of ``prompt_ids`` (batch 1) through the cache (:meth:`run_steps`): each token the arg-max
        of the last logits. An encoder + decoder model's encoder is called once on the prompt's feeds and its outputs
        fed to every decoder call (:meth:`encoder_outputs`). It stops after ``new_tokens`` tokens, an ``eos`` token (kept) or the ``context``'s end.
        ``logits``: also each made token's step logits (every token is then fed back, the last one too). ``timed``:
        the seconds of each token made and the runtime's share of them (:class:`Generated`; the runtime's share is
        what the adapter's calls spent in :meth:`native`). A backend whose runtime has its own generation loop
        overrides it (and names it in :attr:`generation_loop`): what a device runs is what gets timed.
        """
        prompt = list(prompt_ids)
        tokens: list[int] = []
        limit = new_tokens if context is None else min(new_tokens, context - len(prompt))
        seconds: list[float] = []
        native: list[float] = []
        mark = [time.perf_counter(), self.native_seconds]

        def pick(out, _feeds):
            if tokens and (tokens[-1] in eos or len(tokens) == new_tokens):  # the last token was fed back: done
                return None
            nxt = int(np.argmax(out["logits"][0, -1]))
            tokens.append(nxt)
            if timed:
                self.synchronize()
                now = time.perf_counter()
                seconds.append(now - mark[0])
                native.append(self.native_seconds - mark[1])
                mark[:] = [now, self.native_seconds]
            if (nxt in eos or len(tokens) == new_tokens) and not logits:
                return None
            return {**token_feeds([[nxt]], len(prompt) + len(tokens)), **encoded}

        encoded = self.encoder_outputs(token_feeds([prompt], len(prompt)))  # {} but for an encoder + decoder
        seen, _ = self.run_steps({**token_feeds([prompt], len(prompt)), **encoded}, max(limit, 0), pick)
        return Generated(seen[0]["logits"][0], tokens, [o["logits"][0, -1] for o in seen[1:]] if logits else [],
                         tuple(seconds), tuple(native))

    def native(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``, the runtime's own work (a session's run, a request's infer, a context's eval),
        its seconds added to :attr:`native_seconds`: a timed :meth:`generate` reports the rest of each token's time
        as the host's overhead (Python, feeds, copies). Adapters route their runtime call through it."""
        t0 = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.native_seconds += time.perf_counter() - t0

    def _require_state(self) -> StateSpec:
        spec = self.state_spec
        if spec is None or not self.stateful:
            raise ConfigError(
                f"runtime {self.name} does not run {self.artifact.path} as a stateful step",
                hint="a stateful model names state inputs and outputs fed back (present.N.key -> "
                "past_key_values.N.key, stateN -> state); give others as backend.declared_state = StateSpec(...)",
            )
        return spec


class FirstCallFeeds:
    """A streaming model's feeds for one call from the initial state (a parity sample, a timed batch, the cold-start
    probe): the chunks' feeds with the constants and a zero state added (:meth:`StreamCalls.first_call`)."""

    def __init__(self, encoder: Any, calls: StreamCalls) -> None:
        self.encoder, self.calls = encoder, calls

    def encode(self, items, pairs=None, pad_to=None):
        return self.calls.first_call(self.encoder.encode(items, pairs, pad_to))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)


def _FORMATS_BY_RUNTIME() -> dict[str, frozenset[Format]]:
    out = {}
    for name in RUNTIMES:
        try:
            out[name] = runtime_class(name).formats
        except Exception:  # noqa: BLE001 - an unimportable adapter simply is not listed
            continue
    return out


def runtime_class(name: str) -> type[RuntimeBackend]:
    """The adapter class registered for ``name`` (imports only that adapter module)."""
    if name not in RUNTIMES:
        raise ConfigError(
            f"unknown runtime {name!r}", hint=f"available runtimes: {', '.join(sorted(RUNTIMES))}"
        )
    module, _, cls = RUNTIMES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def available_runtimes() -> dict[str, bool]:
    """Registered runtimes and whether their Python module is installed."""
    return {name: is_available(runtime_class(name).module) for name in RUNTIMES}


def load_runtime(
    artifact: Artifact, runtime: str | None = None, settings: RuntimeSettings | None = None
) -> RuntimeBackend:
    """Load ``artifact`` in ``runtime`` (default: the runtime of its format's :data:`~compress.formats.FORMATS` entry)."""
    name = runtime or FORMATS[artifact.format].runtime
    if name not in RUNTIMES:
        raise ConfigError(
            f"no runtime adapter {name!r} for {artifact.format} artifacts in this version",
            hint=f"available runtimes: {', '.join(sorted(RUNTIMES))}",
        )
    return runtime_class(name)(artifact, settings)
