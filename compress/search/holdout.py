"""The held-out half: when a search is given no ``--holdout``, half of ``--eval`` (seeded) is kept from it."""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

from compress.data.utf8 import read_utf8, utf8_lines
from compress.errors import ConfigError, DataError

#: CoNLL files (words and tags, a blank line between sentences), split by sentence
CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".bio")


def split_eval(path: Path, out: Path, seed: int) -> tuple[str, str]:
    """Split a labelled TSV/CSV/JSONL file, a CoNLL file (by sentence) or an image .npz in two halves (seeded): one
    the search ranks on, one held out."""
    if not path.is_file() or path.suffix.lower() not in (".tsv", ".csv", ".jsonl", ".npz", *CONLL_SUFFIXES):
        raise ConfigError(f"--eval {path}: cannot split it into a search half and a held-out half",
                          hint="pass --holdout (labelled data the search never sees), or a .tsv/.csv/.jsonl/.npz or "
                               "CoNLL (.txt/.conll) --eval")
    out.mkdir(parents=True, exist_ok=True)
    ranked, held = out / f"search{path.suffix}", out / f"holdout{path.suffix}"
    if ranked.is_file() and held.is_file():
        return str(ranked.resolve()), str(held.resolve())
    if path.suffix.lower() == ".npz":
        return _split_npz(path, ranked, held, seed)
    conll = path.suffix.lower() in CONLL_SUFFIXES
    if conll:  # a row is a sentence: its lines up to a blank line (document markers left out)
        text = read_utf8(path)
        header, rows = [], [b.strip("\n") for b in re.split(r"\n\s*\n", text)
                            if b.strip() and not b.lstrip().startswith("-DOCSTART-")]
    elif path.suffix.lower() == ".jsonl":
        header, rows = [], [ln for ln in read_utf8(path).splitlines() if ln.strip()]
    else:
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.reader(utf8_lines(path), delimiter=delim,
                            quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
        all_rows = list(reader)
        header, rows = all_rows[:1], all_rows[1:]
    if len(rows) < 20:
        raise DataError(f"--eval {path} has {len(rows)} rows: too few to split", hint="pass --holdout FILE")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    halves = (sorted(order[: len(rows) // 2]), sorted(order[len(rows) // 2:]))
    for target, idx in zip((ranked, held), halves):
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if conll:
                f.write("".join(rows[i] + "\n\n" for i in idx))
            elif path.suffix.lower() == ".jsonl":
                f.write("".join(rows[i] + "\n" for i in idx))
            elif delim == "\t":  # read as written: fields split on tabs, nothing quoted
                f.write("".join("\t".join(r) + "\n" for r in header + [rows[i] for i in idx]))
            else:
                csv.writer(f, lineterminator="\n").writerows(header + [rows[i] for i in idx])
        tmp.replace(target)
    return str(ranked.resolve()), str(held.resolve())


def _split_npz(path: Path, ranked: Path, held: Path, seed: int) -> tuple[str, str]:
    import numpy as np

    from compress.data.arrays import read_npz

    arrays = read_npz(path)  # the one reader of users' .npz: truncated, random bytes, object arrays, NaN/Inf
    n = len(next(iter(arrays.values()), []))
    if n < 20 or any(len(a) != n for a in arrays.values()):
        raise DataError(f"--eval {path}: {n} rows (or arrays of unequal length): cannot split it",
                        hint="pass --holdout (labelled images the search never sees)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for target, idx in zip((ranked, held), (sorted(order[: n // 2]), sorted(order[n // 2:]))):
        tmp = target.with_name(f".{target.stem}.tmp.npz")
        np.savez(tmp, **{k: a[idx] for k, a in arrays.items()})
        tmp.replace(target)
    return str(ranked.resolve()), str(held.resolve())


def split_text(path: Path, out: Path) -> tuple[str, str]:
    """Split a generator's text (a .txt, its blocks separated by blank lines; a .jsonl, its lines) in two: the first
    half (by blocks, in order) the search ranks on, the rest held out. In order, not shuffled: a story's paragraphs
    stay on one side."""
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in (".txt", ".jsonl"):
        raise ConfigError(f"--eval {path}: a generator's text is a .txt or .jsonl file",
                          hint="pass a .txt of documents (or .jsonl with \"text\"), or --holdout TEXT")
    out.mkdir(parents=True, exist_ok=True)
    ranked, held = out / f"search{suffix}", out / f"holdout{suffix}"
    if ranked.is_file() and held.is_file():
        return str(ranked.resolve()), str(held.resolve())
    text = read_utf8(path)
    blocks = ([b.strip("\n") for b in re.split(r"\n\s*\n", text) if b.strip()] if suffix == ".txt"
              else [ln for ln in text.splitlines() if ln.strip()])
    if len(blocks) < 2:
        raise DataError(f"--eval {path} has {len(blocks)} block of text: too few to split",
                        hint="pass --holdout TEXT, or text with paragraphs separated by blank lines")
    total, half, cut = sum(len(b) for b in blocks), 0, 0
    while cut < len(blocks) - 1 and half + len(blocks[cut]) <= total / 2:
        half += len(blocks[cut])
        cut += 1
    cut = max(cut, 1)
    sep = "\n\n" if suffix == ".txt" else "\n"
    for target, part in ((ranked, blocks[:cut]), (held, blocks[cut:])):
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(sep.join(part) + "\n", encoding="utf-8")
        tmp.replace(target)
    return str(ranked.resolve()), str(held.resolve())
