"""Optional heavy backends: check availability cheaply and fail with the exact install command."""

from __future__ import annotations

import importlib
import importlib.abc
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
    "onnxruntime_genai": (("onnxruntime-genai",), "pip install 'edgecompress[genai]' (0.12: 0.13+ needs transformers 5)"),
    "llama_cpp": (("llama-cpp-python",), "pip install 'edgecompress[llamacpp]' (builds llama.cpp from source)"),
    "gguf": (("gguf",), "pip install 'edgecompress[gguf]' (in all; llamacpp has it too)"),
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
    "seqeval": (("seqeval",), "pip install 'edgecompress[tasks]'"),
    "sklearn": (("scikit-learn",), "pip install 'edgecompress[tasks]'"),
    "rapidfuzz": (("rapidfuzz",), "pip install 'edgecompress[tasks]'"),
    "pycocotools": (("pycocotools",), "pip install 'edgecompress[tasks]'"),
    "peft": (("peft",), "pip install 'edgecompress[finetune]'"),
    "executorch": (("executorch",), "pip install 'edgecompress[executorch]'"),
    "ai_edge_litert": (("ai-edge-litert",), "pip install 'edgecompress[litert]'"),
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


# --- torchvision beside the CPU torch wheel --------------------------------------------------------------------------
# PyPI's torchvision (0.28.0 for torch 2.13) is built against CUDA torch: beside the CPU wheel its compiled operators do
# not load, and its meta registrations then fail on the missing ``torchvision::nms`` / ``qnms`` schemas, so ``import
# torchvision`` raises, and with it every transformers import that looks for torchvision (image processors), and timm.
# Classification uses neither operator: defining the two schemas before torchvision imports makes it import and run.
# The hook below does that, once, on the first ``import torchvision`` in the process, whoever imports it
# (transformers, timm, edgecompress): ``import compress`` installs it, before anything else can import torchvision.

_TORCHVISION_OPS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                    "qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
_torchvision_library = None  # the registration, kept alive


def define_torchvision_schemas() -> bool:
    """Define ``torchvision::nms`` and ``qnms`` when this torchvision cannot (a CUDA build beside CPU torch); True when
    defined here. A torchvision whose compiled library matches torch (a ``+cpu`` build, or CUDA torch) defines them
    itself and is left alone."""
    global _torchvision_library
    if _torchvision_library is not None or importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    if getattr(torch.version, "cuda", None) or "+cpu" in (version_of("torchvision") or ""):
        return False
    try:
        lib = torch.library.Library("torchvision", "DEF")
        for schema in _TORCHVISION_OPS:
            lib.define(schema)
    except RuntimeError:  # already defined (by a build that does load)
        return False
    _torchvision_library = lib
    return True


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """A finder that finds nothing: on ``import torchvision`` it defines the schemas, removes itself and lets the
    regular finders import the package."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall_torchvision_hook()
            define_torchvision_schemas()
        return None


def install_torchvision_hook() -> None:
    import sys

    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


def uninstall_torchvision_hook() -> None:
    import sys

    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]


def quiet_import_warnings() -> None:
    """torchao (which executorch brings, and transformers and peft import when it is installed) registers its enums
    with torch's pytree on import, and torch warns about each one through logging: noise on stderr for every command,
    and a second line under a one-line error. Only those warnings are silenced (the logger of torch.utils._pytree)."""
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
