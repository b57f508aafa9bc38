"""A user's own metric, ``--metric pkg.module:function``: called with a model's outputs on the eval rows and their
labels, it returns one number, higher is better. It becomes the task metric: validate reports it for the artifact
and the teacher (retention is their ratio, so ``min_accuracy_retention`` judges it), and quantize's accuracy-aware
mode keeps layers float until it holds.

Naming a function runs it: ``--metric`` is the opt-in, as ``--allow-pickle`` is for pickles. Only import it from code
you trust. The module is imported by name (the current directory is searched first, as ``python -m`` does); a module
that does not import, a missing function, an exception inside it and a return that is not a finite number are each a
one-line :class:`~compress.errors.ConfigError`.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.errors import ConfigError, first_line

__all__ = ["UserMetric", "load_metric"]

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class UserMetric:
    """A loaded ``module:function`` metric."""

    spec: str
    function: Callable[..., Any]

    def __call__(self, outputs, labels) -> float:
        try:
            value = self.function(outputs, labels)
        except Exception as e:
            raise ConfigError(f"--metric {self.spec} raised {type(e).__name__}: {first_line(e, default='')}",
                              hint="it is called as function(outputs: numpy array [rows, ...], labels: numpy array or "
                                   "None) and returns a number") from e
        if isinstance(value, bool) or not isinstance(value, int | float) and not _numpy_scalar(value):
            raise ConfigError(f"--metric {self.spec} returned {type(value).__name__} {str(value)[:40]!r}, not a number",
                              hint="return one float, higher is better")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"--metric {self.spec} returned {value}", hint="return a finite number, higher is better")
        return value


def _numpy_scalar(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.generic) and np.issubdtype(type(value), np.number) or (
        isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number))


def load_metric(spec: str) -> UserMetric:
    """Import ``pkg.module:function`` (see the module doc)."""
    if not _SPEC.match(spec or ""):
        raise ConfigError(f"--metric {spec!r} is not module:function", hint="e.g. --metric my_metrics:miou")
    module_name, _, name = spec.partition(":")
    added = "" not in sys.path
    if added:
        sys.path.insert(0, "")  # the current directory, as `python -m` searches it
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ConfigError(f"--metric {spec}: cannot import {module_name} "
                          f"({type(e).__name__}: {first_line(e, default='')})",
                          hint="run from the folder that holds the module, or install it; check it imports with "
                               f"python -c 'import {module_name}'") from e
    finally:
        if added:
            sys.path.remove("")
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"--metric {spec}: {module_name} has no function {name}",
                          hint=f"define def {name}(outputs, labels) -> float in {module_name}")
    return UserMetric(spec, function)
