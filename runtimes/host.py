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
        raise ConfigError(f"profile {profile.name} runs {name}, which cannot run {fmt} artifacts",
                          hint=_profile_hint(profile, fmt))
    wanted = FORMATS[fmt].runtime
    require(runtime_class(wanted).module, f"the {wanted} runtime ({fmt} artifacts on this machine)")
    log.info("profile host: %s artifact, running it in %s", fmt, wanted)
    runtime = profile.runtime.model_copy(update={"name": wanted, "provider": None, "options": {}})
    return profile.model_copy(update={"runtime": runtime})


def profiles_running(fmt: Format | str, like=None) -> list[str]:
    """The built-in profiles whose runtime runs ``fmt`` artifacts; with ``like`` (a profile), only those of its device
    (the same hardware facts: ``pixel-8-litert`` for ``pixel-8``)."""
    from compress.profiles.load import builtin_profile_names, load_profile
    from compress.runtimes.base import RUNTIMES, runtime_class

    fmt = Format(fmt)
    found = []
    for n in builtin_profile_names():
        p = load_profile(n)
        if p.runtime.name in RUNTIMES and fmt in runtime_class(p.runtime.name).formats and \
                (like is None or p.hardware == like.hardware):
            found.append(n)
    return found


def _profile_hint(profile, fmt: Format) -> str:
    """The fix for a profile whose runtime cannot run ``fmt``: the same device's profile for that format's runtime,
    else the built-in profiles that run it, else exporting to a format the profile's runtime runs."""
    from compress.formats import FORMATS

    wanted = FORMATS[fmt].runtime
    same = profiles_running(fmt, like=profile)
    if same:
        return (f"use --profile {' or '.join(same)} (the same device running {wanted}), or --profile host to measure "
                "it on this machine")
    others = profiles_running(fmt)
    if others:
        listed = ", ".join(others[:4]) + (", ... (edgecompress profiles list)" if len(others) > 4 else "")
        return f"use a profile that runs {wanted} ({listed}), or --profile host to measure it on this machine"
    return f"export the artifact to a format {profile.runtime.name} runs, or use --profile host"
