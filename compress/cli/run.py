from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import PhaseProgress, console


class RunProgress(PhaseProgress):
    """Each job as a labelled stretch; a bar per counted phase inside it (teacher outputs, training steps,
    importance scores, eval batches, cold-start runs); a line per finished or cached job."""

    def note(self, d: dict) -> str | None:
        return d.get("note")

    def show(self, d: dict) -> None:
        if d.get("note"):
            self.bar.console.print(d["note"], markup=False, highlight=False)
            return
        done, total = d.get("done", d.get("step")), d.get("total")
        if done is None:
            return
        info = f"loss {d['loss']:.4f}" if isinstance(d.get("loss"), float) else ""
        label = d.get("label") or {"train": "training", "teacher": "teacher outputs",
                                   "importance": "importance scores"}.get(d["phase"], d["phase"])
        self.bar.update(self.task(f"{d['phase']}:{label}", f"  {label}", total), completed=done, info=info)

    def __call__(self, d: dict) -> None:
        if d.get("note") and self.bar is not None:
            self._end_spinner()
            self.show(d)
        elif d.get("note") and self.plain:
            with self._lock:  # the job's own line ends its phase ("done in", "cached")
                self._current = None
                self._line(d["note"])
        else:
            super().__call__(d)


def table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A rich table in a terminal; aligned plain text otherwise (CI logs, pipes: no wrapping at 80 columns)."""
    con = console()
    if con.is_terminal:
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(*r)
        con.print(t)
        return
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
    click.echo(title)
    for r in (columns, *rows):
        click.echo("  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


def print_plan(rows: list[dict], run_dir: Path) -> None:
    total = sum(r["estimate_s"] for r in rows)
    table(f"plan for {run_dir}", ("job", "verb", "from", "key", "cached", "estimate"),
          [(r["name"], r["verb"], r["from"], r["key"], "yes" if r["cached"] else "no",
            "-" if r["cached"] else f"~{r['estimate_s']:.0f} s ({r['estimate_from']})") for r in rows])
    con = console()
    hits = sum(r["cached"] for r in rows)
    con.print(f"{hits} of {len(rows)} jobs cached; about {total / 60:.1f} min to run the rest "
              "(rough figures are guesses for 2 CPU cores; an earlier run's timings replace them)", highlight=False)


def print_summary(result) -> None:
    rows = []
    for j in result.index["jobs"]:
        if "verdict" in j:
            res = f"{j['verdict'].upper()} on {j.get('profile')}"
            if j.get("p50_ms") is not None and j.get("decode_tokens_per_s") is None:
                res += f": p50 {j['p50_ms']:.2f} ms"
            if j.get("decode_tokens_per_s") is not None:  # a text generator: tokens/s, not ms per call
                res += f": {j['decode_tokens_per_s']:.1f} tokens/s decode, TTFT {j['time_to_first_token_ms']:.1f} ms"
                if j.get("perplexity_increase") is not None:
                    res += f", perplexity {j['perplexity_increase']:+.2%}, top-1 {j['top1_agreement']:.3f}"
            if j.get("retention") is not None:
                res += f", retention {j['retention']:.4f}"
            if j.get("zipped_mb") is not None:
                res += f": {j['zipped_mb']:.1f} MB zipped"
        else:
            res = f"{j.get('format', '')} {j.get('precision', '')}, {j.get('size_mb', 0):.1f} MB"
            if j.get("collapsed"):
                res += f": NOT SHIPPABLE ({j['collapsed']})"
        rows.append((j["name"], j["status"], f"{j.get('seconds', 0):.1f}", res))
    table(f"run {result.run_dir}", ("job", "status", "seconds", "result"), rows)
    from compress.validation.gate import row_line

    for g in result.gate:
        click.echo(f"gate {row_line(g)}")
    html = result.run_dir / "report.html"
    click.echo(f"index: {result.run_dir / 'index.json'}" + (f"; report: {html}" if html.is_file() else ""))


@click.command("run")
@click.argument("recipe", required=False)
@click.option("--run-dir", type=click.Path(path_type=Path),
              help="Run directory: artifacts, reports and the cache of every step [default: runs/<recipe name>].")
@click.option("--dry-run", is_flag=True, help="Print the plan (jobs, cache hits, estimated cost) and stop.")
@click.option("--rerun", multiple=True, metavar="PATTERN",
              help="Run the jobs matching PATTERN even when cached (glob, repeatable): e.g. 'validate/*' to "
                   "re-measure, which the gate then compares with the previous measurement.")
@click.option("--from-artifact", "from_artifact", type=click.Path(path_type=Path),
              help="Write the recipe that reproduces this artifact from its lineage (to RECIPE, or stdout) and stop.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Set a recipe field for this run (repeatable; dotted KEY, VALUE read as YAML): e.g. --set "
                   "teacher=./model --set data.eval=story.txt --set validate.budgets.min_top1_agreement=0.9. A path "
                   "given here is relative to the current directory; index.json records what was set.")
@click.option("--no-html", is_flag=True, help="Skip the HTML report.")
@click.option("--force", is_flag=True, help="With --from-artifact: replace an existing RECIPE file.")
def run_cmd(recipe, run_dir, dry_run, rerun, from_artifact, sets, no_html, force):
    """Run a recipe: teacher → distill → prune → export → quantize → validate / package → gate.

    RECIPE is a recipe file, or builtin:NAME, a recipe that ships with edgecompress:
    builtin:demo (what `edgecompress demo` runs) and builtin:lm-stories (a small causal LM
    to a gated INT4 ONNX artifact: --set teacher=DIR --set data.eval=TEXT).

    \b
    Every step's output is cached in the run directory under a hash of its inputs, its
    settings and the edgecompress version: editing a step re-runs that step and what
    depends on it, nothing else; an interrupted run continues where it stopped (a
    distillation from its last checkpoint). The run directory holds every artifact and
    report, index.json (what is where) and report.html.

    Exit code 0 when every judged budget holds (UNVERIFIED estimates included), 1 when a
    budget failed or the gate found a regression, 3 when the gate's baseline is not
    comparable, 5 (ANOMALOUS) when a latency verdict is inside its noise, 2 on bad input. See docs/guides/recipes.md for the format.
    """
    from compress.errors import ConfigError, OutputExistsError

    if from_artifact is not None:
        from compress.recipes.lineage import recipe_from_artifact

        text = recipe_from_artifact(from_artifact)
        recipe = None if recipe is None else Path(recipe)
        if recipe is None:
            click.echo(text, nl=False)
            return
        if recipe.exists() and not force:
            raise OutputExistsError(f"{recipe} already exists", hint="choose another file or pass --force")
        recipe.write_text(text, encoding="utf-8")
        console().print(f"wrote {recipe}; run it with: edgecompress run {recipe}", highlight=False)
        return
    if recipe is None:
        raise ConfigError("no recipe given", hint="edgecompress run RECIPE.yaml (see docs/guides/recipes.md)")
    from compress.recipes.execute import plan_recipe, run_recipe
    from compress.recipes.schema import parse_overrides

    overrides = parse_overrides(sets)
    if dry_run:
        _, run, rows = plan_recipe(recipe, run_dir, rerun, overrides)
        print_plan(rows, run)
        return
    with RunProgress() as progress:
        result = run_recipe(recipe, run_dir, rerun=rerun, progress=progress, html=not no_html, overrides=overrides)
    print_summary(result)
    end_run(result)


def end_run(result) -> None:
    """The run's exit: 1 when a budget failed or the gate regressed, 3 when not comparable, else its verdict."""
    from compress.cli.gate import raise_for_gate
    from compress.errors import BudgetFailed

    jobs = result.index["jobs"]
    failed = [j["name"] + (f" ({j['failed']})" if j.get("failed") else "") for j in jobs if j.get("verdict") == "fail"]
    collapsed = [f"{j['name']} ({j['collapsed']})" for j in jobs if j.get("collapsed")]
    html = result.run_dir / "report.html"
    see = html if html.is_file() else result.run_dir / "index.json"  # --no-html writes none
    if failed:
        raise BudgetFailed(f"budget failed: {'; '.join(failed)}"
                           + (f"; NOT SHIPPABLE, collapsed against its input: {'; '.join(collapsed)}" if collapsed
                              else "") + f" (see {see})")
    raise_for_gate(result.gate)
    if result.verdict == "anomalous":
        from compress.errors import Anomalous

        noisy = [j["name"] for j in result.index["jobs"] if j.get("verdict") == "anomalous"]
        raise Anomalous(f"latency too noisy to judge: {', '.join(noisy)} (see {see})",
                        hint="measure on a quieter machine or with more runs (exit code 5)")
    console().print(result.verdict.upper(), highlight=False)
