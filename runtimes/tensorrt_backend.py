"""TensorRT engine runtime: runs a ``tensorrt`` artifact on an NVIDIA GPU: a serialized engine
(``model.plan``, from ``export --format tensorrt``) or a Torch-TensorRT program (``model.pt2``, from
``--via torch-tensorrt``: an ExportedProgram with the engines embedded, run by
:class:`compress.stages.export.torch_tensorrt.ProgramRunner`).

An engine runs only where it was built: the same TensorRT version and the same GPU compute
capability. :func:`engine_compatibility` compares the manifest's ``target`` (written by
``edgecompress export --format tensorrt``) with this machine and returns the reason for a refusal; it
is a pure function, testable without TensorRT or a GPU.

Buffers are torch CUDA tensors (no pycuda); each call sets the input shapes (within the engine's
optimisation profile), binds tensor addresses and enqueues with ``execute_async_v3`` on a torch CUDA
stream. :meth:`TensorRTBackend.run` returns after copying the output to the host, which waits for that
stream; :meth:`synchronize` syncs the stream explicitly, so a host timer around ``run()`` +
``synchronize()`` (``compress.host.measure.measure_interleaved``) times finished device work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.errors import ArtifactError, ConfigError
from compress.runtimes.base import RuntimeBackend, RuntimeSettings
from compress.runtimes.torch_tensorrt_program import check_in_range

_REBUILD = "rebuild it here with `edgecompress export ARTIFACT --format tensorrt --out DIR`"


def _version_key(version: str | None) -> tuple[int, ...] | None:
    """(major, minor, patch) of a TensorRT version string; an engine needs all three to match."""
    if not version:
        return None
    nums = re.findall(r"\d+", str(version))
    return tuple(int(n) for n in nums[:3]) if nums else None


def _capability_key(value: Any) -> tuple[int, int] | None:
    """'8.6', '8_6', (8, 6) or [8, 6] -> (8, 6); None when absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            return int(value[0]), int(value[1])
        except (TypeError, ValueError):
            return None
    m = re.fullmatch(r"\s*(\d+)\s*[._]\s*(\d+)\s*", str(value))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _cap_str(cap: tuple[int, int] | None) -> str:
    return f"{cap[0]}.{cap[1]}" if cap else "unknown compute capability"


def engine_compatibility(
    target: dict[str, Any], tensorrt_version: str | None, capability: tuple[int, int] | str | None,
    gpu_name: str | None = None,
) -> str | None:
    """Why an engine built for ``target`` cannot run here (TensorRT ``tensorrt_version``, GPU ``capability``),
    or None when it can.

    ``target`` is the manifest's: ``tensorrt_version``, ``compute_capability`` ('8.6') and ``gpu_name``.
    Versions compare on major.minor.patch (TensorRT deserialises only engines of its own version);
    compute capabilities must be equal (an engine's kernels are compiled for one). A target lacking
    either fact is refused: nothing says the engine fits this machine.
    """
    built_v = target.get("tensorrt_version")
    built_cap = _capability_key(target.get("compute_capability"))
    built_gpu = target.get("gpu_name")
    here_cap = _capability_key(capability)
    if not built_v or built_cap is None:
        missing = [k for k, v in (("tensorrt_version", built_v), ("compute_capability", built_cap)) if not v]
        return (f"the engine's manifest does not record {' and '.join(missing)} (target: {target or {}}); "
                f"{_REBUILD}")
    version_ok = _version_key(built_v) == _version_key(tensorrt_version)
    cap_ok = built_cap == here_cap
    if version_ok and cap_ok:
        return None
    built = f"engine built with TensorRT {built_v} for compute capability {_cap_str(built_cap)}"
    if built_gpu:
        built += f" ({built_gpu})"
    here = f"this machine has TensorRT {tensorrt_version or 'not installed'} / "
    here += _cap_str(here_cap) if here_cap else "no CUDA GPU"
    if gpu_name:
        here += f" ({gpu_name})"
    return f"{built}; {here}: {_REBUILD}"


def cuda_device(provider: str | None) -> str:
    """The torch device a GPU runtime uses: 'cuda' / 'cuda:N' (None means cuda:0)."""
    value = (provider or "cuda:0").strip().lower()
    if value == "cuda":
        value = "cuda:0"
    if not re.fullmatch(r"cuda:\d+", value):
        raise ConfigError(f"the tensorrt runtime runs on a CUDA device, got provider {provider!r}",
                          hint="use provider: cuda or cuda:N")
    return value


def check_cuda(device: str, purpose: str) -> None:
    """ConfigError (one line) unless torch sees the CUDA device ``device`` ('cuda:N')."""
    from compress._optional import require

    torch = require("torch", purpose)
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise ConfigError(
            f"{purpose} needs CUDA device {device}, but torch {torch.__version__} ({build}) sees no CUDA GPU here",
            hint="run on a machine with an NVIDIA GPU and a CUDA build of torch, or use a CPU profile",
        )
    count = torch.cuda.device_count()
    if index >= count:
        names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(count))
        raise ConfigError(f"{purpose} needs CUDA device {device}, but this machine has {count}: {names}",
                          hint="pick one of those in the profile's runtime.provider")


