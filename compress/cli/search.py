from __future__ import annotations

import time
from pathlib import Path

import click

from compress.cli._common import build_config, console
from compress.progress import to_lines
from compress.search.config import Objective, SearchConfig

F = SearchConfig.flat_fields()


@click.command("search")
@click.option("--teacher", "-t", required=True, type=click.Path(path_type=Path), help=F["teacher"].description)
@click.option("--profile", "-p", required=True, help=F["profile"].description)
@click.option("--train", required=True, type=click.Path(path_type=Path), help=F["train"].description)
@click.option("--eval", "--eval-data", "-d", "eval_data", required=True, type=click.Path(path_type=Path),
              help=F["eval"].description)
@click.option("--holdout", type=click.Path(path_type=Path), help=F["holdout"].description)
@click.option("--time-budget", default="2h", show_default=True,
              help="Wall-clock time for the whole search: 2h, 90m, 1h30m or seconds. A resumed search continues "
                   "the same budget; a larger one builds the promoted candidates the last run had no time for.")
@click.option("--objective", type=click.Choice([o.value for o in Objective]), default="latency", show_default=True,
              help="What the chosen candidate minimises among those meeting every budget (energy-proxy: estimated "
                   "operation and DRAM energy per inference).")
@click.option("--search-dir", type=click.Path(path_type=Path), default=Path("search"), show_default=True,
              help="Study, store of every built step, candidate recipes and reports. Run the same command again "
                   "to resume.")
@click.option("--trials", type=int, help=F["trials"].description)
@click.option("--metric", metavar="MODULE:FUNCTION", help=F["metric"].description + " Name only code you trust.")
@click.option("--space", "space_text", metavar="DIM=A,B;...",
              help="Narrow the space, e.g. 'layers=2,3;quant=int8-dynamic,int4'. Dimensions: text: layers, width, "
                   "heads, ffn, vocab, quant, runtime, et_quant, threads; ViT: layers, heads, ffn, quant, runtime, "
                   "et_quant, threads; CNN: channels, quant, runtime, et_quant, threads. runtime: onnxruntime, "
                   "openvino, executorch (a phone profile's default: executorch and onnxruntime; et_quant: "
                   "ExecuTorch's int8-dynamic or int8-static). A causal LM (text generation): runtime "
                   "(onnxruntime, openvino, llamacpp), algorithm (rtn, hqq, k_quant, gptq; rtn, awq, "
                   "scale_estimation, gptq; q4_0, q4_k_s, q4_k_m), group (32, 64, 128), int8 (ONNX Runtime: "
                   "MatMuls back to 8 bits until the perplexity increase is within it; 0: none), and its shape "
                   "where named (layers kept, heads and ffn removed, vocab: each shape pruned from the teacher and "
                   "recovered over --short-recover-steps), e.g. "
                   "'runtime=onnxruntime;algorithm=rtn,hqq;group=32,128;int8=0,0.02;layers=8,4;ffn=0,0.3'.")
@click.option("--short-steps", type=int, default=F["short_steps"].default, show_default=True,
              help=F["short_steps"].description)
@click.option("--short-recover-steps", type=int, default=F["short_recover_steps"].default, show_default=True,
              help=F["short_recover_steps"].description)
@click.option("--full-epochs", type=float, default=F["full_epochs"].default, show_default=True,
              help=F["full_epochs"].description)
@click.option("--full-augment", type=int, default=F["full_augment"].default, show_default=True,
              help=F["full_augment"].description)
@click.option("--full-augment-join", type=int, default=F["full_augment_join"].default, show_default=True,
              help=F["full_augment_join"].description)
@click.option("--full-average/--no-full-average", default=F["full_average"].default, show_default=True,
              help=F["full_average"].description)
@click.option("--explore-share", type=float, default=F["explore_share"].default, show_default=True,
              help=F["explore_share"].description + " The rest builds the best at full fidelity.")
