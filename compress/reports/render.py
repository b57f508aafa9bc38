"""Rendering: manifests for ``inspect``, validation reports as a table, JSON, Markdown and JUnit XML."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

from compress.host.load import host_load_line
from compress.storage import staged_dir
from compress.tasks.embeddings import pooling_of

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from rich.console import Console

    from compress.artifact import Artifact
    from compress.profiles.budgets import BudgetResult
    from compress.validation.common import ValidationReport



def shape_text(shape: dict) -> str:
    """``1x64`` (batch x sequence), ``1x3x32x32`` (batch x channels x height x width) or ``1 x (window 6x64, feats 8)``
    (batch x each input's sample shape)."""
    if "inputs" in shape:
        return f"{shape.get('batch_size')} x ({', '.join(f'{k} {v}' for k, v in shape['inputs'].items())})"
    if "new_tokens" in shape:  # a text generator: batch x prompt, then the tokens generated
        return f"{shape.get('batch_size')}x{shape.get('prompt_tokens')} + {shape['new_tokens']} new tokens"
    keys = ("batch_size", "sequence_length") if "sequence_length" in shape else ("batch_size", "channels", "height", "width")
    return "x".join(str(shape.get(k)) for k in keys)

def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if unit in ("", "x"):
            s = f"{v:.4f}" if abs(v) <= 1.5 else f"{v:.2f}"
        else:
            s = f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"
        return f"{s} {unit}".strip()
    return f"{v} {unit}".strip()


def render_manifest(art: Artifact, console: Console, verified: bool | None = True) -> None:
    """``verified`` None: a model file described as ``export`` would adopt it (not an artifact yet)."""
    from rich.markup import escape
    from rich.table import Table

    m = art.manifest
    if verified is None:
        console.print(f"[bold]{escape(str(art.model_path))}[/]  (a model file, as `edgecompress export` would adopt it)")
    else:
        console.print(f"[bold]{escape(str(art.path))}[/]  ({'sha256 verified' if verified else 'not verified'})")
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="dim")
    head.add_column()
    head.add_row("task", str(m.task))
    head.add_row("format / precision", f"{m.format} / {m.precision}")
    if m.labels:
        head.add_row("labels", ", ".join(f"{i}={n}" for i, n in enumerate(m.labels)))
    pooling, normalize = pooling_of(m.postprocess)
    if pooling:
        head.add_row("pooling", f"{pooling}{' + L2 normalise' if normalize else ''}")
    cache = getattr(m.postprocess, "cache", None)  # a text generator's KV cache, BOS/EOS
    if cache is not None:
        head.add_row("KV cache", f"{cache.layers} layers x {cache.kv_heads} KV heads x {cache.head_size} "
                     f"({cache.dtype}, {cache.layout}; {cache.bytes_per_token() / 1024:.1f} KiB per token, up to "
                     f"{cache.max_length} tokens)")
        head.add_row("BOS / EOS", f"{m.postprocess.bos_token_id} / {m.postprocess.eos_token_id}")
    if len(m.entries) == 1:
        head.add_row("model file", f"{m.model_file} ({art.size_bytes() / 2**20:.1f} MB)")
    else:  # a model of several entry points (an encoder and a decoder): each one's file or program method
        head.add_row("entries", ", ".join(f"{e.role}: {e.file}{f' ({e.method})' if e.method else ''}"
                                          for e in m.entries) + f" ({art.size_bytes() / 2**20:.1f} MB)")
    if m.preprocess.kind == "image":
        pp = m.preprocess
        crop = f", crop {pp.crop[0]}x{pp.crop[1]}" if pp.crop else ""
        head.add_row("preprocess", f"{pp.resize} resize to {'x'.join(map(str, pp.size))} ({pp.interpolation}){crop}, "
                     f"{pp.channels} {pp.layout}, mean {pp.mean}, std {pp.std}")
    else:
        head.add_row("max length", str(m.max_length))
    head.add_row("source", f"{m.source.path} ({m.source.architecture}, sha256 {m.source.sha256[:12]}…)")
    head.add_row("schema", f"v{m.schema_version}, created {m.created}")
    head.add_row("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items() if v))
    console.print(head)

    tensors = Table(title="tensors", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        tensors.add_column(col)
    for e in m.entries:
        role = f"{e.role} " if len(m.entries) > 1 else ""
        for kind, specs in (("input", e.inputs), ("output", e.outputs)):
            for t in specs:
                tensors.add_row(role + kind, t.name, t.dtype, escape("[" + ", ".join(str(d) for d in t.shape) + "]"))
    console.print(tensors)

    steps = Table(title="lineage", title_justify="left")
    for col in ("#", "stage", "config", "checks", "seconds"):
        steps.add_column(col)
    for i, s in enumerate(m.steps, 1):
        cfg = ", ".join(f"{k}={v}" for k, v in _dotted(s.config) if v is not None and v != [] and v != {})
        checks = _summarise_metrics(s.metrics)
        steps.add_row(str(i), s.stage, escape(cfg), escape(checks), f"{s.seconds:.1f}")
    console.print(steps)

    files = Table(title="files", title_justify="left")
    files.add_column("file")
    files.add_column("bytes", justify="right")
    files.add_column("sha256")
    for name, digest in m.files.items():
        p = art.path / name
        files.add_row(name, f"{p.stat().st_size:,}" if p.exists() else "missing", digest[:16] + "…")
    console.print(files)


def _dotted(config: dict, prefix: str = ""):
    """A step's recorded settings as (dotted path, value): a section's options by their paths (``recovery.steps``)."""
    for k, v in config.items():
        if isinstance(v, dict) and v:
            yield from _dotted(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def _summarise_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key in ("parity", "parity_vs_input"):
        if key in metrics:
            p = metrics[key]
            s = f"{key}: max|Δ| {p['max_abs_diff']:.2e}, min cos {p['cosine_min']:.4f}"
            if "argmax_agreement" in p:
                s += f", agree {p['argmax_agreement']:.3f}"
            parts.append(s)
    if "compression" in metrics:
        parts.append(f"{metrics['compression']:.2f}x smaller")
    return "; ".join(parts)


# -- validation reports -------------------------------------------------------------------------

def _ci(lat: dict[str, Any], key: str) -> str:
    ci = (lat.get("ci95") or {}).get(key)
    return f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else ""


def _status(b: BudgetResult) -> str:
    """pass / fail / unverified (reports written before statuses existed have only ``passed``)."""
    status = getattr(b, "status", None)
    return str(status) if status is not None else ("pass" if b.passed else "fail")


def _measured_cell(b: BudgetResult) -> str:
    if b.measured is None:
        return "not measured"
    if getattr(b, "estimated", False):
        return f"≈ {_fmt(b.measured, b.unit)} (estimated)"
    return _fmt(b.measured, b.unit)


def _figure(b: BudgetResult) -> str:
    """An UNVERIFIED budget's figure: the estimate, or this host's measurement standing in for the device's."""
    if b.measured is None:
        return "no estimate"
    if getattr(b, "estimated", False):
        return f"estimated ≈ {_fmt(b.measured, b.unit)}"
    return f"{_fmt(b.measured, b.unit)} measured on this host"


def _device_line(report: ValidationReport) -> str | None:
    """Where the timings come from when that is not simply 'the profiled device'."""
    met, env = report.metrics, report.environment
    dm = env.get("device_match") or {}
    if met.get("not_run"):
        return (f"NOT RUN ({met['not_run']}): latency, throughput and speedup are an {met.get('measured_on')}; "
                "accuracy, agreement, cold start and peak memory were not measured; the size was")
    if met.get("estimated"):
        return (f"ESTIMATED: latency, throughput, speedup and cold start come from an {met.get('measured_on')}, not "
                f"measurements ({dm.get('reason', 'this machine is not the device')}); accuracy, agreement, size "
                "and peak memory were measured on this host")
    if dm.get("how") == "class":
        return f"measured on this host's CPU ({dm.get('host_model')}): {report.profile['name']} describes a class of CPUs"
    return None


def render_report(report: ValidationReport, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    met = report.metrics
    a = report.artifact
    console.print(
        f"[bold]{escape(a['path'])}[/] ({a['format']}/{a['precision']}) on profile [bold]{report.profile['name']}[/] "
        f"— {report.environment['runtime'].get('runtime')} {report.environment['runtime'].get('version')}, "
        f"{report.environment['cpu']}"
    )
    if (load := host_load_line(report.host_load)) is not None:
        console.print(f"[magenta]{escape(load)}[/]" if report.host_load.get("busy") else f"[dim]{escape(load)}[/]")
    t = Table(title="budgets", title_justify="left")
    for col in ("budget", "limit", "measured", "result"):
        t.add_column(col, justify="right" if col in ("limit", "measured") else "left")
    for b in report.budgets:
        res = {"pass": "[green]PASS[/]", "unverified": "[yellow]UNVERIFIED[/]",
               "anomalous": "[magenta]ANOMALOUS[/]"}.get(_status(b), "[red]FAIL[/]")
        t.add_row(b.name, f"{b.comparison} {_fmt(b.limit, b.unit)}", _measured_cell(b), res)
    console.print(t)
    if (device := _device_line(report)) is not None:
        console.print(f"  [yellow]{escape(device)}[/]" if report.metrics.get("estimated") else f"  {escape(device)}")
    lat = met.get("latency_ms", {})
    lines = []
    if "metric" in met:
        tm = met.get("teacher_metric")
        lines.append(
            f"{met.get('metric_name')}: {met['metric']:.4f}" + (f" (teacher {tm:.4f}, retention "
                                                                 f"{met['retention']:.4f})" if tm else "")
        )
    if "agreement" in met:
        lines.append(f"agreement with teacher: {met['agreement']:.4f} on {met.get('eval_samples')} samples")
    for name, f in (met.get("output_fidelity") or {}).items():
        lines.append(f"output {name} vs teacher: cosine {f['cosine']:.4f} (lowest {f['cosine_min']:.4f}), SNR "
                     f"{f['snr_db']:.1f} dB, max |error| {f['max_abs_error']:.3g}")
    if worst := (met.get("layer_errors") or {}).get("layers"):
        if hurts := met["layer_errors"].get("hurts_most"):
            lines.append(f"layer that adds the most error when quantized: {hurts[0]['node']} ({hurts[0]['op_type']}, "
                         f"own SNR {hurts[0]['own_snr_db']:.1f} dB); table in report.md")
        lines.append(f"lowest layer SNR: {worst[0]['node']} ({worst[0]['op_type']}, SNR {worst[0]['snr_db']:.1f} dB, "
                     f"cosine {worst[0]['cosine']:.4f})")
    if lat.get("estimated"):
        shape, e = met["input_shape"], met.get("estimate", {})
        lines.append(
            f"latency @ {shape_text(shape)}: ≈ {lat['p50']:.2f} ms (estimated; "
            f"compute {e.get('compute_ms', 0):.2f}, memory {e.get('memory_ms', 0):.2f}, per-operator "
            f"{e.get('overhead_ms', 0):.2f} ms; {e.get('gflops', 0):.2f} GFLOP + {e.get('int8_gops', 0):.2f} GOP int8); "
            f"≈ {met['throughput']:.1f} samples/s (estimated)"
        )
    elif lat:
        shape = met["input_shape"]
        lines.append(
            f"latency @ {shape_text(shape)}: p50 {lat['p50']:.2f} ms{_ci(lat, 'p50')}, "
            f"p95 {lat['p95']:.2f}{_ci(lat, 'p95')}, p99 {lat['p99']:.2f}{_ci(lat, 'p99')} "
            f"(n={lat['n']}, CV {lat['cv']:.1%}, nearest-rank, 95% CI); {met['throughput']:.1f} "
            + ("tokens/s (decode step)" if met.get("generation") else "samples/s")
        )
    if met.get("baseline_latency_ms", {}).get("estimated"):
        lines.append(
            f"teacher FP32 on the same runtime: ≈ {met['baseline_latency_ms']['p50']:.2f} ms (estimated) → speedup "
            f"≈ {met['speedup']:.2f}x (estimated)"
        )
    elif "baseline_latency_ms" in met:
        lines.append(
            f"{met.get('speedup_baseline', 'teacher FP32 on the same runtime')}: p50 "
            f"{met['baseline_latency_ms']['p50']:.2f} ms → speedup "
            f"{met['speedup']:.2f}x"
        )
    if "cold_start" in met:
        c = met["cold_start"]
        lines.append(
            f"cold start {c['process_wall_ms']:.0f} ms from process launch (runtime import {c['import_ms']:.0f}, "
            f"session {c['session_create_ms']:.0f}, first inference {c['first_inference_ms']:.0f}); "
            f"peak RSS {c['peak_rss_mb']:.0f} MB" + (" — on this host" if "cold_start_ms_this_host" in met else "")
        )
        if met.get("cold_start_ms") is not None and "cold_start_ms_this_host" in met:
            lines.append(f"cold start on {report.profile['name']}: ≈ {met['cold_start_ms']:.0f} ms (estimated: this "
                         "host's start-up scaled by clock, plus the estimated inference)")
    if met.get("generation"):  # a text generator: tokens/s, TTFT, perplexity, continuations (ms above: per token)
        from compress.validation.generation import summary_lines

        lines += summary_lines(met)
    lines.append(f"model size {met['size_mb']:.1f} MB")
    for line in lines:
        console.print("  " + line)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    colour = {"pass": "green", "unverified": "yellow", "anomalous": "magenta"}.get(report.verdict, "red")
    failed = [b.name for b in report.budgets if _status(b) == "fail"]
    noisy = [b.name for b in report.budgets if _status(b) == "anomalous"]
    unverified = [b.name for b in report.budgets if _status(b) == "unverified"]
    tail = ", ".join(failed) if failed else (f"{', '.join(noisy)} too noisy to judge" if noisy else (
        f"{', '.join(unverified)} not judged (not measured on the device, or under emulation)" if unverified else ""))
    console.print(f"[bold {colour}]{report.verdict.upper()}[/]" + (f": {tail}" if tail else ""))


def report_markdown(report: ValidationReport) -> str:
    a = report.artifact
    met = report.metrics
    out = [
        f"# edgecompress validation: {report.verdict.upper()}",
        "",
        f"- artifact: `{a['path']}` ({a['format']}/{a['precision']}, steps: {' → '.join(a['steps']) or 'none'})",
        f"- profile: `{report.profile['name']}` — {report.profile.get('description', '').strip()}",
        f"- measured on: {report.environment['host']} ({report.environment['cpu']}), "
        f"{report.environment['runtime'].get('runtime')} {report.environment['runtime'].get('version')}, "
        f"threads {report.environment['runtime'].get('threads')}",
    ]
    if (load := host_load_line(report.host_load)) is not None:
        out.append(f"- host load: {'**busy**' if report.host_load.get('busy') else 'quiet'} — {load}")
    if (data := report.data) is not None:
        out.append(f"- eval data: `{data['path']}` ({data['rows']} rows, sha256 {data['sha256'][:12]}…)")
    if (device := _device_line(report)) is not None:
        out.append(f"- **{device.split(':', 1)[0]}**:{device.split(':', 1)[1]}" if device.startswith("ESTIMATED")
                   else f"- {device}")
    out += [
        "",
        "| budget | limit | measured | result |",
        "|---|---|---|---|",
    ]
    for b in report.budgets:
        out.append(
            f"| {b.name} | {b.comparison} {_fmt(b.limit, b.unit)} | {_measured_cell(b)} | {_status(b).upper()} |"
        )
    out += fidelity_markdown(met)
    if met.get("generation"):
        from compress.validation.generation import diverging_markdown, summary_lines

        out += ["", "## Generation", ""] + [f"- {line}" for line in summary_lines(met)] + diverging_markdown(met)
    out += ["", "## Metrics", "", "```json", json.dumps(met, indent=2, default=str), "```"]
    if report.warnings:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(out) + "\n"


def fidelity_markdown(met: dict[str, Any]) -> list[str]:
    """What quantization changed: each output against the teacher, and the per-layer table, worst first."""
    out: list[str] = []
    if fid := met.get("output_fidelity"):
        out += ["", "## Outputs against the teacher", "", "| output | cosine (mean) | cosine (lowest) | SNR dB | "
                "max abs error | top-1 agreement |", "|---|---|---|---|---|---|"]
        for name, f in fid.items():
            top1 = f"{f['top1_agreement']:.4f}" if "top1_agreement" in f else "—"
            out.append(f"| {name} | {f['cosine']:.4f} | {f['cosine_min']:.4f} | {f['snr_db']:.1f} | "
                       f"{f['max_abs_error']:.3g} | {top1} |")
    if (table := met.get("layer_errors")) and table.get("layers"):
        out += ["", f"## Where quantization changed the model ({table['samples']} calibration samples, worst first)", "",
                table.get("definition", ""), "", "| node | op | SNR dB | cosine | own SNR dB |", "|---|---|---|---|---|"]
        out += [f"| `{r['node']}` | {r['op_type']} | {r['snr_db']:.1f} | {r['cosine']:.4f} | "
                f"{_own(r)} |" for r in table["layers"]]
        if hurts := table.get("hurts_most"):
            out += ["", "Adds the most error itself (lowest own SNR first): " + ", ".join(
                f"`{r['node']}` ({_own(r)} dB)" for r in hurts)]
    return out


def report_junit(report: ValidationReport) -> str:
    return budgets_junit(f"edgecompress.validate.{report.profile['name']}", report.profile["name"], report.budgets,
                         report.seconds)


def budgets_junit(suite_name: str, profile: str, budgets: list[BudgetResult], seconds: float) -> str:
    """JUnit XML with one test case per budget: failed budgets fail, UNVERIFIED and ANOMALOUS ones are skipped with
    the figure and the reason (validate and package both write it)."""
    failures = sum(_status(b) == "fail" for b in budgets)
    skipped = sum(_status(b) in ("unverified", "anomalous") for b in budgets)
    suite = ET.Element(
        "testsuite", name=suite_name, tests=str(len(budgets)),
        failures=str(failures), errors="0", skipped=str(skipped), time=f"{seconds:.2f}",
    )
    for b in budgets:
        case = ET.SubElement(suite, "testcase", classname=f"budgets.{profile}", name=b.name, time="0")
        if _status(b) in ("unverified", "anomalous"):  # not a verdict: CI shows it as skipped, with the figure
            figure = _figure(b)
            msg = (f"{b.name}: {_status(b).upper()}, {figure} vs {b.comparison} {_fmt(b.limit, b.unit)}"
                   + (f" ({b.note})" if b.note else ""))
            ET.SubElement(case, "skipped", message=msg).text = msg
        elif not b.passed:
            msg = (f"{b.name}: measured {_fmt(b.measured, b.unit)}, allowed {b.comparison} {_fmt(b.limit, b.unit)}"
                   if b.measured is not None else f"{b.name}: {b.note}")
            ET.SubElement(case, "failure", message=msg, type="BudgetFailed").text = msg
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_report(report: ValidationReport, directory: Path | str, force: bool = False) -> Path:
    """Write report.json, report.md, junit.xml and report.html (when the `report` extra is installed: jinja2 and
    matplotlib) into a new directory (staged, then renamed)."""
    import importlib.util

    with staged_dir(directory, force) as tmp:
        (tmp / "report.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(report), encoding="utf-8")
        (tmp / "junit.xml").write_text(report_junit(report), encoding="utf-8")
        if all(importlib.util.find_spec(m) is not None for m in ("jinja2", "matplotlib")):
            from compress.reports.html import write_validation_html

            write_validation_html(report, tmp / "report.html")
        else:
            log.info("report.html skipped: pip install 'edgecompress[report]' (jinja2, matplotlib)")
    return Path(directory)


def failed_summary(budgets: list[BudgetResult]) -> str:
    return ", ".join(
        f"{b.name} ({_fmt(b.measured, b.unit) if b.measured is not None else 'not measured'} vs "
        f"{b.comparison} {_fmt(b.limit, b.unit)})"
        for b in budgets if _status(b) == "fail"
    )


def unverified_names(budgets: list[BudgetResult]) -> list[str]:
    return [b.name for b in budgets if _status(b) == "unverified"]


def unverified_summary(budgets: list[BudgetResult]) -> str:
    """The budgets judged from estimates, with their estimated figures."""
    return ", ".join(
        f"{b.name} ({_figure(b)} vs "
        f"{b.comparison} {_fmt(b.limit, b.unit)})"
        for b in budgets if _status(b) == "unverified"
    )


def _own(row: dict) -> str:
    return f"{row['own_snr_db']:.1f}" if row.get("own_snr_db") is not None else "—"
