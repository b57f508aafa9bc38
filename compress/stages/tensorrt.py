"""The TensorRT export backend's old import path, kept because the README documented it there.

It lives in :mod:`compress.stages.export.tensorrt` now.
"""

from compress.stages.export.tensorrt import check_tensorrt_qdq  # noqa: F401