class TensorRTBackend(RuntimeBackend):
    name: ClassVar[str] = "tensorrt"
    module: ClassVar[str] = "tensorrt"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.tensorrt})
    #: outputs come back float32 (a Torch-TensorRT program's primary only): no state fed back by name
    named_outputs: ClassVar[bool] = False

    @classmethod
    def check_settings(cls, settings: RuntimeSettings) -> None:
        from compress._optional import require

        require(cls.module, "the tensorrt runtime")
        check_cuda(cuda_device(settings.provider), "the tensorrt runtime")

    @staticmethod
    def is_program(artifact) -> bool:
        """A Torch-TensorRT program (``model.pt2``) rather than a serialized engine."""
        return str(artifact.manifest.model_file).endswith(".pt2")

    @classmethod
    def check_artifact(cls, artifact, settings: RuntimeSettings) -> None:
        """TensorRT present, the GPU present, and the engine built for this TensorRT and GPU."""
        cls.check_settings(settings)  # a missing tensorrt/GPU is a one-line error before the imports below
        if cls.is_program(artifact):
            from compress._optional import is_available
            from compress.errors import MissingBackendError
            from compress.runtimes.torch_tensorrt_program import install_hint

            if not is_available("torch_tensorrt"):
                raise MissingBackendError(
                    f"{artifact.path} is a Torch-TensorRT program and torch_tensorrt is not installed",
                    hint=f"install it with: {install_hint()}",
                )
        import tensorrt as trt
        import torch

        device = torch.device(cuda_device(settings.provider))
        reason = engine_compatibility(
            artifact.manifest.target, trt.__version__, tuple(torch.cuda.get_device_capability(device)),
            torch.cuda.get_device_name(device),
        )
        if reason:
            raise ConfigError(reason)

    def _load(self) -> None:
        import tensorrt as trt
        import torch

        self.check_artifact(self.artifact, self.settings)
        self.device = torch.device(cuda_device(self.settings.provider))
        self.settings.provider = str(self.device)
        torch.cuda.set_device(self.device)
        self.program = None
        if self.is_program(self.artifact):
            from compress.runtimes.torch_tensorrt_program import ProgramRunner

            self.program = ProgramRunner(self.artifact.model_path, str(self.device),
                                         self.artifact.manifest.target.get("shapes"))
            return
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.artifact.model_path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.artifact.model_path}",
                                hint=f"the file is damaged or not an engine; {_REBUILD}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        for i in range(self.engine.num_io_tensors):
            tname = self.engine.get_tensor_name(i)
            mode = self.engine.get_tensor_mode(tname)
            (self._inputs if mode == trt.TensorIOMode.INPUT else self._outputs).append(tname)
        wanted = self.artifact.manifest.outputs[0].name if self.artifact.manifest.outputs else None
        self._output = wanted if wanted in self._outputs else self._outputs[0]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in self._inputs + self._outputs}
        # optimisation profile 0: (min, opt, max) per input, for a clear error on an out-of-range shape
        self._limits = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)) for n in self._inputs}

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self._limits[name]
        check_in_range(name, shape, lo, hi, "the engine's optimisation profile")

    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One execution of the engine (its one entry, ``model``): the outputs named (a name it lacks read from the
        primary output; None: every output) as float32 on the host, after the device finished. A Torch-TensorRT
        program returns its primary output only. An engine of several entry points is not run here."""
        if str(self.entry(entry).role) != self.main or len(self.artifact.manifest.entries) > 1:
            raise ConfigError(f"the tensorrt runtime runs an engine of one graph, not the entry {entry}",
                              hint="run the model's entries in onnxruntime (its TensorRT execution provider)")
        if self.program is not None:
            primary = self.artifact.manifest.outputs[0].name
            return {primary: self.native(self.program.run, feeds)}
        wanted = {n: n if n in self._outputs else self._output for n in (outputs or self._outputs)}
        return self.native(self._execute, feeds, wanted)

    def _execute(self, inputs: dict[str, np.ndarray], wanted: dict[str, str]) -> dict[str, np.ndarray]:
        """Enqueue the engine on ``inputs``; the outputs ``wanted`` (name asked -> the engine's) copied to the host."""
        import torch

        keep: list[Any] = []  # tensors must outlive the enqueued work
        with torch.cuda.stream(self.stream):
            for name in self._inputs:
                host = inputs[name]
                self._check_shape(name, tuple(host.shape))
                t = torch.from_numpy(np.ascontiguousarray(host)).to(self.device, self._dtypes[name], non_blocking=False)
                keep.append(t)
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            out = {}
            for name in self._outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                t = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
                keep.append(t)
                self.context.set_tensor_address(name, t.data_ptr())
                out[name] = t
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            # .cpu() waits for the stream: a call returns finished results
            return {asked: out[name].float().cpu().numpy() for asked, name in wanted.items()}

    def synchronize(self) -> None:
        if self.program is not None:
            self.program.synchronize()
        else:
            self.stream.synchronize()

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("tensorrt")

    def describe(self) -> dict[str, Any]:
        import torch

        d = super().describe()
        d.update(device=str(self.device), gpu=torch.cuda.get_device_name(self.device),
                 compute_capability=_cap_str(torch.cuda.get_device_capability(self.device)),
                 engine_target=dict(self.artifact.manifest.target))
        return d

    def close(self) -> None:
        self.context = None
        self.engine = None
        self.program = None


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {
        trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    for attr, tdt in (("int64", torch.int64), ("bf16", torch.bfloat16), ("uint8", torch.uint8)):
        if hasattr(trt, attr):
            table[getattr(trt, attr)] = tdt
    if dtype not in table:
        raise ConfigError(f"unsupported TensorRT tensor type {dtype}")
    return table[dtype]
