from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import (
    PhaseProgress,
    build_config,
    console,
    end_with_verdict,
    force_option,
    unverified_exit_code_option,
)


def _parse_pins(values: tuple[str, ...]) -> dict[str, str] | None:
    from compress.packaging.config import DIRECT_DEPENDENCIES

    pins = {}
    for v in values:
        name, sep, version = v.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise click.BadParameter(f"{v!r}: expected NAME==VERSION, e.g. onnxruntime==1.20.1", param_hint="--pin")
        if name.strip().lower() not in DIRECT_DEPENDENCIES:
            raise click.BadParameter(f"{name.strip()!r}: only {', '.join(DIRECT_DEPENDENCIES)} can be pinned",
                                     param_hint="--pin")
        pins[name.strip().lower()] = version.strip()
    return pins or None


@click.command("package")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--profile", "-p", required=True,
              help="Serverless profile: a built-in name (e.g. aws-lambda-arm64, aws-lambda-x86_64, gcp-cloud-run) "
                   "or a YAML path with a serverless: section.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="The bundle to write (a .zip).")
@click.option("--memory-mb", type=int, help="Function memory in MB [default: the profile's]; sets the vCPUs.")
@click.option("--pin", "pins", multiple=True, metavar="NAME==VERSION",
              help="Pin onnxruntime, numpy, tokenizers (text) or pillow (images) to another version than the installed "
              "one (repeatable).")
@click.option("--no-download", is_flag=True,
              help="Offline: bundle model + handler only; the dependencies' size is then not measured.")
@click.option("--no-cold-start", is_flag=True, help="Skip the fresh-process cold-start and peak-memory measurement.")
@click.option("--cold-start-runs", type=int, default=3, show_default=True,
              help="Fresh processes to time; the median is judged.")
@click.option("--max-new-tokens", type=click.IntRange(min=1),
              help="Generators (text-generation): the most new tokens one request may ask for [default: 256, or "
                   "less where the model's context is shorter].")
@click.option("--report-dir", type=click.Path(path_type=Path),
              help="Where report.json, report.md and junit.xml go [default: beside the zip, OUT.report.json/.md, OUT.junit.xml].")
@click.option("--allow-collapsed", is_flag=True,
              help="Package a model that quantize's own check found collapsed against its input (refused otherwise; "
                   "prove it first with validate --data).")
@unverified_exit_code_option
@force_option
def package_cmd(artifact, profile, out, memory_mb, pins, no_download, no_cold_start, cold_start_runs, max_new_tokens,
                report_dir, allow_collapsed, unverified_exit_code, force):
    """Build a deployable serverless bundle (zip) for an ONNX ARTIFACT and judge it on the platform.

    The bundle holds the model, tokenizer, a minimal handler (onnxruntime + numpy + tokenizers or Pillow, no
    torch) and requirements.txt with exact pins, plus the dependency wheels for the target platform
    (resolved with pip download, unpacked at the top level as a zip deployment expects). Reports the
    true zipped and unzipped size against the platform's limits with the biggest contributors, and
    the cold start (imports, session, first request) and peak memory of fresh processes run under the
    function's memory and vCPUs.

    A text-generation ARTIFACT (`edgecompress export CAUSAL_LM_DIR --format onnx`, quantized or not) gets a
    generating handler: {"prompt": "...", "max_new_tokens": 32} in, the greedy continuation out, decoded through
    the KV cache with onnxruntime; its cold start is the first generation (loading included).

    The zip is written even when a budget fails. Exit code 0 when every budget holds, 1 when one fails,
    2 on bad input, and --unverified-exit-code (default 4) when none failed but some could not be measured
    (sizes with --no-download, cold start with --no-cold-start): UNVERIFIED, as in validate.
    """
    from compress.packaging.bundle import package
    from compress.packaging.config import PackageConfig
    from compress.packaging.report import check_report_output, render_package_report, write_package_report

    config = build_config(
        PackageConfig, profile=profile, memory_mb=memory_mb, download=not no_download, cold_start=not no_cold_start,
        cold_start_runs=cold_start_runs, pins=_parse_pins(pins), max_new_tokens=max_new_tokens,
        allow_collapsed=allow_collapsed,
    )
    if out.exists() and not force:
        from compress.errors import OutputExistsError

        raise OutputExistsError(f"{out} already exists", hint="choose another --out or pass --force to replace it")
    check_report_output(out, report_dir, force)
    with _Progress() as progress:
        report = package(artifact, out, config, force=force, progress=progress)
    render_package_report(report, console())
    paths = write_package_report(report, out, report_dir, force=force)
    console().print(f"wrote {out}; reports: {', '.join(map(str, paths))}")
    end_with_verdict(report.verdict, report.budgets, where=f"for {profile}", unverified_exit_code=unverified_exit_code,
                     failed_note=" (the bundle was written anyway)")


class _Progress(PhaseProgress):
    """Model files, wheels and zip as labelled stretches (spinners / plain lines), then the cold-start runs."""

    labels = {"cold-start": "cold-start runs"}

    def show(self, d: dict) -> None:
        if d["phase"] == "cold-start":
            self.bar.update(self.task("cold-start", "cold-start runs", d["total"]), completed=d["done"])
