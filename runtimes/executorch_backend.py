"""ExecuTorch adapter: an ExecuTorch program (``model.pte``, XNNPACK-delegated) in ExecuTorch's own runtime, the one a
phone app embeds (here its Python bindings on the host CPU).

Settings: ``threads`` sizes ExecuTorch's thread pool (XNNPACK runs on it); there is no provider and no options.
A program takes one row per call (``export --format executorch`` writes it so); a larger batch runs row by row.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.runtimes.base import RuntimeBackend


class ExecuTorchBackend(RuntimeBackend):
    name: ClassVar[str] = "executorch"
    module: ClassVar[str] = "executorch"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.executorch})

    def _load(self) -> None:
        # ExecuTorch's quantized kernels (an INT8 program's embedding tables, quantized_decomposed::embedding_byte):
        # importing the library registers them with the runtime, as an app links them
        import executorch.kernels.quantized  # noqa: F401
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if self.settings.threads:
            portable_lib._unsafe_reset_threadpool(int(self.settings.threads))
        self.settings.threads = int(portable_lib._threadpool_get_thread_count())
        self.program = Runtime.get().load_program(str(self.artifact.model_path))
        self.method = self.program.load_method("forward")
        self._torch = torch
        self._names = [t.name for t in self.artifact.manifest.inputs]
        self._dtypes = {t.name: np.int64 if t.dtype.startswith("int") else np.float32
                        for t in self.artifact.manifest.inputs}

    @property
    def fixed_batch(self) -> int | None:
        return 1  # one row per call (a program is traced with one)

    def _feed(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        return [self._torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=self._dtypes[n])) for n in self._names]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        rows = len(next(iter(inputs.values())))
        if rows == 1:
            return self.method.execute(self._feed(inputs))[0].numpy().astype(np.float32, copy=True)
        return np.concatenate([self.run({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(rows)])

    def run_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.artifact.manifest.outputs[0].name: self.run(inputs)}

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("executorch")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["backend"] = "xnnpack"
        return d

    def close(self) -> None:
        self.method = None
        self.program = None
