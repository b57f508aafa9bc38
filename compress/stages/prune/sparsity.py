"""Sparsity: unstructured magnitude and 2:4 masks (smaller when compressed, not faster on CPU runtimes)."""

from __future__ import annotations

import logging
import zlib
from typing import Any

from compress.errors import ConfigError
from compress.stages.prune.config import SEMI_STRUCTURED
from compress.stages.prune.structured import encoder_linears

log = logging.getLogger("compress.stages.prune")  # the verb's logger


# ---------------------------------------------------------------------------------------------
# Sparsity
# ---------------------------------------------------------------------------------------------


def _gzip_size(tensors: list[Any]) -> int:
    comp = zlib.compressobj(6)
    size = 0
    for t in tensors:
        size += len(comp.compress(t.detach().cpu().numpy().tobytes()))
    return size + len(comp.flush())


def _semi_structured_mask(w):
    out_f, in_f = w.shape
    groups = w.abs().reshape(out_f, in_f // 4, 4)
    top = groups.topk(2, dim=-1).indices
    import torch

    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, top, True)
    return mask.reshape(out_f, in_f)


class Sparsifier:
    """Masks on the encoder's Linear weights: global magnitude (with a cubic schedule) or 2:4.

    Call :meth:`apply` once for one-shot sparsity; pass the instance as ``distill(on_step=...)`` to keep
    the masks (and, for a ratio, the schedule) applied after every optimizer step of a recovery.
    """

    def __init__(self, sparsity: float | str, total_steps: int = 0) -> None:
        self.sparsity = sparsity
        self.total_steps = total_steps
        self.masks: dict[str, Any] = {}
        self.skipped: list[str] = []

    @property
    def semi_structured(self) -> bool:
        return self.sparsity == SEMI_STRUCTURED

    def target_at(self, step: int) -> float:
        """Cubic schedule s_t = s_f (1 - (1 - t/T)^3) (Zhu & Gupta 2017); s_f from the start without steps."""
        s_f = float(self.sparsity)
        if not self.total_steps:
            return s_f
        t = min(max(step, 0), self.total_steps) / self.total_steps
        return s_f * (1 - (1 - t) ** 3)

    def apply(self, model, step: int | None = None) -> None:
        """Compute (or refresh) the masks for ``step`` (final target when None) and zero the weights."""
        import torch

        linears = encoder_linears(model)
        with torch.no_grad():
            if self.semi_structured:
                if not self.masks:
                    for name, m in linears:
                        if m.in_features % 4:
                            self.skipped.append(name)
                            continue
                        self.masks[name] = _semi_structured_mask(m.weight)
            else:
                for name, m in linears:  # weights pruned earlier stay pruned
                    if name in self.masks:
                        m.weight.mul_(self.masks[name])
                target = self.target_at(self.total_steps if step is None else step)
                flat = torch.cat([m.weight.detach().abs().flatten() for _, m in linears])
                k = round(target * flat.numel())
                if k <= 0:
                    self.masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in linears}
                else:
                    threshold = flat.kthvalue(k).values
                    self.masks = {name: m.weight.abs() > threshold for name, m in linears}
            for name, m in linears:
                if name in self.masks:
                    m.weight.mul_(self.masks[name])

    def __call__(self, model, step: int, total_steps: int) -> None:
        """Recovery hook: after optimizer step ``step`` of ``total_steps``."""
        self.total_steps = total_steps
        if self.semi_structured:
            import torch

            with torch.no_grad():
                for name, m in encoder_linears(model):
                    if name in self.masks:
                        m.weight.mul_(self.masks[name])
        else:
            self.apply(model, step)


def sparsity_report(model, sparsity: float | str) -> dict[str, Any]:
    """Measured sparsity of the encoder's Linear weights (and the 2:4 check) of ``model``."""
    linears = encoder_linears(model)
    weights = sum(m.weight.numel() for _, m in linears)
    zeros = sum(int((m.weight == 0).sum()) for _, m in linears)
    total = sum(p.numel() for p in model.parameters())
    rec: dict[str, Any] = {
        "mode": "2:4" if sparsity == SEMI_STRUCTURED else "unstructured",
        "target": sparsity,
        "achieved": zeros / max(weights, 1),
        "zeros": zeros,
        "weights": weights,
        "of_all_parameters": zeros / max(total, 1),
    }
    if sparsity == SEMI_STRUCTURED:
        ok = all(int((m.weight.reshape(m.out_features, -1, 4) != 0).sum(-1).max()) <= 2
                 for _, m in linears if m.in_features % 4 == 0)
        rec["pattern_2_4_holds"] = ok
    return rec


def apply_sparsity(model, sparsity: float | str) -> dict[str, Any]:
    """One-shot sparsity (global magnitude ratio, or '2:4') on the encoder's Linear weights, in place.

    Returns the measured sparsity and the compressed (gzip) size of those weights before and after.
    """
    if sparsity != SEMI_STRUCTURED and not 0 <= float(sparsity) < 1:
        raise ConfigError(f"--sparsity {sparsity} is outside [0, 1)", hint="give a fraction such as 0.5, or 2:4")
    linears = encoder_linears(model)
    before = _gzip_size([m.weight for _, m in linears])
    sp = Sparsifier(sparsity)
    sp.apply(model)
    rec = sparsity_report(model, sparsity)
    rec["skipped"] = sp.skipped
    rec["gzip_bytes_before"] = before
    rec["gzip_bytes_after"] = _gzip_size([m.weight for _, m in linears])
    rec["dense_bytes"] = sum(m.weight.numel() * m.weight.element_size() for _, m in linears)
    return rec
