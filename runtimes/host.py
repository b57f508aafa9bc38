"""Which runtime a profile runs an artifact in.

A named profile fixes its runtime (``runtime.name``): a device ships the runtime it ships. ``host``
describes this machine, so it runs whatever runtime the artifact's format needs (its entry in
:data:`compress.formats.FORMATS`: onnx → onnxruntime, openvino → openvino, pytorch → torch, tensorrt → tensorrt, ...)
and this machine has, on its default device (the CPU for all but TensorRT), with the host's threads; a runtime that
is not installed is a clear error naming the install command.
"""

from __future__ import annotations

import logging

from compress.artifact import Format
from compress.errors import ConfigError

log = logging.getLogger(__name__)


def runtime_for(profile, fmt: Format | str):
    """``profile`` with the runtime that runs ``fmt`` artifacts: unchanged for a named profile, the format's
    own runtime for ``host``. Raises ConfigError when the profile's runtime cannot run ``fmt`` and
    MissingBackendError when ``host`` needs a runtime that is not installed."""
    from compress._optional import require
    from compress.formats import FORMATS
    from compress.runtimes.base import RUNTIMES, runtime_class

    fmt = Format(fmt)
    name = profile.runtime.name
    if name in RUNTIMES and fmt in runtime_class(name).formats:
        return profile
    if profile.source != "detected":
        raise ConfigError(
            f"profile {profile.name} runs {name}, which cannot run {fmt} artifacts",
            hint=f"export the artifact to a format {name} runs, or use a profile for {fmt} (or --profile host)",
        )
    wanted = FORMATS[fmt].runtime
    require(runtime_class(wanted).module, f"the {wanted} runtime ({fmt} artifacts on this machine)")
    log.info("profile host: %s artifact, running it in %s", fmt, wanted)
    runtime = profile.runtime.model_copy(update={"name": wanted, "provider": None, "options": {}})
    return profile.model_copy(update={"runtime": runtime})
