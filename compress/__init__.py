"""edgecompress: compress fine-tuned transformers for small devices and prove the result on a device profile.

The library API (what the CLI calls)::

    from compress import export, quantize, validate, load_artifact, load_profile

Importing this package is cheap: torch, onnxruntime, openvino and tensorrt are imported only where used.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "finetune": ("compress.stages.finetune", "finetune"),
    "FinetuneConfig": ("compress.stages.finetune.config", "FinetuneConfig"),
    "distill": ("compress.stages.distill", "distill"),
    "DistillConfig": ("compress.stages.distill.config", "DistillConfig"),
    "export": ("compress.stages.export", "export"),
    "ExportConfig": ("compress.stages.export.config", "ExportConfig"),
    "prune": ("compress.stages.prune", "prune"),
    "PruneConfig": ("compress.stages.prune.config", "PruneConfig"),
    "quantize": ("compress.stages.quantize", "quantize"),
    "QuantizeConfig": ("compress.stages.quantize.config", "QuantizeConfig"),
    "validate": ("compress.validation.local", "validate"),
    "ValidateConfig": ("compress.validation.config", "ValidateConfig"),
    "load_artifact": ("compress.artifact", "load_artifact"),
    "Artifact": ("compress.artifact", "Artifact"),
    "load_profile": ("compress.profiles.load", "load_profile"),
    "DeviceProfile": ("compress.profiles.schema", "DeviceProfile"),
    "load_teacher": ("compress.teachers.load", "load_teacher"),
    "load_dataset": ("compress.data.tables", "load_dataset"),
    "run_recipe": ("compress.recipes.execute", "run_recipe"),
    "read_recipe": ("compress.recipes.schema", "read_recipe"),
    "gate": ("compress.validation.gate", "gate"),
    "run_search": ("compress.search.run", "run_search"),
    "SearchConfig": ("compress.search.config", "SearchConfig"),
}

__all__ = ["__version__", *_LAZY]

# after the names, before any torchvision import
try:
    from compress._optional import install_torchvision_hook, quiet_import_warnings

    install_torchvision_hook()
    quiet_import_warnings()
except KeyboardInterrupt:  # a Ctrl-C in the command line's first instant, before compress._entry runs: one line, 130
    import compress.interrupt

    if not compress.interrupt.is_command_line():
        raise
    compress.interrupt.exit_interrupted()


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
