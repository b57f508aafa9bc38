"""The regression gate: is this validation report worse than the last release's, beyond what noise explains?

Two reports are first checked for comparability (profile, runtime and its version, CPU, eval data digest, input
shape, preprocessing, percentile definition); the thread count is not among them: a release that runs on fewer threads
and is slower for it has regressed; anything that differs is named and the verdict is "not comparable".
Then each metric is tested rather than two numbers compared:

* **latency**: the artifact's timed calls of both reports (kept in ``metrics.latency_samples_ms``), each divided by
  the median of the FP32 baseline timed alongside in the same alternating rounds (when both reports have it and
  ran on the same thread count; ``normalize=False``: raw), so a machine that is slower or busier as a whole, which
  slows both, does not read as a regression. A regression needs both a relative slowdown of the medians above ``latency_threshold`` *and* a one-sided
  Mann-Whitney U test (``scipy.stats.mannwhitneyu``, as airspeed velocity does) below ``alpha``; an improvement is
  the mirror image; a large change the test cannot confirm (or a significant one below the threshold) is
  "inconclusive" only when it exceeds the threshold, else "pass".
* **accuracy**: per-row correctness on the same rows (``metrics.correct``), paired: McNemar's exact test on the
  rows one report gets right and the other wrong (a binomial test on the discordant pairs). A significant drop is
  a regression; the profile's absolute retention budget still applies through each report's own verdict.
* **size**: exact, no noise: bigger by more than ``size_threshold`` is a regression.
* **text generators** (reports with ``metrics.generation``): the latency samples are the decode step's (ms per
  generated token), so the latency test above is the decode-speed test ("decode ms/token"); and a release whose
  generations collapse (``metrics.generation.collapse``: one token, a repetition loop, a KL far off) regressed,
  whatever the baseline did, with the reason in the note.

The verdict is the worst of the metrics: regressed > not comparable > inconclusive > improved/pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compress.errors import ConfigError, DataError

#: the verdicts of `edgecompress gate`; their exit codes (0 pass/improved/inconclusive, 1 regressed, 3 not comparable;
#: 2: bad input) are read from :data:`compress.profiles.budgets.VERDICTS`
GATE_VERDICTS = ("pass", "improved", "inconclusive", "regressed", "not comparable")


@dataclass
class GateConfig:
    latency_threshold: float = 0.10  # relative change of the median that matters
    alpha: float = 0.05  # significance level of the rank and paired tests
    size_threshold: float = 0.01
    #: judge latency relative to the FP32 baseline timed alongside in each report (when both have it and ran on
    #: the same thread count): a machine slower or busier as a whole then slows both and cancels out
    normalize: bool = True


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


@dataclass
class MetricResult:
    metric: str
    verdict: str
    new: float | None = None
    baseline: float | None = None
    change: float | None = None
    p_value: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class GateResult:
    verdict: str
    metrics: list[MetricResult] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    new: str = ""
    baseline: str = ""

    @property
    def exit_code(self) -> int:
        from compress.profiles.budgets import VERDICTS

        return VERDICTS[self.verdict][0]

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "new": self.new, "baseline": self.baseline,
                "differences": self.differences, "metrics": [m.as_dict() for m in self.metrics]}

    def markdown(self) -> str:
        """A summary fit for a CI step summary."""
        lines = [f"## edgecompress gate: **{self.verdict}**", "", f"new: `{self.new}`  ", f"baseline: `{self.baseline}`", ""]
        if self.differences:
            lines += ["Not comparable:", *[f"- {d}" for d in self.differences], ""]
        if self.metrics:
            lines += ["| metric | verdict | new | baseline | change | p |", "|---|---|---|---|---|---|"]
            for m in self.metrics:
                change = "" if m.change is None else f"{m.change:+.1%}"
                lines.append(f"| {m.metric} | {m.verdict} | {_fmt(m.new)} | {_fmt(m.baseline)} | {change} | {_fmt(m.p_value)} |")
        return "\n".join(lines) + "\n"

    def junit(self) -> str:
        from xml.sax.saxutils import escape, quoteattr

        cases = []
        for m in self.metrics:
            body = ""
            if m.verdict == "regressed":
                body = f"<failure message={quoteattr(f'{m.metric} regressed')}>{escape(m.note)}</failure>"
            cases.append(f'  <testcase classname="edgecompress.gate" name={quoteattr(m.metric)}>{body}</testcase>')
        if self.verdict == "not comparable":
            cases.append('  <testcase classname="edgecompress.gate" name="comparable"><failure message="not comparable">'
                         f"{escape('; '.join(self.differences))}</failure></testcase>")
        failures = sum(m.verdict == "regressed" for m in self.metrics) + (self.verdict == "not comparable")
        return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="edgecompress gate" tests="{len(cases)}" '
                f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")


class _Open(BaseModel):
    """Reports carry far more than the gate reads: only what it reads is checked (types), the rest passes through."""

    model_config = ConfigDict(extra="allow")


class _Latency(_Open):
    p50: float | None = None
    estimated: bool | None = None


class _GateMetrics(_Open):
    latency_samples_ms: dict[str, list[float]] | None = None
    latency_ms: _Latency | None = None
    correct: str | None = Field(None, pattern="^[01]*$")
    size_mb: float | None = Field(None, ge=0)
    input_shape: Any = None  # compared for equality only


class _Runtime(_Open):
    runtime: str | None = None
    version: str | None = None
    threads: int | None = None


class _Environment(_Open):
    runtime: _Runtime | None = None
    cpu: str | None = None
    measured_on: str | None = None


class _Profile(_Open):
    name: str | None = None


class _Data(_Open):
    sha256: str | None = None


class _Artifact(_Open):
    preprocess: dict[str, Any] | None = None


class GateReport(_Open):
    """The parts of a validation report (``report.json``) the gate reads, type-checked: a report is input."""

    metrics: _GateMetrics
    profile: _Profile
    environment: _Environment | None = None
    data: _Data | None = None
    artifact: _Artifact | None = None


def read_report(path: Path | str) -> dict[str, Any]:
    """A validation report (``report.json``, or the report directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise DataError(f"{p}: no validation report", hint="pass a report.json written by edgecompress validate")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: unreadable report ({e})", hint="pass a report.json written by edgecompress validate") from e
    if not isinstance(data, dict) or "metrics" not in data or "profile" not in data:
        raise DataError(f"{p}: not a validation report", hint="pass a report.json written by edgecompress validate")
    try:
        GateReport.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = " -> ".join(str(x) for x in err["loc"])
        raise DataError(f"{p}: {where}: {err['msg']}",
                        hint="pass a report.json written by edgecompress validate, unedited") from None
    data["_path"] = str(p)
    return data


def _facts(r: dict[str, Any]) -> dict[str, Any]:
    env, m, prof = r.get("environment") or {}, r.get("metrics") or {}, r.get("profile") or {}
    runtime = env.get("runtime") or {}
    return {
        "profile": prof.get("name"),
        "runtime": runtime.get("runtime"),
        "runtime version": runtime.get("version"),
        "CPU": env.get("cpu"),
        "measured on": "remote" if str(env.get("measured_on", "")).startswith("remote") else env.get("measured_on"),
        "eval data": (r.get("data") or {}).get("sha256"),
        "input shape": m.get("input_shape"),
        "preprocessing": (r.get("artifact") or {}).get("preprocess"),
        "percentiles": "nearest-rank",
    }


def comparability(new: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """What differs between the two reports' measuring conditions (empty: comparable)."""
    a, b = _facts(new), _facts(base)
    return [f"{k}: {b[k]!r} in the baseline, {a[k]!r} now" for k in a if a[k] != b[k]]


def _latency(new: dict, base: dict, cfg: GateConfig) -> MetricResult:
    import statistics

    from scipy.stats import mannwhitneyu

    xs = ((new["metrics"].get("latency_samples_ms") or {}).get("artifact") or [])
    ys = ((base["metrics"].get("latency_samples_ms") or {}).get("artifact") or [])
    if len(xs) < 10 or len(ys) < 10:
        a, b = (new["metrics"].get("latency_ms") or {}), (base["metrics"].get("latency_ms") or {})
        if a.get("estimated") and b.get("estimated") and a.get("p50") and b.get("p50"):
            # roofline estimates are arithmetic, not timings: no noise to test, the threshold alone decides
            change = a["p50"] / b["p50"] - 1
            verdict = ("regressed" if change > cfg.latency_threshold else
                       "improved" if change < -cfg.latency_threshold else "pass")
            return MetricResult("latency p50 ms", verdict, a["p50"], b["p50"], change, None,
                                "both estimated (no noise): the threshold alone decides")
        return MetricResult("latency p50 ms", "inconclusive", note="a report has no raw latency samples (estimated, or "
                            "written by an older edgecompress): nothing to test")
    mx, my = statistics.median(xs), statistics.median(ys)
    bx = ((new["metrics"].get("latency_samples_ms") or {}).get("baseline") or [])
    by = ((base["metrics"].get("latency_samples_ms") or {}).get("baseline") or [])
    threads = [((r.get("environment") or {}).get("runtime") or {}).get("threads") for r in (new, base)]
    relative = cfg.normalize and len(bx) >= 10 and len(by) >= 10 and threads[0] == threads[1]
    if relative:  # each report's calls divided by its own FP32 baseline's median, timed in the same rounds
        nx, ny = statistics.median(bx), statistics.median(by)
        xs, ys = [x / nx for x in xs], [y / ny for y in ys]
    change = statistics.median(xs) / statistics.median(ys) - 1
    how = " (relative to the FP32 baseline timed alongside)" if relative else " (raw timings)"
    slower = mannwhitneyu(xs, ys, alternative="greater").pvalue
    faster = mannwhitneyu(xs, ys, alternative="less").pvalue
    if change > cfg.latency_threshold and slower < cfg.alpha:
        verdict, p, note = "regressed", slower, "slower beyond the threshold, and the rank test agrees"
    elif change < -cfg.latency_threshold and faster < cfg.alpha:
        verdict, p, note = "improved", faster, "faster beyond the threshold, and the rank test agrees"
    elif abs(change) > cfg.latency_threshold:
        verdict, p, note = "inconclusive", min(slower, faster), "a large change the rank test does not confirm"
    else:
        verdict, p, note = "pass", min(slower, faster), "within the threshold"
    note += how
    return MetricResult("latency p50 ms", verdict, mx, my, change, float(p), note)


def _accuracy(new: dict, base: dict, cfg: GateConfig) -> MetricResult | None:
    from scipy.stats import binomtest

    a, b = new["metrics"].get("correct"), base["metrics"].get("correct")
    if a is None or b is None:
        return None
    if len(a) != len(b):
        return MetricResult("accuracy", "not comparable", note=f"{len(a)} rows now, {len(b)} in the baseline")
    lost = sum(1 for x, y in zip(a, b) if x == "0" and y == "1")  # right before, wrong now
    won = sum(1 for x, y in zip(a, b) if x == "1" and y == "0")
    acc_new, acc_base = a.count("1") / len(a), b.count("1") / len(b)
    if lost + won == 0:
        return MetricResult("accuracy", "pass", acc_new, acc_base, 0.0, 1.0, "identical predictions on every row")
    p_worse = binomtest(lost, lost + won, 0.5, alternative="greater").pvalue
    p_better = binomtest(won, lost + won, 0.5, alternative="greater").pvalue
    change = acc_new - acc_base
    note = f"{lost} rows lost, {won} won (McNemar exact)"
    if p_worse < cfg.alpha:
        return MetricResult("accuracy", "regressed", acc_new, acc_base, change, float(p_worse), note)
    if p_better < cfg.alpha:
        return MetricResult("accuracy", "improved", acc_new, acc_base, change, float(p_better), note)
    return MetricResult("accuracy", "pass", acc_new, acc_base, change, float(min(p_worse, p_better)), note)


def _size(new: dict, base: dict, cfg: GateConfig) -> MetricResult | None:
    a, b = new["metrics"].get("size_mb"), base["metrics"].get("size_mb")
    if a is None or b is None:
        return None
    change = a / b - 1 if b else 0.0
    verdict = "regressed" if change > cfg.size_threshold else "improved" if change < -cfg.size_threshold else "pass"
    return MetricResult("size MB", verdict, a, b, change, None, "exact")


def _collapse(new: dict) -> MetricResult | None:
    """A text generator's release whose generations collapse regressed (no noise: the check is on its tokens)."""
    gen = new["metrics"].get("generation")
    if not isinstance(gen, dict) or "collapse" not in gen:
        return None
    reason = gen.get("collapse")
    if reason:
        return MetricResult("generation collapse", "regressed", note=f"the release's generations collapse: {reason}")
    return MetricResult("generation collapse", "pass", note="no collapse")


def gate(new: Path | str | dict, baseline: Path | str | dict, config: GateConfig | None = None) -> GateResult:
    """Judge report ``new`` against report ``baseline`` (see the module doc)."""
    from compress._optional import require

    require("scipy", "the regression gate's statistical tests")
    cfg = config or GateConfig()
    if not 0 < cfg.alpha < 1 or cfg.latency_threshold < 0:
        raise ConfigError("alpha must be in (0, 1) and the latency threshold >= 0", hint="e.g. --alpha 0.05 --threshold 0.1")
    n = new if isinstance(new, dict) else read_report(new)
    b = baseline if isinstance(baseline, dict) else read_report(baseline)
    result = GateResult("pass", new=n.get("_path", ""), baseline=b.get("_path", ""))
    result.differences = comparability(n, b)
    if result.differences:
        collapsed = _collapse(n)  # a collapse is the release's own failure, comparable or not
        if collapsed is not None and collapsed.verdict == "regressed":
            result.metrics, result.verdict = [collapsed], "regressed"
            return result
        result.verdict = "not comparable"
        return result
    result.metrics = [m for m in (_latency(n, b, cfg), _accuracy(n, b, cfg), _size(n, b, cfg), _collapse(n))
                      if m is not None]
    if isinstance(n["metrics"].get("generation"), dict):  # a generator's latency samples are its decode steps
        result.metrics[0].metric = "decode ms/token"
    order = {"regressed": 4, "not comparable": 3, "inconclusive": 2, "improved": 1, "pass": 0}
    worst = max((m.verdict for m in result.metrics), key=order.__getitem__, default="pass")
    result.verdict = worst
    return result


# -- run directories (edgecompress run) ------------------------------------------------------------------------


RUN_INDEX = "index.json"  # what a run directory lists (compress.recipes.execute writes it)
RUN_MARKER = ".edgecompress-run"  # what marks a directory as a run directory


def is_run_dir(path: Path | str) -> bool:
    return (Path(path) / RUN_INDEX).is_file() and (Path(path) / RUN_MARKER).is_file()


def gate_indexes(run: Path, index: dict[str, Any], base_dir: Path, base_index: dict[str, Any],
                 config: GateConfig | None = None) -> list[dict[str, Any]]:
    """Gate every validation of run ``index`` (in ``run``) against the same artifact × profile of the baseline run.

    One row per validation: the :class:`GateResult` as a dict plus its ``name``; "new" when the baseline run has
    no such validation.
    """
    base = {j["name"]: j for j in base_index.get("jobs", []) if j.get("verb") == "validate" and j.get("report")}
    rows = []
    for j in index.get("jobs", []):
        if j.get("verb") != "validate" or not j.get("report"):
            continue
        b = base.get(j["name"])
        if b is None:
            rows.append({"name": j["name"], "verdict": "new", "metrics": [], "differences": [],
                         "note": "no such validation in the baseline run"})
            continue
        result = gate(Path(run) / j["report"], Path(base_dir) / b["report"], config)
        same = j.get("report") == b.get("report") and base_dir == run
        rows.append({"name": j["name"], **result.as_dict(),
                     "note": "the same (cached) measurement as the baseline's: re-measure with --rerun 'validate/*'"
                     if same else ""})
    return rows


def gate_runs(new: Path | str, baseline: Path | str, config: GateConfig | None = None) -> list[dict[str, Any]]:
    """``edgecompress gate RUN --baseline OLD_RUN``: both run directories' validations, paired by name."""
    for p in (new, baseline):
        if not is_run_dir(p):
            raise DataError(f"{p}: not a run directory", hint="pass two run directories, or two report.json files")
    new_index = json.loads((Path(new) / RUN_INDEX).read_text(encoding="utf-8"))
    base_index = json.loads((Path(baseline) / RUN_INDEX).read_text(encoding="utf-8"))
    rows = gate_indexes(Path(new), new_index, Path(baseline), base_index, config)
    if not rows:
        raise DataError(f"{new}: the run validated nothing", hint="add a validate: section to the recipe")
    return rows


ORDER = {"regressed": 5, "not comparable": 4, "inconclusive": 3, "new": 2, "improved": 1, "pass": 0}


def worst(rows: list[dict[str, Any]]) -> str:
    v = max((r["verdict"] for r in rows), key=ORDER.__getitem__, default="pass")
    return "pass" if v == "new" else v


def row_line(row: dict[str, Any]) -> str:
    """One line for one gated validation of a run: verdict, each metric's verdict and change, what differs."""
    detail = "; ".join(f"{m['metric']} {m['verdict']}" + (f" ({m['change']:+.1%})" if m.get("change") is not None else "")
                       for m in row.get("metrics", []))
    diffs = "; ".join(row.get("differences", []))
    return (f"{row['name']}: {row['verdict'].upper()}" + (f": {detail}" if detail else "")
            + (f": not comparable: {diffs}" if diffs else "") + (f" [{row['note']}]" if row.get("note") else ""))


def runs_markdown(rows: list[dict[str, Any]], *, new: str, baseline: str, what: str = "artifact @ profile") -> str:
    """One Markdown summary (a CI step summary) of a run's (or a fleet's) gate: a line per validation (``what``:
    "device" for a fleet), then each one's metrics."""
    lines = [f"## edgecompress gate: **{worst(rows)}**", "", f"new: `{new}`  ", f"baseline: `{baseline}`", "",
             f"| {what} | verdict | latency | accuracy | size |", "|---|---|---|---|---|"]
    for r in rows:
        cells = {m["metric"].split()[0]: m for m in r.get("metrics", [])}

        def cell(key: str, cells: dict = cells) -> str:
            m = cells.get(key)
            if not m:
                return ""
            change = "" if m.get("change") is None else f" {m['change']:+.1%}"
            return f"{m['verdict']}{change}"

        lines.append(f"| {r['name'].split('/', 1)[-1]} | {r['verdict']} | {cell('latency') or cell('decode')} | "
                     f"{cell('accuracy')} | "
                     f"{cell('size')} |")
    for r in rows:
        for d in r.get("differences", []):
            lines.append(f"\n- {r['name']}: not comparable: {d}")
    return "\n".join(lines) + "\n"


def runs_junit(rows: list[dict[str, Any]]) -> str:
    """One JUnit test case per validation gated: a failure when it regressed or is not comparable."""
    from xml.sax.saxutils import escape, quoteattr

    cases = []
    for r in rows:
        body = ""
        if r["verdict"] in ("regressed", "not comparable"):
            why = "; ".join([f"{m['metric']} {m['verdict']}" for m in r.get("metrics", []) if m["verdict"] == "regressed"]
                            + r.get("differences", []))
            body = f"<failure message={quoteattr(r['verdict'])}>{escape(why)}</failure>"
        cases.append(f'  <testcase classname="edgecompress.gate" name={quoteattr(r["name"])}>{body}</testcase>')
    failures = sum(r["verdict"] in ("regressed", "not comparable") for r in rows)
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="edgecompress gate" tests="{len(cases)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")


# -- validations on several devices (validate --remote A,B,C or a fleet file) -----------------------------------


def read_fleet(path: Path | str) -> dict[str, Any] | None:
    """A fleet's report.json (``kind: fleet``, written by ``validate`` on several devices), or None when ``path`` is
    another report (or none)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != "fleet" or not isinstance(data.get("devices"), list):
        return None
    data["_dir"] = str(p.parent)
    return data


def gate_fleets(new: Path | str, baseline: Path | str, config: GateConfig | None = None) -> list[dict[str, Any]]:
    """``edgecompress gate FLEET_REPORT --baseline LAST_RELEASE_FLEET_REPORT``: each device's report against the same
    device's (paired by name) in the baseline. A device that did not answer now is "not comparable" (nothing was
    measured there); one the baseline lacks (or did not reach) is "new"."""
    n, b = read_fleet(new), read_fleet(baseline)
    for path, f in ((new, n), (baseline, b)):
        if f is None:
            raise DataError(f"{path}: not the report of a validation on several devices",
                            hint="gate two fleet reports (validate --remote A,B or a fleet file), or two reports")
    base = {d.get("name"): d for d in b["devices"]}
    rows = []
    for d in n["devices"]:
        name, old = d.get("name"), base.get(d.get("name"))
        if not d.get("report"):
            rows.append({"name": name, "verdict": "not comparable", "metrics": [], "note": "",
                         "differences": [f"{name} was not measured in this run ({d.get('status')}: {d.get('message')})"]})
        elif old is None or not old.get("report"):
            rows.append({"name": name, "verdict": "new", "metrics": [], "differences": [],
                         "note": "no such device in the baseline" if old is None
                         else f"the baseline did not measure it ({old.get('status')})"})
        else:
            result = gate(Path(n["_dir"]) / d["report"], Path(b["_dir"]) / old["report"], config)
            rows.append({"name": name, **result.as_dict(), "note": ""})
    return rows
