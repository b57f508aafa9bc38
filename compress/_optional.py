"""Optional heavy backends: check availability cheaply and fail with the exact install command."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from types import ModuleType

from compress.errors import MissingBackendError

# module name -> (distributions that provide it, pip install hint)
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "torch": (("torch",), "pip install torch"),
    "transformers": (("transformers",), "pip install transformers"),
    "optimum": (("optimum",), "pip install 'edgecompress[optimum]' (optimum-onnx needs transformers < 4.58)"),
    "onnxscript": (("onnxscript",), "pip install onnxscript"),
    "onnx": (("onnx",), "pip install onnx"),
    "onnxruntime": (
        ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
        "pip install onnxruntime",
    ),
    "openvino": (("openvino",), "pip install 'edgecompress[openvino]'"),
    "nncf": (("nncf",), "pip install 'edgecompress[openvino]'"),
    "tensorrt": (("tensorrt", "tensorrt-cu12", "tensorrt-cu13"), "pip install 'edgecompress[tensorrt]'"),
    # torch-tensorrt pins torch exactly; compress.stages.export.torch_tensorrt.install_hint() names the matching release
    "torch_tensorrt": (("torch-tensorrt", "torch_tensorrt"), "pip install torch-tensorrt==<your torch version>"),
    "pandas": (("pandas",), "pip install 'edgecompress[data]'"),
    "pyarrow": (("pyarrow",), "pip install 'edgecompress[data]'"),
    "datasets": (("datasets",), "pip install 'edgecompress[data]'"),
    "accelerate": (("accelerate",), "pip install 'edgecompress[distill]'"),
    "jinja2": (("jinja2", "Jinja2"), "pip install 'edgecompress[report]'"),
    "matplotlib": (("matplotlib",), "pip install 'edgecompress[report]'"),
    "optuna": (("optuna",), "pip install 'edgecompress[search]'"),
}


def is_available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version_of(module: str) -> str | None:
    """Installed version of the distribution providing ``module`` (first match), or None."""
    dists = BACKENDS.get(module, ((module,), ""))[0]
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingBackendError` naming the install command."""
    hint = BACKENDS.get(module, ((module,), f"pip install {module}"))[1]
    if not is_available(module):
        what = f" (needed for {purpose})" if purpose else ""
        raise MissingBackendError(f"{module} is not installed{what}", hint=f"install it with: {hint}")
    return importlib.import_module(module)
