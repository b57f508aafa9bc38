"""What this machine offers edgecompress: backends, versions, providers, devices, CPU features."""

from __future__ import annotations

import platform
from typing import Any

from compress import __version__
from compress._optional import BACKENDS, is_available, version_of
from compress.device.facts import cpu_model
from compress.host.cpu import cpu_flags, has_vnni

INTERESTING_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd",
                     "asimddp", "sve", "i8mm")


def environment_report() -> dict[str, Any]:
    rows = []
    for module, (_, install) in BACKENDS.items():
        row: dict[str, Any] = {"package": module, "version": version_of(module) if is_available(module) else None,
                               "install": install}
        if module == "torch_tensorrt":  # its release must equal torch's: name the exact one
            from compress.runtimes.torch_tensorrt_program import install_hint

            row["install"] = install_hint()
        if row["version"] and module == "onnxruntime":
            import onnxruntime

            row["details"] = "providers: " + ", ".join(onnxruntime.get_available_providers())
        if row["version"] and module == "openvino":
            try:
                import openvino

                row["details"] = "devices: " + ", ".join(openvino.Core().available_devices)
            except Exception as e:  # noqa: BLE001
                row["details"] = f"devices: unavailable ({e})"
        if row["version"] and module == "torch":
            import torch

            row["details"] = f"cuda: {torch.cuda.is_available()}"
        rows.append(row)
    flags = cpu_flags()
    return {
        "edgecompress": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_features": [f for f in INTERESTING_FLAGS if f in flags],
        "int8_dot_product": has_vnni(flags),
        "backends": rows,
    }