@click.option("--qat-steps", type=int, default=0, show_default=True, help=F["qat_steps"].description)
@click.option("--full-recover-steps", type=int, default=F["full_recover_steps"].default, show_default=True,
              help=F["full_recover_steps"].description)
@click.option("--promote", type=int, default=F["promote"].default, show_default=True, help=F["promote"].description)
@click.option("--limit", type=int, default=F["limit"].default, show_default=True, help=F["limit"].description)
@click.option("--prompt-tokens", type=int, default=F["prompt_tokens"].default, show_default=True,
              help=F["prompt_tokens"].description)
@click.option("--new-tokens", type=int, default=F["new_tokens"].default, show_default=True,
              help=F["new_tokens"].description)
@click.option("--calibration-samples", type=int, default=F["calibration_samples"].default, show_default=True,
              help=F["calibration_samples"].description)
@click.option("--storage", metavar="URL",
              help="The study's database, e.g. postgresql://USER:PASSWORD@HOST/DB (with the postgres extra): start the "
                   "same command on several machines and they work on one search, each building its trials in its "
                   "own --search-dir [default: sqlite in --search-dir].")
@click.option("--artifact-store", metavar="DIR|s3://BUCKET", help=F["artifact_store"].description
              + " Not needed when every worker's --search-dir is on one shared filesystem.")
@click.option("--heartbeat", "heartbeat_s", type=int, default=F["heartbeat_s"].default, show_default=True,
              metavar="SECONDS", help=F["heartbeat_s"].description)
@click.option("--seed", type=int, default=0, show_default=True, help=F["seed"].description)
@click.option("--no-html", is_flag=True, help="Skip the HTML report.")
@click.option("--force", is_flag=True, help="Start over in a --search-dir that holds a search with other settings "
                                            "(the store of built steps is kept).")
def search_cmd(teacher, profile, train, eval_data, holdout, time_budget, objective, search_dir, trials, metric, space_text,
               short_steps, short_recover_steps, full_epochs, full_augment, full_augment_join, full_average, explore_share,
               full_recover_steps, qat_steps, promote, limit, prompt_tokens, new_tokens,
               calibration_samples, storage, artifact_store, heartbeat_s, seed, no_html, force):
    """Find the smallest, fastest artifact that meets a device profile's budgets.

    \b
    Text teachers: student depth and width, head/FFN pruning, vocabulary pruning, INT8
    dynamic (INT8 or INT4 embeddings)/static, INT4. ViT teachers: depth, heads, FFN.
    CNN teachers: channel pruning, static INT8. Causal LMs (text generation): runtime
    (ONNX Runtime, OpenVINO, llama.cpp where installed) x INT4 algorithm x group size x
    MatMuls back to 8 bits (and, with --space layers/heads/ffn/vocab, the model's shape,
    pruned once per shape), each exported once per runtime, quantized per trial and
    validated as validate does a generator (decode tokens/s, time to first token,
    perplexity increase, top-1 agreement: the profile's budgets); --train is the
    calibration text, --eval the text ranked on, the chosen one is checked on held-out
    text (--holdout, else the second half of --eval); one fidelity (nothing is trained),
    search.json but no HTML report yet. Model files (ONNX, OpenVINO IR): nothing
    to train, so precision only (--train is their calibration data). All: ONNX Runtime
    vs OpenVINO, and 1 or all intra-op threads; on a phone's profile ExecuTorch programs
    (INT8 PT2E, latency estimated on the phone's peaks) beside ONNX Runtime, elsewhere
    with --space 'runtime=onnxruntime,executorch'. Optuna explores them (multi-objective TPE, the
    profile's budgets as constraints) in three fidelities:
      1. a roofline estimate skips candidates that cannot meet the size or p50 budget;
      2. short distillation and recovery rank the rest;
      3. the best are rebuilt with full training, timed side by side with the PyTorch
         teacher, and the winner is validated again on held-out data.
    Every candidate is a recipe run in one shared store, so no step is built twice.
    Ctrl-C and run again: nothing finished is lost.

    Exit code 0 when a candidate meets every budget (its recipe is SEARCH/chosen.yaml) and
    passes the held-out check, 1 when the chosen one fails on the held-out data, 6
    (INFEASIBLE) when none meets every budget (search.json and report.html say which
    budget binds), 2 on bad input.
    """
    from compress.errors import BudgetFailed, Infeasible
    from compress.search.config import parse_duration, parse_space
    from compress.search.run import run_search

    config = build_config(
        SearchConfig, teacher=str(teacher), profile=profile, train=str(train), eval=str(eval_data),
        holdout=str(holdout) if holdout else None, time_budget_s=parse_duration(time_budget), objective=objective,
        trials=trials, short_steps=short_steps, short_recover_steps=short_recover_steps, full_epochs=full_epochs,
        full_augment=full_augment, full_augment_join=full_augment_join, full_average=full_average,
        explore_share=explore_share, full_recover_steps=full_recover_steps, qat_steps=qat_steps, promote=promote,
        space=parse_space(space_text) if space_text else None, storage=storage, artifact_store=artifact_store,
        heartbeat_s=heartbeat_s, seed=seed, metric=metric,
        limit=limit, prompt_tokens=prompt_tokens, new_tokens=new_tokens, calibration_samples=calibration_samples,
    )
    for label, p in (("--teacher", teacher), ("--train", train), ("--eval", eval_data), ("--holdout", holdout)):
        if p is not None and not p.exists():
            from compress.errors import ConfigError

            raise ConfigError(f"{label} {p}: no such file or directory", hint="check the path")
    con = console()
    start = time.monotonic()

    def say(line: str) -> None:
        con.print(f"[{(time.monotonic() - start) / 60:5.1f} min] {line}", markup=False, highlight=False, soft_wrap=True)

    result = run_search(config, search_dir, progress=to_lines(say), force=force, html=not no_html)
    if result.summary.get("generator"):
        return _generator_outcome(result)
    print_result(result)
    if result.verdict == "fail":
        h = result.chosen["holdout"]
        raise BudgetFailed(
            f"the chosen candidate (trial {result.chosen['trial']}) fails on the held-out data: "
            + ", ".join(f"{k} {h[k]:.4f}" for k in ("retention", "agreement") if h.get(k) is not None)
            + f" (see {h['report']}); do not ship it",
            hint="add --holdout rows to --eval, tighten the profile's retention budget, or widen --space")
    if result.chosen is None:
        raise Infeasible(f"no candidate met every budget of {result.summary['profile']} "
                         f"(see {search_dir / 'report.html'})", hint="relax a budget or widen --space; "
                         "the diagnosis lines above say which budget binds (exit code 6)")


def print_result(result) -> None:
    from compress.cli.run import table

    s = result.summary
    rows = []
    for p in sorted(s["measured"], key=lambda p: (not p["front"], p["p50_ms"])):
        rows.append((str(p["trial"]), p["label"].split(" ", 1)[1], p["fidelity"], p["verdict"].upper(),
                     f"{p['retention']:.4f}" if p["retention"] is not None else "-",
                     f"{p['p50_ms']:.2f}" + (" est." if p["estimated"] else ""), f"{p['size_mb']:.1f}",
                     "yes" if p["front"] else ""))
    table(f"measured candidates ({s['trials']} trials: {len(s['measured'])} measured, {len(s['skipped'])} skipped "
          f"by their estimate, {s['repeats']} repeats of measured ones; {s['spent_s'] / 60:.0f} min)", ("trial", "candidate", "fidelity", "verdict", "retention", "p50 ms",
                                            "MB", "front"), rows)
    if s.get("side_by_side"):
        click.echo("side by side, alternating rounds: " + ", ".join(
            f"{k} p50 {v['p50_ms']:.2f} ms" for k, v in s["side_by_side"].items()))
    c = result.chosen or s.get("closest")
    if c:
        h = c.get("holdout") or {}
        vs = c.get("vs_teacher_pytorch") or {}
        click.echo(f"{'chosen' if result.chosen else 'closest'}: trial {c['trial']} ({c['label'].split(' ', 1)[1]}): "
                   f"{c['verdict'].upper()}, retention {c['retention']:.4f}, "
                   f"held-out {str(h.get('verdict', 'not checked')).upper()} (retention "
                   f"{h['retention'] if h.get('retention') is not None else float('nan'):.4f}), "
                   f"p50 {c['p50_ms']:.2f} ms, "
                   f"{c['size_mb']:.1f} MB"
                   + (f"; {vs['speedup']:.1f}x faster" if vs.get("speedup") else "")
                   + (f", {vs['smaller']:.1f}x smaller than the PyTorch FP32 teacher" if vs.get("smaller") else ""))
    if result.chosen:
        click.echo(f"recipe: {result.search_dir / 'chosen.yaml'} "
                   f"(edgecompress run {result.search_dir / 'chosen.yaml'} --run-dir {result.search_dir / 'store'})")
    for line in result.diagnosis:
        click.echo(f"diagnosis: {line}")
    html = result.search_dir / "report.html"
    click.echo(f"summary: {result.search_dir / 'search.json'}" + (f"; report: {html}" if html.is_file() else ""))


