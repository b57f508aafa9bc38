"""Helpers the benchmark scripts share: data subsets, accuracy through a runtime adapter, host facts."""

from __future__ import annotations

import csv
import platform
import random
import time
from pathlib import Path

import numpy as np


def subset_tsv(src: Path, dst: Path, rows: int, seed: int = 0) -> Path:
    """A deterministic random sample of ``rows`` rows of a QUOTE_NONE TSV (kept once written)."""
    if dst.is_file():
        return dst
    with open(src, encoding="utf-8", newline="") as f:
        header, *body = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    body = random.Random(seed).sample(body, min(rows, len(body)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(header)
        w.writerows(body)
    return dst


def accuracy(backend, ds) -> float:
    """Accuracy of a runtime adapter on a labelled TextDataset, encoded with the adapter's own tokenizer."""
    logits = np.concatenate([backend.predict(backend.encode(t, p)) for t, p, _ in ds.batches(32)])
    return float((logits.argmax(-1) == np.asarray(ds.labels)).mean())


def host_and_versions() -> dict:
    """``host`` (CPU model, Python) and ``versions`` (installed backends) entries for a results JSON."""
    from compress.reports.doctor import environment_report

    env = environment_report()
    return {
        "host": {"cpu": env["cpu"], "python": platform.python_version()},
        "versions": {r["package"]: r["version"] for r in env["backends"] if r["version"]},
    }


def cached_step(label: str, out: Path, make) -> Path:
    """``make()`` builds the artifact at ``out`` unless one is there (its manifest): a benchmark's build is resumable."""
    if (out / "manifest.json").is_file():
        print(f"cached: {label} ({out})", flush=True)
        return out
    t0 = time.perf_counter()
    make()
    print(f"built: {label} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out
