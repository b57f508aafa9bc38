"""``prune --profile``: the least pruning on a ladder of head/FFN ratios whose exported (and quantized) candidate meets
the profile's size budget and its latency budget by the roofline estimate; bisection over the ladder."""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import ConfigError
from compress.stages.common import save_checkpoint
from compress.stages.prune.config import BudgetPrecision, PruneConfig
from compress.stages.prune.structured import Importance, drop_layers, prune_heads_and_ffn
from compress.stages.prune.vocab import VocabPlan, prune_vocabulary

log = logging.getLogger(__name__)


@dataclass
class _Search:
    profile: Any
    size_mb: float | None
    latency_ms: float | None
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def meets(self, c: dict[str, Any]) -> bool:
        return (self.size_mb is None or c["size_mb"] <= self.size_mb) and \
            (self.latency_ms is None or c["latency_ms"] <= self.latency_ms)


def _measure_candidate(model, tokenizer, teacher, importance: Importance, drop: int, heads: float, ffn: float,
                       vocab: VocabPlan | None, config: PruneConfig, search: _Search, scratch: Path) -> dict[str, Any]:
    """Prune a copy of ``model`` at these ratios, export it (and quantize), measure size and estimated latency."""
    from compress.estimates.roofline import estimate
    from compress.profiles.budgets import MB
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    cand = copy.deepcopy(model)
    imp = importance
    if drop:
        kept = drop_layers(cand, imp, drop)["kept"]
        imp = imp.select_layers(kept)
    prune_heads_and_ffn(cand, imp, heads=heads, ffn=ffn)
    tok = prune_vocabulary(cand, tokenizer, vocab) if vocab else tokenizer
    tag = f"h{heads:.2f}-f{ffn:.2f}"
    ckpt = scratch / f"{tag}-pt"
    save_checkpoint(cand, tok, teacher, ckpt)
    art = export(ckpt, scratch / f"{tag}-onnx", ExportConfig(parity_samples=2), force=True)
    if config.budget.precision is BudgetPrecision.int8:
        art = quantize(art, scratch / f"{tag}-int8", QuantizeConfig(parity_samples=2), force=True)
    res = {"heads": round(heads, 4), "ffn": round(ffn, 4), "size_mb": round(art.size_bytes() / MB, 3)}
    if search.latency_ms is not None:
        res["latency_ms"] = round(estimate(art, search.profile).latency_ms, 3)
    search.candidates.append(res)
    log.info("budget candidate heads %.2f ffn %.2f: %.2f MB%s", heads, ffn, res["size_mb"],
             f", ~{res['latency_ms']:.2f} ms" if "latency_ms" in res else "")
    return res


def search_budget(model, tokenizer, teacher, importance: Importance, vocab: VocabPlan | None,
                  config: PruneConfig, progress) -> tuple[float, float, dict[str, Any]]:
    """Smallest step on the ratio ladder whose exported candidate meets the profile's budgets."""
    from compress.estimates.roofline import profile_peaks
    from compress.profiles.load import load_profile

    prof = load_profile(config.budget.profile)
    b = prof.budgets
    lat_given = [v for v in (b.latency_ms.p50, b.latency_ms.p95, b.latency_ms.p99) if v is not None]
    search = _Search(prof, b.max_model_size_mb, min(lat_given) if lat_given else None)
    if search.size_mb is None and search.latency_ms is None:
        raise ConfigError(f"profile {prof.name} sets neither budgets.max_model_size_mb nor a latency budget",
                          hint="pick a profile with a size or latency budget, or give --heads/--ffn ratios")
    unchecked = None
    if search.latency_ms is not None:
        try:
            profile_peaks(prof)
        except ConfigError as e:
            if search.size_mb is None:
                raise  # names the missing hardware facts
            unchecked = f"latency budget {search.latency_ms:g} ms not used: {e.message}"
            log.warning("%s", unchecked)
            search.latency_ms = None
    dims = [d for d in ("heads", "ffn") if getattr(config, d)] or ["heads", "ffn"]
    n_layers = len(importance.heads) - config.drop_layers
    heads_kept = sorted((len(h) for h in importance.heads), reverse=True)
    total_heads = sum(heads_kept[:n_layers]) if config.drop_layers else sum(heads_kept)
    max_heads = min(config.budget.max_ratio, math.floor((total_heads - n_layers) / total_heads * 100) / 100)
    caps = {"heads": max_heads, "ffn": config.budget.max_ratio}
    start = {"heads": config.heads, "ffn": config.ffn}
    ladder: list[tuple[float, float]] = []
    for k in range(11):
        lv = {d: (min(max(start[d], 0.1 * k), caps[d]) if d in dims else start[d]) for d in ("heads", "ffn")}
        step = (round(lv["heads"], 4), round(lv["ffn"], 4))
        if not ladder or step != ladder[-1]:
            ladder.append(step)
    with tempfile.TemporaryDirectory(prefix="edgecompress-prune-budget-") as tmp:
        scratch = Path(tmp)

        def run(i: int) -> dict[str, Any]:
            if progress:
                progress({"phase": "budget", "heads": ladder[i][0], "ffn": ladder[i][1]})
            return _measure_candidate(model, tokenizer, teacher, importance, config.drop_layers, *ladder[i], vocab,
                                      config, search, scratch)

        first = run(0)
        if search.meets(first):
            chosen = 0
        else:
            last = run(len(ladder) - 1) if len(ladder) > 1 else first
            if not search.meets(last):
                parts = []
                if search.size_mb is not None:
                    parts.append(f"size {last['size_mb']:.2f} MB (budget {search.size_mb:g} MB)")
                if search.latency_ms is not None:
                    parts.append(f"estimated latency {last['latency_ms']:.2f} ms (budget {search.latency_ms:g} ms)")
                raise ConfigError(
                    f"profile {prof.name}: the budget cannot be met even at the most pruning allowed (heads "
                    f"{ladder[-1][0]:g}, ffn {ladder[-1][1]:g}{', drop-layers ' + str(config.drop_layers) if config.drop_layers else ''}"
                    f", {config.budget.precision}): best reachable {' and '.join(parts)}",
                    hint="also drop layers (--drop-layers), prune the vocabulary (--vocab-corpus), distil a smaller "
                    "student first, or pick a larger device",
                )
            lo, hi = 0, len(ladder) - 1  # lo fails, hi meets
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if search.meets(run(mid)):
                    hi = mid
                else:
                    lo = mid
            chosen = hi
    heads, ffn = ladder[chosen]
    record = {
        "profile": prof.name, "precision": str(config.budget.precision),
        "budgets": {"max_model_size_mb": search.size_mb, "latency_ms": search.latency_ms},
        "searched": dims, "candidates": search.candidates, "chosen": {"heads": heads, "ffn": ffn},
        "latency": "roofline estimate (compress.estimates.roofline), not a measurement" if search.latency_ms else unchecked,
    }
    return heads, ffn, record
