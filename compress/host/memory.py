"""The memory a causal LM's stage holds at its peak, estimated before the work from the model's FP32 weight bytes, and
a one-line refusal where the machine does not have it: said in a second, not after minutes of work and a kill by the
kernel's out-of-memory killer (or a machine swapping to a standstill).

The estimate is a line, ``fixed + slope x FP32 weight bytes``, per stage: fitted on the default chain's measured peaks
(``benchmarks/generators/lm_cost_curve.py``: random-weight bodies of real configs, 135M to 0.6B parameters, each stage a process
of its own under ``/usr/bin/time -v``; the figures and the fit are in docs/benchmarks/lm.md, "What a larger LM costs").
It is checked against what the machine has available now (``psutil.virtual_memory().available``: free memory
and the page cache the kernel can drop). The OpenVINO route's lines are of the memory a stage cannot give back (its
anonymous pages), the others' of its whole peak RSS (an upper bound: it also counts mapped file pages). Only the routes
measured are checked: the ONNX Runtime and OpenVINO routes' export, quantize and validate (:func:`route_stage`), and a
``.gguf`` dequantized into a teacher checkpoint. ``EDGECOMPRESS_MEMORY_CHECK=off`` skips the check (an estimate can be wrong both ways).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from compress.errors import MemoryShortage
from compress.storage import safetensors_header

#: stage -> (fixed bytes, peak bytes per FP32 weight byte): the slope of a least-squares line through the measured
#: peaks and the largest of their residuals as the fixed part, so that every measured run lies on or under it
#: (benchmarks/results/lm_cost_curve.json: SmolLM2-135M, Gemma 3 270M, Qwen3-0.6B and 1.7B, the ONNX Runtime route;
#: Llama 3.2 1B, measured after, lies under each; dequantize: the checkpoints those runs wrote, 1.4-2.0x). quantize
#: holds the FP32 weights once (the mix's probe feeds one buffer a matrix, its 4-bit candidates kept as codes; the
#: writer reads a batch at a time), validate never the teacher beside the FP32 baseline: they were 4.23x and 3.34x
#: before
PEAK: dict[str, tuple[float, float]] = {
    "dequantize": (0.5e9, 2.0),
    "export": (1.6e9, 1.31),
    "quantize": (2.1e9, 1.80),
    "validate": (2.6e9, 1.97),
    # the OpenVINO route: the memory it cannot give back (anonymous, the process tree's RssAnon sampled), not RSS,
    # which also counts the pages of the IR and checkpoint it maps, which the kernel drops under pressure and which
    # available memory already counts as free: its quantize and validate map the FP32 IR whole (RSS 2.4x and 3.3x at
    # Qwen3-0.6B, anonymous 2.0x and 2.0x). Fitted on SmolLM2-135M, Gemma 3 270M, Qwen3-0.6B (and Qwen3-1.7B's
    # export, run in a 16 GB memory cgroup, whose quantize and validate, 10.5 and 9.7 GB, lie under their lines), the
    # largest residual in the fixed part; Gemma's 262,144-token vocabulary puts its small model's validate high, hence
    # validate's fixed part. The GGUF route is not checked: llama.cpp's
    # converter and quantizer hold a tensor at a time (1.0 and 0.75 GB for SmolLM2; the converter 0.9 GB for Gemma 3
    # 270M); ExecuTorch's was measured on one model only (export: 4.3 GB, 8x SmolLM2)
    "export@openvino": (1.72e9, 0.88),
    "quantize@openvino": (1.31e9, 1.56),
    "validate@openvino": (3.45e9, 0.93),
}
#: the option that lowers each stage's peak, named in the refusal
LOWER = {
    "dequantize": "the GGUF route keeps it quantized: leave --format out to adopt the .gguf as it is, or "
                  "--format gguf",
    "export": "--format gguf (llama.cpp's converter holds a tensor at a time)",
    "quantize": "--int4-algorithm rtn (no measured mix: no probe session beside the model)",
    "validate": "--no-baseline (no FP32 baseline timed beside the artifact)",
    "export@openvino": "--format gguf (llama.cpp's converter holds a tensor at a time)",
    "quantize@openvino": "--int4-algorithm rtn (no measured mix)",
    "validate@openvino": "--no-baseline (no FP32 baseline timed beside the artifact)",
}
ENV = "EDGECOMPRESS_MEMORY_CHECK"


def safetensors_parameters(folder: Path) -> int | None:
    """The number of values in a checkpoint folder's ``*.safetensors`` files, read from their headers alone (no
    weights loaded); None where there are none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    return sum(math.prod(info["shape"]) for f in files for name, info in safetensors_header(f)[1].items()
               if name != "__metadata__")


def gguf_parameters(path: Path) -> int:
    """The number of weights in a ``.gguf`` file, from its tensor table (no tensor read)."""
    from gguf import GGUFReader

    return sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors)


def route_stage(stage: str, fmt: str) -> str:
    """The key of :data:`PEAK` for ``stage`` on the route of artifact format ``fmt``: the ONNX Runtime route's stage
    by its name (``export``), another route's as the cost curve records it (``export@openvino``)."""
    return stage if fmt == "onnx" else f"{stage}@{fmt}"


def estimate(stage: str, weight_bytes: int) -> int:
    """The peak resident bytes ``stage`` (a key of :data:`PEAK`) holds for a model of ``weight_bytes`` FP32 bytes."""
    fixed, slope = PEAK[stage]
    return int(fixed + slope * weight_bytes)


def check_memory(stage: str, weight_bytes: int | None, what: str) -> dict[str, Any] | None:
    """Refuse ``stage`` on the model ``what`` (its FP32 weights ``weight_bytes``; None: unknown, not checked) in one
    line (:class:`~compress.errors.MemoryShortage`) when its estimated peak exceeds the memory available now. Returns
    what the step may record (the estimate, what was available), None where nothing was checked."""
    if not weight_bytes or stage not in PEAK or os.environ.get(ENV, "").lower() in ("off", "0", "no", "false"):
        return None  # (a route whose peak was not measured is not checked)
    import psutil

    need, have = estimate(stage, weight_bytes), psutil.virtual_memory().available
    said = {"estimated_peak_bytes": need, "available_bytes": int(have), "fp32_weight_bytes": int(weight_bytes)}
    if need > have:
        raise MemoryShortage(
            f"{stage.replace('@', ' --format ')} of {what} ({weight_bytes / 1e9:.1f} GB of FP32 weights) needs about {need / 1e9:.1f} GB of "
            f"memory at its peak (estimated from measured runs); {have / 1e9:.1f} GB are available",
            hint=f"free memory or use a larger machine; {LOWER[stage]}; or set {ENV}=off to try anyway")
    return said


def release_freed() -> None:
    """Collect garbage and hand the memory this process has freed back to the system (glibc's ``malloc_trim``):
    what a stage freed (a builder's graph, a closed session) otherwise stays resident and counts toward the next one's
    peak (ONNX Runtime GenAI's builder of Gemma 3 270M left 1.7 GB of 2.4 resident until a collection). Nothing where
    the C library has no such call."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()  # what only cycles keep alive (a builder's graph and its model) freed first
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass
