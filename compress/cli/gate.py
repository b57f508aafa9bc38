from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import console


@click.command("gate")
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--baseline", "-b", required=True, type=click.Path(path_type=Path),
              help="The last release's report.json (or its report directory), or its run directory (edgecompress run).")
@click.option("--threshold", type=float, default=0.10, show_default=True,
              help="Relative change of the median latency that counts (both it and the rank test must agree).")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="Significance level of the Mann-Whitney U (latency) and McNemar (accuracy) tests.")
@click.option("--raw-latency", is_flag=True,
              help="Compare raw timings instead of timings relative to the FP32 baseline timed alongside in each report.")
@click.option("--markdown", type=click.Path(path_type=Path), help="Write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--junit", type=click.Path(path_type=Path), help="Write a JUnit XML file.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the result as JSON.")
def gate_cmd(new, baseline, threshold, alpha, raw_latency, markdown, junit, json_out):
    """Is report NEW worse than BASELINE beyond noise? Tests, not two numbers compared.

    NEW and BASELINE are two validation reports, or two run directories of `edgecompress run`
    (every validation of NEW is gated against the same artifact @ profile of BASELINE), or two
    reports of a validation on several devices (validate --remote A,B or a fleet file: each
    device against the same device of BASELINE; one that did not answer now is not comparable).

    \b
    Latency: median slower by more than --threshold AND a one-sided Mann-Whitney U test on
             the timed calls below --alpha, both relative to the FP32 baseline timed
             alongside in each report (--raw-latency: raw); accuracy: McNemar's exact test on the rows
             one report gets right and the other wrong; size: exact.
    First the two reports' conditions are compared (profile, runtime and version, CPU,
    eval data, input shape); any difference is named and the verdict is "not comparable".

    Exit code 0 pass / improved / inconclusive, 1 regressed, 3 not comparable, 2 bad input.
    """
    import json

    from compress.errors import NotComparable, Regressed
    from compress.validation.gate import GateConfig, gate, gate_fleets, gate_runs, is_run_dir, read_fleet

    config = GateConfig(latency_threshold=threshold, alpha=alpha, normalize=not raw_latency)
    _check_outputs({"--markdown": markdown, "--junit": junit, "--json": json_out})
    if is_run_dir(new) or is_run_dir(baseline):
        return _gate_rows(gate_runs(new, baseline, config), new, baseline, markdown, junit, json_out)
    if read_fleet(new) is not None or read_fleet(baseline) is not None:
        return _gate_rows(gate_fleets(new, baseline, config), new, baseline, markdown, junit, json_out, "device")
    result = gate(new, baseline, config)
    _write_outputs(((markdown, result.markdown()), (junit, result.junit()),
                    (json_out, json.dumps(result.as_dict(), indent=2) + "\n")))
    con = console()
    for d in result.differences:
        con.print(f"not comparable: {d}", highlight=False, markup=False)
    for m in result.metrics:
        vals = "" if m.new is None else f" {m.new:.4g} vs {m.baseline:.4g}"
        change = "" if m.change is None else f" ({m.change:+.1%}"
        p = "" if m.p_value is None else f", p={m.p_value:.3g}"
        close = ")" if change else ""
        con.print(f"{m.metric}: {m.verdict.upper()}{vals}{change}{p}{close}; {m.note}", highlight=False, markup=False)
    if result.verdict == "regressed":
        raise Regressed("regressed: " + ", ".join(m.metric for m in result.metrics if m.verdict == "regressed"))
    if result.verdict == "not comparable":
        raise NotComparable(f"not comparable: {len(result.differences)} difference(s) in how the reports were measured",
                            hint="gate reports from the same profile, runtime, machine and data")
    con.print(result.verdict.upper(), highlight=False)


def _gate_rows(rows, new, baseline, markdown, junit, json_out, what="artifact @ profile"):
    """Two runs' or two fleets' gate: a row per validation (or device), the worst verdict, its exit."""
    import json

    from compress.validation.gate import row_line, runs_junit, runs_markdown, worst

    verdict = worst(rows)
    _write_outputs(((markdown, runs_markdown(rows, new=str(new), baseline=str(baseline), what=what)), (junit, runs_junit(rows)),
                    (json_out, json.dumps({"verdict": verdict, "results": rows}, indent=2) + "\n")))
    for r in rows:
        click.echo(row_line(r))
    raise_for_gate(rows)
    console().print(verdict.upper(), highlight=False)


def raise_for_gate(rows: list[dict]) -> None:
    """The exit of a gate over runs: 1 when one validation regressed, 3 when one is not comparable."""
    from compress.errors import NotComparable, Regressed
    from compress.validation.gate import worst

    verdict = worst(rows)
    if verdict == "regressed":
        raise Regressed("regressed against the baseline: "
                        + ", ".join(r["name"] for r in rows if r["verdict"] == "regressed"))
    if verdict == "not comparable":
        raise NotComparable("not comparable: " + ", ".join(r["name"] for r in rows if r["verdict"] == "not comparable"),
                            hint="gate runs (or devices) measured with the same profile, runtime, machine and data")


def _check_outputs(outputs: dict[str, Path | None]) -> None:
    """Every output file the gate will write can be written: checked before any gating, one line naming it if not
    (a summary for $GITHUB_STEP_SUMMARY in a missing folder is the user's input, not a crash)."""
    from compress.errors import ConfigError

    for option, path in outputs.items():
        if path is None:
            continue
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"{option} {p}: is a directory", hint="pass a file path")
        if not p.parent.is_dir():
            raise ConfigError(f"{option} {p}: no such directory {p.parent}", hint="create it, or pick another path")


def _write_outputs(pairs) -> None:
    from compress.errors import ConfigError
    from compress.storage import storage_error

    for path, text in pairs:
        if path is None:
            continue
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as e:
            raise (storage_error(e) or ConfigError(f"{path}: cannot write ({e.strerror or e})",
                                                   hint="pick a writable path")) from e
