"""Self-contained HTML reports: one file per validation, one per run, with no network and no CDN.

Rendered with Jinja2 (autoescaped template ``compress/reports/templates/report.html.j2``); plots are drawn with matplotlib's
Agg backend and inlined as SVG, so the file opens anywhere, offline, and prints. What each page shows:

* the verdict and every budget at a glance (limit, measured, pass/fail/unverified, estimated figures labelled);
* the latency distribution (CDF of every timed call) of the artifact against its FP32 baseline timed alongside,
  and against the gate's baseline when there is one;
* what takes the bytes (the size breakdown recorded at validation), accuracy, retention and agreement;
* for a run, a Pareto plot of every validated artifact (p50 × retention, marker area ∝ size) and the jobs table;
* the provenance: lineage with each step's time and settings, versions, content hashes, where each number was
  measured or that it was estimated.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from compress._optional import require
from compress.host.load import host_load_line

TEMPLATE = "report.html.j2"
COLORS = {"artifact": "#1f6feb", "baseline": "#8b949e", "gate baseline": "#d29922"}


def template_env():
    require("jinja2", "the HTML report")
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("compress.reports", "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["mb"] = lambda b: f"{b / 2**20:.2f} MB" if b >= 2**20 else f"{b / 1024:.1f} KB"
    env.filters["num"] = _num
    return env


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | float):
        return f"{v:.{digits}g}"
    return str(v)


def _pyplot():
    require("matplotlib", "the HTML report's plots")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none", "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined


def latency_cdf(series: dict[str, list[float]], title: str) -> str | None:
    """CDF of each series' timed calls (ms), medians marked."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    for name, xs in series.items():
        xs = np.sort(np.asarray(xs, dtype=float))
        ys = np.arange(1, len(xs) + 1) / len(xs)
        color = COLORS.get(name, None)
        ax.step(xs, ys, where="post", label=f"{name} (n={len(xs)}, p50 {np.median(xs):.2f} ms)", color=color)
        ax.axvline(float(np.median(xs)), color=color, lw=0.8, ls=":")
    ax.set_xlabel("latency per call, ms")
    ax.set_ylabel("share of calls ≤ x")
    ax.set_title(title, loc="left")
    if max(max(v) for v in series.values()) / max(min(min(v) for v in series.values()), 1e-9) > 20:
        ax.set_xscale("log")
    ax.legend(loc="lower right", frameon=False)
    ax.grid(alpha=0.3)
    return _svg(fig)


def size_bars(rows: list[dict[str, Any]]) -> str | None:
    if not rows:
        return None
    plt = _pyplot()
    rows = rows[:8]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(rows) + 0.6))
    names = [r["part"] for r in rows][::-1]
    vals = [r["bytes"] / 2**20 for r in rows][::-1]
    ax.barh(names, vals, color="#1f6feb")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f} MB", va="center", fontsize=8)
    ax.set_xlabel("MB")
    ax.set_xlim(0, max(vals) * 1.25 if max(vals) else 1)
    return _svg(fig)


def pareto(points: list[dict[str, Any]], title: str, x: tuple[str, str] = ("p50_ms", "p50 latency, ms (lower is better)"),
           y: tuple[str, str] = ("retention", "accuracy retention")) -> str | None:
    """Every validated artifact: ``x`` (a key, lower is better, and its axis label; p50) against ``y`` (higher is
    better; retention), marker area ∝ size; the Pareto front ringed."""
    (xk, x_label), (yk, y_label) = x, y
    pts = [p for p in points if p.get(xk) is not None and p.get(yk) is not None]
    if not pts:
        return None
    plt = _pyplot()
    front = pareto_front(pts, xk, yk)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    sizes = [max(p.get("size_mb") or 1.0, 0.1) for p in pts]
    scale = 900 / max(sizes)
    for p, s in zip(pts, sizes):
        on = p["name"] in front
        ax.scatter(p[xk], p[yk], s=max(s * scale, 20), alpha=0.55,
                   color="#1f6feb" if on else "#8b949e", edgecolor="black" if on else "none", lw=1)
        est = " (est.)" if p.get("estimated") else ""
        ax.annotate(f"{p['label']}{est}\n{s:.1f} MB", (p[xk], p[yk]), fontsize=7,
                    xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, loc="left")
    ax.grid(alpha=0.3)
    ax.margins(0.25)
    return _svg(fig)


