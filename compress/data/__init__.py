"""Data: labelled tables, images and arrays, their readers, and the inputs each model kind reads."""

from __future__ import annotations

import random
from typing import Self


class RowSubsets:
    """``head`` and ``sample`` of a data set of ``len()`` rows that makes a subset of itself from row indices
    (``_subset``): the one rule for which rows a limit keeps (text tables, SQuAD questions)."""

    def _subset(self, idx: list[int] | range) -> Self:
        raise NotImplementedError

    def head(self, n: int) -> Self:
        """The first ``n`` rows (all of them when ``n >= len``)."""
        if n < 0:
            raise ValueError(f"head: n must be >= 0, got {n}")
        return self if n >= len(self) else self._subset(range(n))

    def sample(self, n: int, seed: int = 0) -> Self:
        """A deterministic random subset of ``n`` rows, kept in file order; ``self`` when ``n >= len``."""
        if n < 0:
            raise ValueError(f"sample: n must be >= 0, got {n}")
        if n >= len(self):
            return self
        return self._subset(sorted(random.Random(seed).sample(range(len(self)), n)))
