"""The code that runs on a device, in one place: pooling, ONNX Runtime session options, file hashes, peak memory.

It is shipped as ``edgecompress_device.py`` beside the remote runner (``validate --remote``) and inside every
serverless bundle (``package``), and the runtime adapters here use it too, so what a device measures and what
this machine measures come from the same code. Standard library and numpy only (numpy imported where used),
Python 3.8+: it must import on a bare board and in a serverless function.
"""

import hashlib
import sys

#: the name it ships under, beside the remote runner and in a bundle
SHIPPED_NAME = "edgecompress_device.py"

ORT_LEVELS = ("disable", "basic", "extended", "all")


def pool(hidden, attention_mask, pooling="mean", normalize=False):
    """Sentence embeddings from token states: mean over the attention mask (as sentence-transformers does)
    or the first token (``cls``), optionally L2-normalised; float32."""
    import numpy as np

    if pooling == "cls":
        pooled = hidden[:, 0, :].astype(np.float64)
    elif pooling == "mean":
        mask = attention_mask[..., None].astype(np.float64)
        pooled = (hidden.astype(np.float64) * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    else:
        raise ValueError("unsupported pooling %r" % (pooling,))
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled.astype(np.float32)


def ort_session_options(ort, threads=None, level="all", session_config=None):
    """ONNX Runtime session options as edgecompress runs every model: sequential execution, ``threads``
    intra-op threads (one inter-op), graph optimisation ``level`` (disable|basic|extended|all)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    for key, value in (session_config or {}).items():
        opts.add_session_config_entry(str(key), str(value))
    return opts


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def peak_rss_mb():
    """Peak resident memory of this process: Linux VmHWM (reset at exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
    except (ImportError, OSError):
        return 0.0
