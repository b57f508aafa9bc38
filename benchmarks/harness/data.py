"""Data for the benchmark scripts: deterministic subsets of TSV files, accuracy through a runtime adapter, and the
scored text windows of the LM quality benchmarks."""

from __future__ import annotations

import csv
import random
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


def text_window_options(ap) -> None:
    """The scored-text options of the LM quality benchmarks (WikiText-2's first CHARS characters, in windows)."""
    ap.add_argument("--text", required=True, help="WikiText-2 test (wiki.test.raw)")
    ap.add_argument("--chars", type=int, default=120_000, help="the text's first CHARS characters")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--windows", type=int, default=16)


def text_windows(art, args) -> np.ndarray:
    """The windows those options name, cut by the artifact's tokenizer (llama-perplexity's rule)."""
    import tempfile

    from compress.stages.quantize.lm.common import text_windows as cut

    text = Path(tempfile.mkdtemp()) / "scored.txt"
    text.write_text(Path(args.text).read_text(encoding="utf-8")[:args.chars], encoding="utf-8")
    return cut(art, str(text), args.window, args.windows, "--text")


def scored(logits, windows: np.ndarray, ref: list | None = None) -> dict:
    """Perplexity of ``logits`` (one [1, T, V] per window) and, with ``ref`` (the reference's), KL and top-1."""
    from compress.tasks.generation import GenerationStream

    stream = GenerationStream()
    for k, (w, cand) in enumerate(zip(windows, logits, strict=True)):
        stream.update(cand, w[None], None if ref is None else ref[k])
    return stream.result()
