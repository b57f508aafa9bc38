"""The old import path of validation, kept so ``from compress.validate import ValidateConfig`` still works.

Validation lives in :mod:`compress.validation`; ``from compress import validate`` is the function. The
library itself never imports this module: importing it makes the attribute ``compress.validate`` this
module, which therefore is callable like the function.
"""

from __future__ import annotations

import sys
import types

from compress.validation import *  # noqa: F403 - the old path re-exports the package's names
from compress.validation import __all__, validate as _validate  # noqa: F401


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return _validate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
