"""PyTorch eager runtime: runs a teacher checkpoint or a pytorch-format artifact on the CPU or a CUDA GPU.

Settings: ``provider`` ``cpu`` (default), ``cuda`` or ``cuda:N``; ``options``:

- ``dtype``: ``fp32`` (default), ``fp16`` or ``bf16`` — the model's weights and activations are cast;
  token ids and masks stay int64. ``fp16`` needs CUDA (PyTorch's CPU FP16 kernels are slow and
  incomplete, so it is refused on CPU); ``bf16`` runs on both.
- ``compile``: ``true`` wraps the model in ``torch.compile`` (the first calls compile: warm up first).
- ``allow_pickle`` / ``trust_remote_code``: loading opt-ins for the checkpoint.

On CUDA, :meth:`TorchBackend.run` copies the output to the host (which waits for it) and
:meth:`TorchBackend.synchronize` calls ``torch.cuda.synchronize``, so host timing around
``run()`` + ``synchronize()`` times finished GPU work.

A causal LM (task text-generation) runs as a stateful step: :meth:`TorchBackend.prefill` takes the prompt,
:meth:`TorchBackend.step` one token, the state is transformers' own KV cache (``past_key_values``, kept on the device
and opaque to the caller); both return ``logits`` [1, S, V] as float32 on the host, as the ONNX Runtime and OpenVINO
backends do, so a time to first token includes bringing the prompt's logits back.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.errors import ConfigError
from compress.runtimes.base import RuntimeBackend, RuntimeSettings

DTYPES = ("fp32", "fp16", "bf16")


def torch_device(provider: str | None) -> str:
    """'cpu', 'cuda:N' from a profile's provider (None/''/'cpu' -> cpu, 'cuda' -> cuda:0)."""
    value = (provider or "cpu").strip().lower()
    if value in ("cpuexecutionprovider",):  # inherited from an ONNX Runtime CPU parent profile
        return "cpu"
    if value == "cuda":
        return "cuda:0"
    if value == "cpu" or re.fullmatch(r"cuda:\d+", value):
        return value
    raise ConfigError(f"the torch runtime cannot run on provider {provider!r}", hint="use cpu, cuda or cuda:N")


def torch_dtype_name(options: dict[str, Any]) -> str:
    value = str(options.get("dtype") or "fp32").strip().lower()
    value = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(value, value)
    if value not in DTYPES:
        raise ConfigError(f"torch runtime option dtype={options.get('dtype')!r} is not one of {', '.join(DTYPES)}")
    return value


