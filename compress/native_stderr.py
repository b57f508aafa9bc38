"""What native libraries write straight to the process's stderr (file descriptor 2), kept off the screen.

OpenVINO's ``Core.read_model`` tries each of its frontends on a file its IR reader refuses; the TensorFlow one logs
through absl to descriptor 2 ("WARNING: All log messages before absl::InitializeLog() ...", "E0000 ... Error parsing
text-format tensorflow.GraphDef"), lines printed before edgecompress's one-line error and about a format the user never
gave. Python's ``sys.stderr`` does not see them; :func:`captured_stderr` points descriptor 2 at a temporary file around
such a call and gives the text back, for the error's detail or a debug log.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["Captured", "captured_stderr"]


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
