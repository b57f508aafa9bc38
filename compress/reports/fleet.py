"""A validation on several devices, written and shown: the fleet's report.json (a row per device, the overall
verdict), report.md, junit.xml (a suite per device), report.html (a row per device), and each judged device's own
report under ``devices/NAME/`` (the files ``validate`` writes for one device: what ``gate`` compares, device by
device)."""

from __future__ import annotations

import importlib.util
import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rich.console import Console

from compress.storage import staged_dir
from compress.validation.fleet import FleetReport, device_dir_name

log = logging.getLogger(__name__)
DEVICES = "devices"


def device_dirs(report: FleetReport) -> dict[str, str]:
    """Each device's folder under the report (names made safe; kept distinct)."""
    out: dict[str, str] = {}
    for d in report.devices:
        base = name = device_dir_name(d.name)
        i = 2
        while name in out.values():
            name, i = f"{base}-{i}", i + 1
        out[d.name] = name
    return out


def _summary(d) -> dict[str, Any]:
    """A device row's headline figures (from its report; empty when it was not judged)."""
    if d.report is None:
        return {}
    m, env = d.report.metrics, d.report.environment
    return {
        "metric_name": m.get("metric_name"), "metric": m.get("metric"), "agreement": m.get("agreement"),
        "retention": m.get("retention"), "p50_ms": (m.get("latency_ms") or {}).get("p50"),
        "speedup": m.get("speedup"), "cpu": env.get("cpu"), "machine": env.get("machine"),
        "host": env.get("host"), "runtime": " ".join(str(v) for v in ((env.get("runtime") or {}).get("runtime"),
                                                                       (env.get("runtime") or {}).get("version"))),
        "failed": [b.name for b in d.report.budgets if str(b.status) == "fail"],
        "unverified": [b.name for b in d.report.budgets if str(b.status) in ("unverified", "anomalous")],
    }


def fleet_dict(report: FleetReport) -> dict[str, Any]:
    """The fleet's report.json: every field but the devices' reports, which are files of their own (``report``:
    the path of each judged device's report.json, relative to the fleet's folder), and a ``summary`` per row."""
    dirs = device_dirs(report)
    out = report.model_dump(mode="json", exclude={"devices": {"__all__": {"report"}}})
    for row, d in zip(out["devices"], report.devices, strict=True):
        row["report"] = f"{DEVICES}/{dirs[d.name]}/report.json" if d.report is not None else None
        row["summary"] = _summary(d)
    return out


def fleet_markdown(report: FleetReport) -> str:
    rows = fleet_dict(report)["devices"]
    out = [f"# edgecompress validation on {len(rows)} devices: {report.verdict.upper()}", "",
           f"- artifact: `{report.artifact.get('path')}`", f"- devices: `{report.fleet}`"]
    if report.data:
        out.append(f"- eval data: `{report.data['path']}` ({report.data['rows']} rows)")
    out += ["", "| device | target | profile | verdict | metric | agreement | p50 ms | failed budgets | note |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]

        def num(v: Any) -> str:
            return "" if v is None else f"{v:.4g}"

        note = (r["message"] or "") + (f" (left {r['left_on_device']} on the device)" if r["left_on_device"] else "")
        out.append(f"| {r['name']} | `{r['target']}` | {r['profile']} | **{r['status'].upper()}** | "
                   f"{num(s.get('metric'))} | {num(s.get('agreement'))} | {num(s.get('p50_ms'))} | "
                   f"{', '.join(s.get('failed') or [])} | {note.replace('|', '/')} |")
    out += [""] + [f"- warning: {w}" for w in report.warnings]
    return "\n".join(out).rstrip() + "\n"


def fleet_junit(report: FleetReport) -> str:
    """One suite per device: its budgets (as one device's junit.xml), or one errored case when it did not answer."""
    from compress.reports.render import report_junit

    root = ET.Element("testsuites", name=f"edgecompress.validate.fleet ({report.verdict})")
    for d in report.devices:
        if d.report is not None:
            suite = ET.fromstring(report_junit(d.report).split("\n", 1)[1]).find("testsuite")
            suite.set("name", f"{suite.get('name')}.{d.name}")
        else:
            suite = ET.Element("testsuite", name=f"edgecompress.validate.{d.profile}.{d.name}", tests="1",
                               failures="0", errors="1", skipped="0", time=f"{d.seconds:.2f}")
            case = ET.SubElement(suite, "testcase", classname=f"devices.{d.profile}", name=d.name, time="0")
            ET.SubElement(case, "error", message=f"{d.status}: {d.message}", type=d.status).text = d.message
        root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_fleet_report(report: FleetReport, directory: Path | str, force: bool = False) -> Path:
    """Write the fleet's report.json, report.md, junit.xml, report.html (with jinja2 and matplotlib) and every judged
    device's report under devices/NAME/, into a new directory (staged, then renamed)."""
    from compress.reports.render import report_junit, report_markdown

    html = all(importlib.util.find_spec(m) is not None for m in ("jinja2", "matplotlib"))
    dirs = device_dirs(report)
    with staged_dir(directory, force) as tmp:
        data = fleet_dict(report)
        (tmp / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(fleet_markdown(report), encoding="utf-8")
        (tmp / "junit.xml").write_text(fleet_junit(report), encoding="utf-8")
        for name, dev in report.device_reports().items():
            d = tmp / DEVICES / dirs[name]
            d.mkdir(parents=True)
            (d / "report.json").write_text(dev.model_dump_json(indent=2) + "\n", encoding="utf-8")
            (d / "report.md").write_text(report_markdown(dev), encoding="utf-8")
            (d / "junit.xml").write_text(report_junit(dev), encoding="utf-8")
            if html:
                from compress.reports.html import write_validation_html

                write_validation_html(dev, d / "report.html")
        if html:
            from compress.reports.html import write_fleet_html

            write_fleet_html(data, tmp / "report.html")
        else:
            log.info("report.html skipped: pip install 'edgecompress[report]' (jinja2, matplotlib)")
    return Path(directory)


def render_fleet(report: FleetReport, console: Console) -> None:
    """The terminal's table: a row per device, then the overall verdict and why."""
    from rich.markup import escape
    from rich.table import Table

    colours = {"pass": "green", "unverified": "yellow", "anomalous": "magenta", "fail": "red",
               "unreachable": "red", "error": "red", "incomplete": "red"}
    console.print(f"[bold]{escape(str(report.artifact.get('path')))}[/] on {len(report.devices)} devices "
                  f"({escape(report.fleet)})")
    t = Table(title="devices", title_justify="left")
    for col in ("device", "profile", "measured on", "metric", "agreement", "p50 ms", "result", "note"):
        t.add_column(col, justify="right" if col in ("metric", "agreement", "p50 ms") else "left")
    for row in fleet_dict(report)["devices"]:
        s = row["summary"]

        def num(v: Any) -> str:
            return "" if v is None else f"{v:.4g}"

        where = f"{s.get('host')} ({s.get('machine')})" if s else row["target"]
        note = row["message"] or ", ".join(s.get("failed") or s.get("unverified") or [])
        c = colours.get(row["status"], "red")
        t.add_row(escape(row["name"]), escape(row["profile"]), escape(str(where)), num(s.get("metric")),
                  num(s.get("agreement")), num(s.get("p50_ms")), f"[{c}]{row['status'].upper()}[/]", escape(note))
    console.print(t)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    c = colours.get(report.verdict, "red")
    lost = ", ".join(d.name for d in report.lost)
    console.print(f"[bold {c}]{report.verdict.upper()}[/]" + (f": did not answer or failed there: {escape(lost)}"
                                                                  if lost else ""))
