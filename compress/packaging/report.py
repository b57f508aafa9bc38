"""The package report: where it goes, the terminal table, Markdown and JUnit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from compress.errors import OutputExistsError
from compress.packaging.config import MB, TOP_CONTRIBUTORS, Contributor, PackageReport
from compress.storage import check_output, staged_dir

log = logging.getLogger("compress.packaging.bundle")  # the verb's logger


# ----------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------


def report_paths(out: Path | str, report_dir: Path | str | None = None) -> tuple[Path, Path, Path]:
    """Where the JSON, Markdown and JUnit reports go: ``DIR/report.json|md`` and ``DIR/junit.xml`` (validate's
    names), or beside the zip (``X.report.json|md``, ``X.junit.xml``)."""
    if report_dir is not None:
        d = Path(report_dir)
        return d / "report.json", d / "report.md", d / "junit.xml"
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return (stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".report.md"),
            stem.with_name(stem.name + ".junit.xml"))


def check_report_output(out: Path | str, report_dir: Path | str | None, force: bool) -> None:
    """Fail early when a report would overwrite something without ``force``."""
    if report_dir is not None:
        check_output(report_dir, force, "--report-dir")
        return
    for p in report_paths(out):
        if p.exists() and not force:
            raise OutputExistsError(f"{p} already exists", hint="pass --force to replace it, or --report-dir DIR")


def write_package_report(report: PackageReport, out: Path | str, report_dir: Path | str | None = None,
                         force: bool = False) -> tuple[Path, Path, Path]:
    """Write ``report.json``, ``report.md`` and the JUnit XML (into ``report_dir``, staged, or beside the zip)."""
    from compress.reports.render import budgets_junit

    paths = report_paths(out, report_dir)
    texts = (report.model_dump_json(indent=2) + "\n", package_report_markdown(report),
             budgets_junit(f"edgecompress.package.{report.profile['name']}", report.profile["name"], report.budgets,
                           report.seconds))
    if report_dir is not None:
        with staged_dir(report_dir, force) as tmp:
            for path, text in zip(paths, texts):
                (tmp / path.name).write_text(text, encoding="utf-8")
        return paths
    for path, text in zip(paths, texts):
        if path.exists() and not force:
            raise OutputExistsError(f"{path} already exists", hint="pass --force to replace it")
        tmp = path.with_name(f".{path.name}.partial")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def _mb(v: float | int | None) -> str:
    return "—" if v is None else f"{v / MB:.2f}"


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "not measured"
    return f"{v:.2f} {unit}" if abs(v) < 100 else f"{v:.1f} {unit}"


def _cold_lines(report: PackageReport) -> list[str]:
    c = report.cold_start
    if not c:
        return ["cold start: not measured (--no-cold-start)"]
    if c.get("error") and not c.get("median"):
        return [f"cold start: FAILED — {c['error']}"]
    m = c["median"]
    lim = c.get("limits", {})
    f = report.function
    first = c.get("first_request") or {}
    what = f" (a generation of up to {first['max_new_tokens']} new tokens)" if "prompt" in first else ""
    lines = [
        f"cold start (median of {c['n']} fresh process{'es' if c['n'] != 1 else ''}): {m['total_ms']:.0f} ms from "
        f"process launch to the first result; phase medians: interpreter {m['interpreter_start_ms']:.0f}, imports "
        f"{m['imports_ms']:.0f}, tokenizer & session at module scope {m['session_ms']:.0f}, first request{what} "
        f"{m['first_inference_ms']:.0f} ms; peak RSS {m['peak_rss_mb']:.0f} MB (VmHWM)",
        f"limits: {f['memory_mb']} MB → {f['vcpus']:g} vCPU, {f['threads']} intra-op thread(s); "
        f"{lim.get('cpu_mechanism', '?')}; memory: {lim.get('memory_mechanism') or 'not enforced'}",
        f"measured on {c['measured_on']['host']} ({c['measured_on']['arch']}, CPython {c['measured_on']['python']}, "
        f"{c['measured_on']['cpu']}, load average {c['measured_on'].get('load_avg_1m')} on "
        f"{c['measured_on'].get('host_cores')} cores); dependencies: {c['dependencies']['source']}",
    ]
    if c.get("error"):
        lines.append(f"a later run failed: {c['error']}")
    return lines


def _dirs_label(k: Contributor) -> str:
    """The folders a dependency adds, where they are not simply its own name (numpy.libs, google, _yaml)."""
    if k.kind != "dependency":
        return ""
    own = k.name.replace("-", "_")
    extra = [t for t in k.top_level if t.lower() != own]
    if not extra:
        return ""
    return f" ({', '.join(extra[:3])}{'…' if len(extra) > 3 else ''})"


def render_package_report(report: PackageReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    b = report.bundle
    f = report.function
    console.print(
        f"[bold]{escape(b['path'])}[/] for [bold]{report.profile['name']}[/] ({escape(f['platform'])}, {f['arch']}, "
        f"Python {f['python']}): {_mb(b['zipped_bytes'])} MB zipped, {_mb(b['unzipped_bytes'])} MB unzipped"
        + ("" if b["complete"] else " [yellow](without dependencies)[/]")
    )
    t = Table(title="budgets", title_justify="left")
    for col in ("budget", "limit", "measured", "result"):
        t.add_column(col, justify="right" if col in ("limit", "measured") else "left")
    for r in report.budgets:
        res = "[green]PASS[/]" if r.passed else ("[red]FAIL[/]" if r.measured is not None else "[yellow]NOT MEASURED[/]")
        t.add_row(escape(r.name), f"{r.comparison} {_num(r.limit, r.unit)}", _num(r.measured, r.unit), res)
    console.print(t)
    total = max(1, b["unzipped_bytes"])
    c = Table(title=f"biggest contributors (top {TOP_CONTRIBUTORS} of {len(report.contributors)})", title_justify="left")
    for col in ("contributor", "version", "unzipped MB", "zipped MB", "share", "imported"):
        c.add_column(col, justify="right" if col in ("unzipped MB", "zipped MB", "share") else "left")
    for k in report.top_contributors():
        imp = {True: "yes", False: "[yellow]no[/]", None: "—"}[k.imported]
        label = k.name + _dirs_label(k)
        c.add_row(escape(label), k.version or "", _mb(k.unzipped_bytes), _mb(k.zipped_bytes),
                  f"{k.unzipped_bytes / total:.0%}", imp)
    console.print(c)
    for line in _cold_lines(report):
        console.print("  " + escape(line))
    for n in report.notes:
        console.print(f"[dim]note:[/] {escape(n)}")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    colour = {"pass": "green", "fail": "red"}.get(report.verdict, "yellow")
    bad = [r.name for r in report.budgets if not r.passed]
    console.print(f"[bold {colour}]{report.verdict.upper()}[/]" + (f": {escape(', '.join(bad))}" if bad else ""))


def package_report_markdown(report: PackageReport) -> str:
    b = report.bundle
    f = report.function
    a = report.artifact
    out = [
        f"# edgecompress package: {report.verdict.upper()}",
        "",
        f"- bundle: `{b['path']}` — **{_mb(b['zipped_bytes'])} MB zipped, {_mb(b['unzipped_bytes'])} MB unzipped**, "
        f"{b['files']} files, sha256 `{b['sha256'][:16]}…`" + ("" if b["complete"] else " (without dependencies)"),
        f"- artifact: `{a['path']}` ({a['format']}/{a['precision']}, {a['task']})",
        f"- profile: `{report.profile['name']}` — {f['platform']}, {f['arch']}, Python {f['python']}, "
        f"{f['memory_mb']} MB → {f['vcpus']:g} vCPU, {f['threads']} thread(s)",
    ]
    deps = report.dependencies
    if deps.get("measured"):
        out.append(f"- wheels: `{deps['command']}`")
    out += ["", "| budget | limit | measured | result |", "|---|---|---|---|"]
    for r in report.budgets:
        res = "PASS" if r.passed else ("FAIL" if r.measured is not None else "NOT MEASURED")
        out.append(f"| {r.name} | {r.comparison} {_num(r.limit, r.unit)} | {_num(r.measured, r.unit)} | {res} |")
    total = max(1, b["unzipped_bytes"])
    out += ["", f"## Biggest contributors (top {TOP_CONTRIBUTORS} of {len(report.contributors)})", "",
            "| contributor | version | unzipped MB | zipped MB | share | imported at cold start |",
            "|---|---|---:|---:|---:|---|"]
    for k in report.top_contributors():
        imp = {True: "yes", False: "no", None: "—"}[k.imported]
        out.append(f"| {k.name}{_dirs_label(k)} | {k.version or ''} | {_mb(k.unzipped_bytes)} | {_mb(k.zipped_bytes)} | "
                   f"{k.unzipped_bytes / total:.0%} | {imp} |")
    out += ["", "## Cold start", ""] + [f"- {line}" for line in _cold_lines(report)]
    c = report.cold_start
    if c and c.get("runs"):
        out += ["", "| run | interpreter ms | imports ms | session ms | first request ms | total ms | peak RSS MB |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for i, r in enumerate(c["runs"], 1):
            out.append(f"| {i} | {r['interpreter_start_ms']:.0f} | {r['imports_ms']:.0f} | {r['session_ms']:.0f} | "
                       f"{r['first_inference_ms']:.0f} | {r['total_ms']:.0f} | {r['peak_rss_mb']:.0f} |")
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    if report.warnings:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(out) + "\n"