class TorchBackend(RuntimeBackend):
    name: ClassVar[str] = "torch"
    module: ClassVar[str] = "torch"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.pytorch})
    generation_loop: ClassVar[str] = "PyTorch (transformers' KV cache, a forward per token)"
    copies_cache: ClassVar[bool] = False
    #: a model's forward returns its primary output only (a causal LM's cache is transformers' object, kept by
    #: :meth:`prefill` / :meth:`step`): no state fed back by name
    named_outputs: ClassVar[bool] = False

    teacher: Any = None

    @classmethod
    def from_teacher(cls, teacher: Any, settings: RuntimeSettings | None = None) -> TorchBackend:
        """Wrap an already loaded :class:`compress.teachers.load.Teacher` (no second load)."""
        self = cls.__new__(cls)
        self.teacher = teacher
        RuntimeBackend.__init__(self, teacher.as_artifact(), settings)
        return self

    @classmethod
    def check_settings(cls, settings: RuntimeSettings) -> None:
        device = torch_device(settings.provider)
        dtype = torch_dtype_name(settings.options)
        if device.startswith("cuda"):
            from compress.runtimes.tensorrt_backend import check_cuda

            check_cuda(device, "the torch runtime")
        elif dtype == "fp16":
            raise ConfigError(
                "torch runtime option dtype=fp16 needs a CUDA device (provider cuda); PyTorch's CPU FP16 is not a "
                "deployment path",
                hint="use dtype bf16 or fp32 on cpu",
            )

    def _load(self) -> None:
        import torch

        self.check_settings(self.settings)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        shared = self.teacher is not None  # a caller's model: never move or cast it in place
        if self.teacher is None:
            from compress.teachers.load import load_teacher

            self.teacher = load_teacher(
                self.artifact.path,
                self.artifact.task,
                allow_pickle=bool(self.settings.options.get("allow_pickle")),
                trust_remote_code=bool(self.settings.options.get("trust_remote_code")),
            )
        self.device = torch.device(torch_device(self.settings.provider))
        self.settings.provider = str(self.device)
        self.dtype_name = torch_dtype_name(self.settings.options)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype_name]
        self.torch_dtype = dtype
        model = self.teacher.model
        if self.device.type != "cpu" or dtype is not torch.float32:
            model = (copy.deepcopy(model) if shared else model).to(device=self.device, dtype=dtype)
            model.eval()
        if self.settings.options.get("compile"):
            model = torch.compile(model)
        self.model = model

    def _make_encoder(self):
        return self.teacher.encoder()

    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One forward of the checkpoint (its one entry, ``model``): its primary output (logits, a last hidden state)
        as float32 on the host, by the manifest's first output's name. A checkpoint of several entry points (an
        encoder and a decoder) is not run here."""
        import torch

        if str(self.entry(entry).role) != self.main:
            raise ConfigError(f"the torch runtime runs a checkpoint's one forward pass, not its entry {entry}",
                              hint="export the model (edgecompress export) and run its entries in onnxruntime")

        def tensor(v: np.ndarray):  # float inputs (pixels) in the model's dtype; ids and masks stay int64
            t = torch.from_numpy(v).to(self.device)
            return t.to(self.torch_dtype) if t.is_floating_point() else t

        with torch.inference_mode():
            out = self.native(self.teacher.call, self.model, {k: tensor(v) for k, v in feeds.items()})
        outs = self.artifact.manifest.outputs
        return {outs[0].name if outs else "output": out.float().cpu().numpy()}  # .cpu() waits for the GPU

    @property
    def stateful(self) -> bool:
        return self._generator or super().stateful

    @property
    def _generator(self) -> bool:
        from compress.tasks import is_generator

        return self.teacher is not None and is_generator(self.teacher)

    def prefill(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Any]:
        """A causal LM's prompt from an empty KV cache: (``logits`` [1, S, V] float32, the cache)."""
        if not self._generator:
            return super().prefill(feeds)
        return self._decode(feeds, None)

    def step(self, feeds: dict[str, np.ndarray], state: Any) -> tuple[dict[str, np.ndarray], Any]:
        """The next token(s) on the cache ``state`` that :meth:`prefill` or the last step returned;
        ``attention_mask`` covers the past and the new tokens."""
        if not self._generator:
            return super().step(feeds, state)
        return self._decode(feeds, state)

    def _decode(self, feeds: dict[str, np.ndarray], past: Any) -> tuple[dict[str, np.ndarray], Any]:
        import torch

        from compress.device.shipped import decoder_tokens

        ids = torch.from_numpy(np.asarray(decoder_tokens(feeds), dtype=np.int64)).to(self.device)
        mask = feeds.get("attention_mask")
        mask = torch.from_numpy(np.asarray(mask, dtype=np.int64)).to(self.device) if mask is not None else None
        with torch.inference_mode():
            out = self.native(self.model, ids, attention_mask=mask, past_key_values=past, use_cache=True)  # ids first
        return {"logits": out.logits.float().cpu().numpy()}, out.past_key_values

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("torch")

    def describe(self) -> dict[str, Any]:
        import torch

        d = super().describe()
        d.update(threads=torch.get_num_threads(), device=str(self.device), dtype=self.dtype_name,
                 compiled=bool(self.settings.options.get("compile")))
        if self.device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.device)
        return d
