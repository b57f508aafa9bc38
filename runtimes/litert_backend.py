"""LiteRT adapter: a LiteRT (TensorFlow Lite) model (``model.tflite``) in LiteRT's interpreter, ``ai-edge-litert``, the
runtime an Android app embeds (its Python build here, XNNPACK on the CPU as on the phone).

Settings: ``threads`` is the interpreter's thread count; there is no provider and no options. A model with a fixed
batch takes that many rows per call (a larger batch runs in slices); a dynamic dimension is resized per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.errors import ConfigError
from compress.runtimes.base import RuntimeBackend


class LiteRTBackend(RuntimeBackend):
    name: ClassVar[str] = "litert"
    module: ClassVar[str] = "ai_edge_litert"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.litert})
    #: outputs come back float32 (a full-integer model's dequantized): no state fed back by name
    named_outputs: ClassVar[bool] = False

    def _load(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(self.artifact.model_path), num_threads=self.settings.threads)
        self.interpreter.allocate_tensors()
        details = self.interpreter.get_input_details()
        names = [t.name for t in self.artifact.manifest.inputs]
        if not {d["name"] for d in details} >= set(names):  # a converted model's inputs are args_0, args_1, ...:
            details = sorted(details, key=lambda d: _arg_index(d["name"]))  # the manifest's names, in order
        else:
            details = sorted(details, key=lambda d: names.index(d["name"]) if d["name"] in names else len(names))
        self._inputs = dict(zip(names, details))
        self._outputs = list(self.interpreter.get_output_details())
        wanted = self.artifact.manifest.outputs[0].name
        self._primary = next((d for d in self._outputs if d["name"] == wanted), self._outputs[0])
        if len(self.artifact.manifest.entries) > 1:
            raise ConfigError(f"the litert runtime runs a model of one graph; {self.artifact.path} has the entries "
                              f"{', '.join(self.artifact.manifest.roles)}", hint="run it in onnxruntime")

    def _fit(self, name: str, value: np.ndarray, shape: tuple) -> np.ndarray:
        """A text input to a model of one fixed sequence length: padded with zeros (masked positions), or cut."""
        if value.ndim == 2 and len(shape) == 2 and shape[1] > 0 and value.shape[1] != shape[1] and \
                value.shape[0] == shape[0]:
            if value.shape[1] > shape[1]:
                return value[:, :shape[1]]
            return np.pad(value, ((0, 0), (0, shape[1] - value.shape[1])))
        return value

    def fitted(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` as the model takes them: its element types (float inputs quantized where a full-integer model
        takes INT8), and a text padded or cut to a fixed length."""
        static = {n: tuple(int(x) for x in d.get("shape_signature", d["shape"])) for n, d in self._inputs.items()}
        out = {}
        for n, d in self._inputs.items():
            value = self._fit(n, inputs[n], static[n]) if -1 not in static[n] else inputs[n]
            scale, zero = d.get("quantization", (0.0, 0))
            if scale and np.issubdtype(np.asarray(value).dtype, np.floating):  # a float tensor into INT8 / UINT8
                info = np.iinfo(d["dtype"])
                value = np.clip(np.round(value / scale + zero), info.min, info.max)
            out[n] = np.ascontiguousarray(value, dtype=d["dtype"])
        return out

    @staticmethod
    def _float(value: np.ndarray, detail: dict) -> np.ndarray:
        """An output as float32: a quantized output (a full-integer model's) dequantized with its scale."""
        scale, zero = detail.get("quantization", (0.0, 0))
        if scale and not np.issubdtype(value.dtype, np.floating):
            return ((value.astype(np.float32) - zero) * scale).astype(np.float32)
        return np.array(value, dtype=np.float32, copy=True)

    def _invoke(self, inputs: dict[str, np.ndarray]) -> None:
        it = self.interpreter
        inputs = self.fitted(inputs)
        resized = False
        current = {d["index"]: tuple(d["shape"]) for d in it.get_input_details()}
        for name, d in self._inputs.items():
            if tuple(inputs[name].shape) != current[d["index"]]:
                it.resize_tensor_input(d["index"], list(inputs[name].shape))
                resized = True
        if resized:
            it.allocate_tensors()
        for name, d in self._inputs.items():
            it.set_tensor(d["index"], inputs[name])
        it.invoke()

    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One invoke of the model (its one entry): the outputs named (a name it lacks read from the primary output;
        None: every output) as float32, a quantized output dequantized."""
        self.entry(entry)
        self._invoke(feeds)
        by_name = {d["name"]: d for d in self._outputs}
        details = [(n, by_name.get(n, self._primary)) for n in outputs] if outputs is not None else by_name.items()
        return {n: self._float(self.interpreter.get_tensor(d["index"]), d) for n, d in details}

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("ai_edge_litert")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["backend"] = "xnnpack"
        return d

    def close(self) -> None:
        self.interpreter = None


def _arg_index(name: str) -> int:
    """``serving_default_args_3:0`` -> 3: the position of a converted model's input."""
    import re

    found = re.search(r"args_(\d+)", name)
    return int(found.group(1)) if found else 1 << 30
