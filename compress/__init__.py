"""edgecompress: compress fine-tuned transformers for small devices and prove the result on a device profile.

The library API (what the CLI calls)::

    from compress import export, quantize, validate, load_artifact, load_profile

Importing this package is cheap: torch, onnxruntime, openvino and tensorrt are imported only where used.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "distill": ("compress.stages.distill", "distill"),
    "DistillConfig": ("compress.stages.distill", "DistillConfig"),
    "export": ("compress.stages.export", "export"),
    "ExportConfig": ("compress.stages.export", "ExportConfig"),
    "prune": ("compress.stages.prune", "prune"),
    "PruneConfig": ("compress.stages.prune", "PruneConfig"),
    "quantize": ("compress.stages.quantize", "quantize"),
    "QuantizeConfig": ("compress.stages.quantize", "QuantizeConfig"),
    "validate": ("compress.validation", "validate"),
    "ValidateConfig": ("compress.validation", "ValidateConfig"),
    "load_artifact": ("compress.artifact", "load_artifact"),
    "Artifact": ("compress.artifact", "Artifact"),
    "load_profile": ("compress.profiles.load", "load_profile"),
    "DeviceProfile": ("compress.profiles.load", "DeviceProfile"),
    "load_teacher": ("compress.teachers.load", "load_teacher"),
    "load_dataset": ("compress.data.tables", "load_dataset"),
    "run_recipe": ("compress.recipes.execute", "run_recipe"),
    "read_recipe": ("compress.recipes.schema", "read_recipe"),
    "gate": ("compress.validation.gate", "gate"),
    "run_search": ("compress.search.run", "run_search"),
    "SearchConfig": ("compress.search.config", "SearchConfig"),
}

__all__ = ["__version__", *_LAZY]

from compress._optional import install_torchvision_hook  # noqa: E402 - after the names, before any torchvision import

install_torchvision_hook()


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