def _generator_outcome(result) -> None:
    """A generator search's table, choice and exit code (1: the chosen one fails on held-out text, 6: none meets
    every budget)."""
    from compress.cli.run import table
    from compress.errors import BudgetFailed, Infeasible

    s = result.summary

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    rows = [(str(p["trial"]), p["label"], p["verdict"].upper(), f(p["decode_tokens_per_s"], ".1f")
             + (" est." if p["estimated"] else ""), f(p["time_to_first_token_ms"], ".1f"),
             f(p["perplexity_increase"], "+.2%"), f(p["top1_agreement"], ".3f"), f(p["size_mb"], ".3f"))
            for p in sorted(s["measured"], key=lambda p: p["trial"])]
    table(f"measured candidates ({s['trials']} trials: {len(s['measured'])} measured, {s['repeats']} repeats, "
          f"{len(s['failed'])} failed; {s['spent_s'] / 60:.1f} min)",
          ("trial", "candidate", "verdict", "decode tok/s", "TTFT ms", "perplexity", "top-1", "MB"), rows)
    for p in s["failed"]:
        click.echo(f"failed: trial {p['trial']} ({p['label']}): {p['error']}")
    c = result.chosen or s.get("closest")
    if c:
        h = c.get("holdout") or {}
        click.echo(f"{'chosen' if result.chosen else 'closest'}: trial {c['trial']} ({c['label']}): "
                   f"{c['verdict'].upper()}, artifact {c['artifact']}"
                   + (f"; held-out {h['verdict'].upper()}: perplexity {f(h.get('perplexity_increase'), '+.2%')}, "
                      f"top-1 {f(h.get('top1_agreement'), '.3f')} ({h.get('windows')} windows)" if h else ""))
        click.echo(f"  made by: edgecompress quantize {c['export']} "
                   + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in c["quantize"].items() if v is not None)
                   + " -o OUT")
    for line in result.diagnosis:
        click.echo(f"diagnosis: {line}")
    html = result.search_dir / "report.html"
    click.echo(f"summary: {result.search_dir / 'search.json'}" + (f"; report: {html}" if html.is_file() else ""))
    if result.verdict == "fail":
        h = result.chosen["holdout"]
        raise BudgetFailed(
            f"the chosen candidate (trial {result.chosen['trial']}) fails on the held-out text: perplexity "
            f"{f(h.get('perplexity_increase'), '+.2%')}, top-1 {f(h.get('top1_agreement'), '.3f')} (see {h['report']}); "
            "do not ship it", hint="give more --eval text (or --limit windows), or tighten the profile's quality budgets")
    if result.chosen is None:
        raise Infeasible(f"no candidate met every budget of {s['profile']} (see {result.search_dir / 'search.json'})",
                         hint="relax a budget or widen --space; the diagnosis lines above say which budget binds "
                         "(exit code 6)")
