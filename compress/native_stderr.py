"""What native libraries write straight to the process's stderr (file descriptor 2), kept off the screen.

OpenVINO's ``Core.read_model`` tries each of its frontends on a file its IR reader refuses; the TensorFlow one logs
through absl to descriptor 2 ("WARNING: All log messages before absl::InitializeLog() ...", "E0000 ... Error parsing
text-format tensorflow.GraphDef"), lines printed before edgecompress's one-line error and about a format the user never
gave. Python's ``sys.stderr`` does not see them; :func:`captured_stderr` points descriptor 2 at a temporary file around
such a call and gives the text back, for the error's detail or a debug log.

Others log through their own loggers, straight to descriptor 2, on every run: transformers 5's "Loading weights"
bar at each checkpoint load, ONNX Runtime's coloured ``[E:onnxruntime:...]`` lines before the exception it raises
(whose message edgecompress words in its one line). The CLI without -v/--debug calls :func:`quiet_native_logs` once;
ONNX Runtime sessions of ours log from :func:`ort_log_severity`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

__all__ = ["Captured", "captured_stderr", "ort_log_severity", "quiet_native_logs"]

_quiet = False  # quiet_native_logs was called: third-party log lines stay off stderr


def quiet_native_logs() -> None:
    """From here on, in this process, libraries' own bars and log lines stay off stderr: the Hub's and transformers'
    progress bars (through ``HF_HUB_DISABLE_PROGRESS_BARS`` before they import, their switches after), and ONNX
    Runtime's default logger at fatal only (when it imports, or now if it has)."""
    global _quiet
    _quiet = True
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].disable_progress_bar()
    elif "huggingface_hub.utils" in sys.modules:
        sys.modules["huggingface_hub.utils"].disable_progress_bars()
    if "onnxruntime" in sys.modules:
        _quiet_onnxruntime(sys.modules["onnxruntime"])
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("onnxruntime", _quiet_onnxruntime))


def ort_log_severity() -> int:
    """The log severity an ONNX Runtime session of ours is made with: 4 (fatal only) after :func:`quiet_native_logs`,
    else 3 (errors; -v shows them). A session's own level overrides the default logger's, both are needed."""
    return 4 if _quiet else 3


def _quiet_onnxruntime(ort) -> None:
    with contextlib.suppress(Exception):  # an onnxruntime without the switch: its lines stay
        ort.set_default_logger_severity(4)


class _AfterImport(importlib.abc.MetaPathFinder):
    """A finder that finds what the others find for ``name``, and runs ``then(module)`` once the module has executed;
    it removes itself then (not on a mere look-up: ``importlib.util.find_spec`` asks it too)."""

    def __init__(self, name: str, then: Callable) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = None
        for finder in [f for f in sys.meta_path if f is not self and hasattr(f, "find_spec")]:
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run, hook = loader.exec_module, self

        def exec_module(module) -> None:
            run(module)
            sys.meta_path[:] = [f for f in sys.meta_path if f is not hook]
            hook.then(module)

        loader.exec_module = exec_module
        return spec


class Captured:
    """The text written to descriptor 2 inside :func:`captured_stderr` (complete once the block has ended)."""

    def __init__(self) -> None:
        self.text = ""

    def lines(self) -> list[str]:
        return [ln for ln in self.text.splitlines() if ln.strip()]


@contextlib.contextmanager
def captured_stderr() -> Iterator[Captured]:
    """Within the block, whatever anything in the process writes to descriptor 2 goes to a temporary file instead of
    the terminal; the yielded :class:`Captured` holds it afterwards. Python's own ``sys.stderr`` is flushed first, so
    nothing written before the block lands in it. Where descriptor 2 cannot be redirected, the block runs as is."""
    captured = Captured()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