def pareto_front(points: list[dict[str, Any]], x: str = "p50_ms", y: str = "retention") -> set[str]:
    """Names of the points no other point beats on ``x`` (lower is better: p50), size and ``y`` (higher is better:
    retention) at once."""
    def beats(a, b):
        ge = a[x] <= b[x] and (a.get("size_mb") or 0) <= (b.get("size_mb") or 0) and a[y] >= b[y]
        gt = a[x] < b[x] or (a.get("size_mb") or 0) < (b.get("size_mb") or 0) or a[y] > b[y]
        return ge and gt

    return {p["name"] for p in points if not any(beats(q, p) for q in points if q is not p)}


# -- a validation ----------------------------------------------------------------------------------------------


def validation_context(report: dict[str, Any], gate_baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the template shows for one validation report (``report.json`` as a dict)."""
    m = report.get("metrics") or {}
    samples = dict(m.get("latency_samples_ms") or {})
    if gate_baseline:
        gb = ((gate_baseline.get("metrics") or {}).get("latency_samples_ms") or {}).get("artifact")
        if gb:
            samples["gate baseline"] = gb
    art = report.get("artifact") or {}
    prof = report.get("profile") or {}
    env = report.get("environment") or {}
    shape = m.get("input_shape") or {}
    return {
        "report": report, "metrics": m, "artifact": art, "profile": prof, "environment": env,
        "budgets": report.get("budgets") or [], "warnings": report.get("warnings") or [],
        "latency_svg": latency_cdf(samples, f"latency at {'x'.join(str(v) for v in shape.values()) or 'the profile shape'}"),
        "size_svg": size_bars(art.get("size_breakdown") or []),
        "estimated": bool(m.get("estimate")) or any(b.get("estimated") for b in report.get("budgets") or []),
        "accuracy": _accuracy_rows(m),
        "host_load": host_load_line(report.get("host_load")),
    }


def _accuracy_rows(m: dict[str, Any]) -> list[tuple[str, Any]]:
    name = m.get("metric_name") or "metric"
    keys = [("metric", f"artifact {name}"), ("teacher_metric", f"teacher {name}"),
            ("retention", "retention (artifact / teacher)"), ("agreement", "agreement with the teacher"),
            ("top5", "artifact top-5"), ("teacher_top5", "teacher top-5"), ("macro_f1", "artifact macro F1"),
            ("teacher_macro_f1", "teacher macro F1"), ("cosine_min", "lowest cosine to the teacher"),
            ("eval_samples", "eval rows")]
    gen = m.get("generation") or {}
    gen_keys = [("decode_tokens_per_s", "decode tokens/s"), ("baseline_decode_tokens_per_s", "FP32 decode tokens/s"),
                ("prefill_tokens_per_s", "prefill tokens/s"), ("perplexity", "artifact perplexity"),
                ("teacher_perplexity", "teacher perplexity"), ("perplexity_increase", "perplexity increase"),
                ("kl_mean", "KL to the teacher (nats)"), ("top1_agreement", "top-1 agreement"),
                ("continuation_agreement", "continuation agreement")]
    rows = [(label, m[k]) for k, label in keys if m.get(k) is not None]
    if gen.get("time_to_first_token_ms"):
        rows.append(("time to first token p50 (ms)", gen["time_to_first_token_ms"]["p50"]))
    return rows + [(label, gen[k]) for k, label in gen_keys if gen.get(k) is not None]


def write_validation_html(report: dict[str, Any] | Any, path: Path | str, gate_baseline: dict | None = None) -> Path:
    """One self-contained HTML page for a validation report."""
    if hasattr(report, "model_dump"):
        report = report.model_dump(mode="json")
    html = template_env().get_template(TEMPLATE).render(kind="validation", title=_title(report),
                                                 v=validation_context(report, gate_baseline), run=None)
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path


def _title(report: dict[str, Any]) -> str:
    a = report.get("artifact") or {}
    return f"{Path(a.get('path', 'artifact')).name} on {(report.get('profile') or {}).get('name')}: {report.get('verdict', '').upper()}"


# -- a validation on several devices ---------------------------------------------------------------------------


def write_fleet_html(fleet: dict[str, Any], path: Path | str) -> Path:
    """The page of a validation on several devices (the fleet's report.json as a dict): the overall verdict, a row
    per device (its verdict, headline figures, why it did not answer), each linking to its own page."""
    rows = fleet.get("devices") or []
    for r in rows:  # the device's own page, beside its report.json
        r["page"] = r["report"].rsplit("/", 1)[0] + "/report.html" if r.get("report") else None
    title = f"{Path((fleet.get('artifact') or {}).get('path', 'artifact')).name} on {len(rows)} devices: " \
            f"{fleet.get('verdict', '').upper()}"
    html = template_env().get_template(TEMPLATE).render(kind="fleet", title=title, fleet=fleet, v=None, run=None)
    return write_page(Path(path), html)


# -- a run -----------------------------------------------------------------------------------------------------


def run_context(run_dir: Path, index: dict[str, Any]) -> dict[str, Any]:
    validations = []
    gates = {g["name"]: g for g in (index.get("gate") or {}).get("results", [])}
    for j in index.get("jobs", []):
        if j.get("verb") != "validate" or not j.get("report"):
            continue
        report = json.loads((run_dir / j["report"]).read_text(encoding="utf-8"))
        g = gates.get(j["name"])
        baseline = None
        if g and g.get("baseline") and g["baseline"] != str(run_dir / j["report"]) and Path(g["baseline"]).is_file():
            baseline = json.loads(Path(g["baseline"]).read_text(encoding="utf-8"))  # its latency joins the plot
        validations.append({"job": j, "gate": g, "v": validation_context(report, baseline)})
    points = []
    for item in validations:
        j, m = item["job"], item["v"]["metrics"]
        lat = m.get("latency_ms") or {}
        points.append({"name": j["name"], "label": j["name"].split("/", 1)[1], "p50_ms": lat.get("p50"),
                       "retention": m.get("retention"), "size_mb": m.get("size_mb"),
                       "estimated": bool(lat.get("estimated")), "profile": (item["v"]["profile"] or {}).get("name")})
    by_profile: dict[str, list] = {}
    for p in points:
        by_profile.setdefault(p["profile"], []).append(p)
    plots = [(prof, pareto(pts, f"every artifact on {prof}")) for prof, pts in by_profile.items()]
    packages = []
    for j in index.get("jobs", []):
        if j.get("verb") == "package" and j.get("report"):
            packages.append({"job": j, "report": json.loads((run_dir / j["report"]).read_text(encoding="utf-8"))})
    return {"index": index, "validations": validations, "pareto": [(p, s) for p, s in plots if s],
            "front": pareto_front([p for p in points if p["p50_ms"] is not None and p["retention"] is not None]),
            "packages": packages, "gate": index.get("gate")}


def write_run_html(run_dir: Path | str, index: dict[str, Any]) -> Path:
    """The run's page: verdict, jobs, Pareto plot, each validation in full, packages, gate, provenance."""
    run_dir = Path(run_dir)
    html = template_env().get_template(TEMPLATE).render(kind="run", title=f"run {index.get('recipe')}: "
                                                 f"{(index.get('verdict') or '').upper()}", run=run_context(run_dir, index), v=None)
    return write_page(run_dir / "report.html", html)


def write_page(path: Path, html: str) -> Path:
    """Write a page whole or not at all (a run's or a search's page is rewritten as it goes)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
