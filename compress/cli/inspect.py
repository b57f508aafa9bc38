from __future__ import annotations

import json
from pathlib import Path

import click

from compress.cli._common import console, require_input


@click.command("inspect")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the files.")
def inspect_cmd(artifact, as_json, no_verify):
    """Show an artifact's manifest: format, precision, tensors, lineage, files.

    A model file (.onnx, an OpenVINO .xml, a .pt2 with its model.yaml) is shown as `export` would adopt it: its
    inputs, outputs, task and input description, after the same checks. So is a causal LM checkpoint folder
    (a Hugging Face …ForCausalLM): task text-generation, its KV cache, BOS/EOS."""
    from compress.artifact import load_artifact
    from compress.errors import ArtifactError
    from compress.reports.render import render_manifest
    from compress.tasks import KIND_INFO
    from compress.teachers.kinds import source_kind
    from compress.teachers.model_files import is_model_file
    from compress.teachers.program_files import is_program_file

    require_input(artifact, "model", ArtifactError)
    # a Hugging Face …ForCausalLM folder (no manifest) is shown as its text-generation teacher
    checkpoint = artifact.is_dir() and not (artifact / "manifest.json").exists()
    model_file = is_model_file(artifact) or is_program_file(artifact) or \
        (checkpoint and KIND_INFO[source_kind(artifact)].generates)
    if model_file:
        from compress.teachers.load import load_source

        art = load_source(artifact)
    else:
        art = load_artifact(artifact, verify=not no_verify)
    if as_json:
        click.echo(json.dumps(art.manifest.model_dump(mode="json"), indent=2))
        return
    con = console()
    render_manifest(art, con, verified=None if model_file else not no_verify)
    if not model_file:
        from compress.validation.metrics import size_breakdown

        parts = size_breakdown(art)
        total = sum(p["bytes"] for p in parts) or 1
        def size(n: int) -> str:
            return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"

        con.print("[bold]what takes the bytes[/]: " + ", ".join(
            f"{p['part']} {size(p['bytes'])} ({p['bytes'] / total:.0%})" for p in parts[:6]), highlight=False)
        from compress.stages.export.lm.own_runtime import own_runtime

        own = own_runtime(art)
        if own:
            con.print(f"[bold]runs in[/] {own['api']}" if own["missing"] is None else
                      f"[bold]does not run in[/] {own['api']} [bold]yet[/]: it lacks {own['missing']}", highlight=False)
    for step in art.manifest.steps:
        if step.stage == "prune" and step.metrics.get("parameters_after"):
            from compress.cli.prune import summary_lines

            m = step.metrics
            con.print(f"[bold]prune[/]: {m['parameters_before']:,} -> {m['parameters_after']:,} parameters "
                      f"({m['parameter_ratio']:.2f}x)", highlight=False)
            for line in summary_lines(m):
                con.print("  " + line, highlight=False)
