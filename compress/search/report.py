"""The search's HTML page: the choice (or the diagnosis), the Pareto front, the side-by-side timing, every trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_search_html(search_dir: Path | str, summary: dict[str, Any]) -> Path:
    from compress.reports.html import pareto, template_env, write_page

    search_dir = Path(search_dir)
    measured = sorted(summary["measured"], key=lambda p: p["trial"])
    pts = [{**p, "label": f"#{p['trial']}" + (" full" if p["fidelity"] == "full" else "")} for p in measured]
    svg = pareto(pts, "every measured candidate (full: full-fidelity training)") if pts else None
    plots = [("all", svg)] if svg else []
    chosen = search_dir / "chosen.yaml"
    html = template_env().get_template("search.html.j2").render(
        title=f"search on {summary['profile']}", search=summary, measured=measured, plots=plots,
        chosen_recipe=chosen.read_text(encoding="utf-8") if summary.get("chosen") and chosen.is_file() else "")
    return write_page(search_dir / "report.html", html)
