from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import (
    PhaseProgress,
    build_config,
    console,
    end_with_verdict,
    force_reports_option,
    given_or_none,
    require_input,
    unverified_exit_code_option,
)
from compress.progress import counts


@click.command("validate")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--profile", "-p", default="host", show_default=True,
              help="Device profile: a built-in name (`edgecompress profiles list`), 'host', or a YAML path.")
@click.option("--data", "--eval-data", "-d", "data", type=click.Path(path_type=Path),
              help="Labelled eval data (CSV, TSV, JSONL, Parquet, datasets directory).")
@click.option("--teacher", "-t", type=click.Path(path_type=Path),
              help="Teacher checkpoint (default: the source recorded in the manifest, if present).")
@click.option("--text-column", help="Text column (auto-detected: text, sentence, ...).")
@click.option("--text-pair-column", help="Second text column for sentence-pair tasks.")
@click.option("--label-column", help="Label column (auto-detected: label, labels, ...); names or ids.")
@click.option("--limit", type=int, help="Evaluate at most this many rows. Text generators: at most this many "
              "perplexity windows and prompts [default: 16 windows, 8 prompts].")
@click.option("--metric", metavar="MODULE:FUNCTION",
              help="Your metric instead of the task's: function(outputs, labels) -> number, higher is better, on the "
                   "artifact's and the teacher's outputs (retention is their ratio). Runs that code: name only code you "
                   "trust (imported from the current directory first).")
@click.option("--report-dir", type=click.Path(path_type=Path),
              help="Where report.json, report.md and junit.xml go [default: ARTIFACT-report-PROFILE].")
@click.option("--no-baseline", is_flag=True, help="Skip timing the teacher's FP32 baseline (no speedup budget).")
@click.option("--no-cold-start", is_flag=True, help="Skip the fresh-process cold-start/peak-memory probe.")
@click.option("--estimate", "estimate_mode", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True,
              help="auto: when this machine is not the profiled device (other arch, or hardware.identify does not "
                   "match), estimate latency/throughput/cold start from the profile's peaks (roofline) and report "
                   "their budgets UNVERIFIED; always: estimate even on the device; never: time on this machine.")
@unverified_exit_code_option
@click.option("--no-cache", is_flag=True,
              help="Run the teacher afresh instead of reusing its cached outputs on the eval data (and store none). "
                   "The cache (teacher outputs, FP32 baselines) lives in $EDGECOMPRESS_CACHE_DIR "
                   "[default: ~/.cache/edgecompress], capped at $EDGECOMPRESS_CACHE_MB MiB [default: 2048], least "
                   "recently used first out; delete the directory to clear it.")
@click.option("--allow-pickle", is_flag=True, help="Allow a pickled teacher checkpoint.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the teacher's own Python code to run.")
@click.option("--remote", multiple=True, metavar="USER@HOST[:PORT]|FLEET.yaml",
              help="Measure on a device over SSH (system ssh: ~/.ssh/config, keys, agent and ProxyJump apply; "
                   "the device needs Python 3, numpy and the runtime). The teacher runs here. Several devices "
                   "(repeat it, or a comma list, or a fleet YAML file of hosts with their profile, user, port, key) "
                   "are measured at once: a verdict per device and the worst overall; a device that does not answer "
                   "is marked and the others kept (exit code 7 when none failed).")
@click.option("--remote-python", metavar="CMD", help="Python on the device [default: python3].")
@click.option("--ssh-config", type=click.Path(path_type=Path), envvar="EDGECOMPRESS_SSH_CONFIG",
              help="ssh_config file for ssh -F [default: ssh's own, ~/.ssh/config; env EDGECOMPRESS_SSH_CONFIG].")
@click.option("--prompts", type=click.Path(path_type=Path),
              help="Text generators: prompts to continue (.txt one a line, .jsonl prompt/text; at most --limit, "
                   "default 8) [default: the first sentence of each --data document or paragraph].")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="Text generators: prompt length timed for TTFT and prefill tokens/s (capped by the context).")
@click.option("--new-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="Text generators: tokens generated per prompt (decode tokens/s, continuations); capped at half "
                   "the model's context when it leaves no room for a prompt.")
@click.option("--window", type=click.IntRange(min=4),
              help="Text generators: perplexity window in tokens on --data text [default: the artifact's, 256, cut "
                   "to the model's context; a longer one given here is refused].")
