"""The search's HTML page: the choice (or the diagnosis), the Pareto front, every trial; a forward pass's search also
its side-by-side timing. Each kind of search has its page (its template and plot), looked up by the summary's kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_search_html(search_dir: Path | str, summary: dict[str, Any]) -> Path:
    from compress.reports.html import template_env, write_page
    from compress.tasks import by_kind

    search_dir = Path(search_dir)
    template, context = by_kind(_PAGES, None, "the search's report", kind=summary["kind"])(search_dir, summary)
    html = template_env().get_template(template).render(title=f"search on {summary['profile']}", search=summary,
                                                        **context)
    return write_page(search_dir / "report.html", html)


def _forward_page(search_dir: Path, summary: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A forward pass's: p50 against retention, short and full fidelity; the chosen recipe."""
    from compress.reports.html import pareto

    measured = sorted(summary["measured"], key=lambda p: p["trial"])
    pts = [{**p, "label": f"#{p['trial']}" + (" full" if p["fidelity"] == "full" else "")} for p in measured]
    svg = pareto(pts, "every measured candidate (full: full-fidelity training)") if pts else None
    chosen = search_dir / "chosen.yaml"
    return "search.html.j2", {
        "measured": measured, "plots": [("all", svg)] if svg else [],
        "chosen_recipe": chosen.read_text(encoding="utf-8") if summary.get("chosen") and chosen.is_file() else ""}


def _generator_page(search_dir: Path, summary: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A causal LM's: decode tokens/s against the perplexity increase."""
    from compress.reports.html import pareto

    measured = sorted(summary["measured"], key=lambda p: p["trial"])
    pts = [{**p, "name": f"trial {p['trial']}", "label": f"#{p['trial']}"} for p in measured]
    svg = pareto(pts, "every measured candidate", x=("perplexity_increase", "perplexity increase (lower is better)"),
                 y=("decode_tokens_per_s", "decode tokens/s")) if pts else None
    return "search_generation.html.j2", {"measured": measured, "plots": [("all", svg)] if svg else []}


#: each kind of search's page (the summary's ``kind``: its space's, :class:`compress.search.space.Space`)
_PAGES = {"forward": _forward_page, "generation": _generator_page}
