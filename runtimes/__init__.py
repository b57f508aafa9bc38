"""Inference runtime adapters (installed as ``compress.runtimes``): one module per runtime behind one interface."""

from compress.runtimes.base import RUNTIMES, RuntimeBackend, RuntimeSettings, load_runtime, runtime_class

__all__ = ["RUNTIMES", "RuntimeBackend", "RuntimeSettings", "load_runtime", "runtime_class"]