@force_reports_option
def validate_cmd(artifact, profile, data, teacher, text_column, text_pair_column, label_column, limit, metric, report_dir,
                 no_baseline, no_cold_start, estimate_mode, unverified_exit_code, no_cache, allow_pickle,
                 trust_remote_code, remote, remote_python, ssh_config, prompts, prompt_tokens, new_tokens, window,
                 force):
    """Measure ARTIFACT on a device profile and judge it against the profile's budgets.

    Measures accuracy and agreement versus the teacher on --data, latency percentiles (with the
    teacher's FP32 baseline timed side by side on the same runtime), size, cold start and peak memory.
    Prints a PASS/FAIL table and writes report.json, report.md and junit.xml.

    With --remote the artifact runs on the device over SSH (outputs, latency, cold start); tokenization,
    the teacher and the judging stay here, and the report says where each number was measured.

    On a machine that is not the profiled device (and without --remote), latency, throughput,
    speedup and cold start are roofline estimates from the profile's peaks, marked estimated, and
    their budgets are UNVERIFIED (never PASS); accuracy, agreement and size are still measured here.

    Exit code 0 when every budget holds, 1 when one fails, 2 on bad input, 5 (ANOMALOUS) when none
    failed but a latency budget sits inside its measurement's noise, and --unverified-exit-code
    (default 4) when none failed but some are UNVERIFIED. On several devices: the worst device's,
    and 7 (INCOMPLETE) when a device did not answer and none of the others failed.
    """
    from compress.reports.render import render_report, write_report
    from compress.storage import check_output
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate, validate_fleet

    config = build_config(
        ValidateConfig, profile=profile, data=str(data) if data else None, teacher=str(teacher) if teacher else None,
        text_column=text_column, text_pair_column=text_pair_column, label_column=label_column, limit=limit, metric=metric,
        baseline=not no_baseline, cold_start=not no_cold_start, estimate=estimate_mode, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code, cache=not no_cache, remote=",".join(remote) or None,
        remote_python=remote_python,
        ssh_config=str(ssh_config) if ssh_config else None, prompts=str(prompts) if prompts else None,
        prompt_tokens=given_or_none("prompt_tokens", prompt_tokens), new_tokens=given_or_none("new_tokens", new_tokens),
        window=window,
    )
    from compress.validation.fleet import is_fleet

    fleet = is_fleet(config.remote)
    if report_dir is None:
        name = Path(profile).stem if profile.endswith(('.yaml', '.yml')) else profile
        if fleet:
            files = [Path(r).stem for r in ",".join(remote).split(",") if r.strip().lower().endswith((".yaml", ".yml"))]
            name = files[0] if len(files) == 1 else "fleet"
        report_dir = artifact.parent / f"{artifact.name}-report-{name}"
    check_output(report_dir, force, "--report-dir")  # before any work: a refusal after minutes of measuring helps no one
    require_input(artifact, "model")
    require_input(teacher, "model")
    with _Progress() as progress:
        report = (validate_fleet if fleet else validate)(artifact, config, progress=progress)
    if fleet:
        return _end_fleet(report, report_dir, force, unverified_exit_code)
    render_report(report, console())
    if report.environment.get("remote"):
        from rich.markup import escape

        console().print(f"  measured on {escape(report.environment['measured_on'])}")
    write_report(report, report_dir, force=force)
    console().print(f"reports: {report_dir}/report.json, report.md, junit.xml")
    if report.environment.get("cache"):
        from compress.cache import describe

        console().print(describe(report.environment["cache"]), markup=False)
    end_with_verdict(report.verdict, report.budgets, where=f"on {report.profile['name']}",
                     unverified_exit_code=unverified_exit_code)


def _end_fleet(report, report_dir: Path, force: bool, unverified_exit_code: int) -> None:
    """A validation on several devices: the table, the fleet's reports, and its exit: 1 when a device failed a
    budget, 7 (INCOMPLETE) when none failed but a device did not answer, then as one device's (5, 4, 0)."""
    from compress.errors import BudgetFailed, Incomplete
    from compress.reports.fleet import render_fleet, write_fleet_report
    from compress.reports.render import failed_summary

    render_fleet(report, console())
    write_fleet_report(report, report_dir, force=force)
    console().print(f"reports: {report_dir}/report.json, report.md, junit.xml, report.html; each device's under "
                    f"{report_dir}/devices/")
    judged = [d for d in report.devices if d.report is not None]
    if report.verdict == "fail":
        raise BudgetFailed("budget failed on " + "; ".join(f"{d.name}: {failed_summary(d.report.budgets)}"
                                                           for d in judged if d.status == "fail"))
    if report.verdict == "incomplete":
        lost = report.lost
        raise Incomplete(f"{len(lost)} of {len(report.devices)} devices did not answer or failed there: "
                         + "; ".join(f"{d.name} ({d.status} while {d.phase}: {d.message})" for d in lost)
                         + f"; none of the other {len(judged)} failed",
                         hint=f"their verdicts are in {report_dir}/report.json (exit code 7)")
    end_with_verdict(report.verdict, [b for d in judged for b in d.report.budgets],
                     where=f"on {len(report.devices)} devices", unverified_exit_code=unverified_exit_code)


class _Progress(PhaseProgress):
    """validate's phases (its :data:`compress.progress.Progress` events): in a terminal a bar per phase (counted
    phases by items, the timing rounds by ``fraction``, the others a spinner); without one (a CI log, a pipe) plain
    lines (:class:`~compress.cli._common.PhaseProgress`); notes (a generator's bounds) as lines in both; off with -q."""

    def note(self, d: dict) -> str | None:
        return d.get("note")

    def __call__(self, d: dict) -> None:
        if self.bar is not None and "fraction" in d:  # the running labelled phase measured as a share
            if self._spinner is not None:
                self.bar.update(self._spinner, total=1.0, completed=float(d["fraction"]))
            return
        super().__call__(d)

    def show(self, d: dict) -> None:
        if d.get("note"):
            self.bar.console.print(d["note"], markup=False, highlight=False)
            return
        done, total = counts(d)
        if done is not None:
            label = d.get("label") or d["phase"]
            self.bar.update(self.task(d["phase"], label, total), completed=done)
