"""Fresh-process probe: ``python -m compress.validation.probe ARTIFACT --runtime R``.

ARTIFACT is an artifact directory, or a source measured as it is (a checkpoint, or a model file such as
``model.onnx``, run in its own runtime): :func:`compress.host.measure.probe_target` says which.

Times the cold phases (runtime import, session creation, first inference) and reports the peak
resident memory of the process, as JSON on the last line of stdout. It imports only what the chosen
runtime needs (no torch for ONNX Runtime artifacts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from compress.device.facts import cold_start_record, peak_rss_mb


def main(argv: list[str] | None = None) -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(prog="python -m compress.validation.probe")
    ap.add_argument("artifact")
    ap.add_argument("--runtime", required=True)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--provider")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--sequence-length", type=int, default=64)
    ap.add_argument("--feeds", help="an .npz of the model's inputs to run (the batch validate timed); default: "
                    "seeded inputs of the declared shapes")
    args = ap.parse_args(argv)

    import importlib

    import numpy as np

    from compress.artifact import Format, is_artifact, load_artifact
    from compress.runtimes.base import RuntimeSettings, runtime_class

    rss_before = peak_rss_mb()
    cls = runtime_class(args.runtime)
    t0 = time.perf_counter()
    importlib.import_module(cls.module)
    t_import = time.perf_counter() - t0

    settings = RuntimeSettings(threads=args.threads, provider=args.provider)
    t0 = time.perf_counter()
    if is_artifact(args.artifact):
        backend = cls(load_artifact(args.artifact, verify=False), settings)
    else:  # a source measured as it is: a checkpoint (the torch adapter wraps it) or a model file in its own runtime
        from compress.teachers.load import load_teacher, teacher_format

        teacher = load_teacher(args.artifact)  # a checkpoint's load is its session: timed
        if teacher_format(teacher) is Format.pytorch:
            backend = cls.from_teacher(teacher, settings)
        else:  # a model file's checks are edgecompress's, not the runtime's: only its session is timed
            described = teacher.as_artifact()
            t0 = time.perf_counter()
            backend = cls(described, settings)
    t_session = time.perf_counter() - t0

    from compress.tasks import by_kind

    t0, out = by_kind(_FIRST, backend.artifact, "the cold-start probe")(backend, args)
    backend.synchronize()
    t_first = time.perf_counter() - t0
    if not np.isfinite(out).all():
        print("non-finite output", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(cold_start_record(args.runtime, t_start, t_import, t_session, t_first, rss_before)))


def _first_prefill(backend, args) -> tuple[float, Any]:
    """A causal LM: one prefill of a prompt; (when it started, its logits)."""
    import numpy as np

    ids = np.ones((args.batch_size, args.sequence_length), dtype=np.int64)
    t0 = time.perf_counter()
    return t0, backend.prefill({"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]["logits"]


def _first_predict(backend, args) -> tuple[float, Any]:
    """One forward pass (a stream's first call): the batch validate timed (an open dimension is fixed by the data, not
    the graph), else one made from the manifest's preprocess; (when it started, its output)."""
    if args.feeds:
        from compress.data.arrays import read_npz

        batch = read_npz(args.feeds)
    else:
        from compress.data.inputs import latency_inputs

        items = latency_inputs(None, args.batch_size, args.sequence_length, backend.artifact.manifest.preprocess)
        batch = backend.encode(items, pad_to=args.sequence_length)
    t0 = time.perf_counter()
    return t0, backend.predict(batch)


#: the first inference the probe times, for a model of each kind (:func:`compress.tasks.by_kind`)
_FIRST = {"forward": _first_predict, "generation": _first_prefill, "stream": _first_predict}


if __name__ == "__main__":
    main()
