"""Progress on stderr without a terminal (CI logs): ``PhaseProgress`` prints a plain line when a phase
starts and ends and one every ~30 s with done/total, elapsed time and ETA; distill reports every phase."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import write_tsv

from compress.cli._common import PhaseProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Bars(PhaseProgress):
    labels = {"teacher": "teacher outputs"}

    def show(self, d: dict) -> None:  # the terminal view; not used without a terminal
        raise AssertionError("no bars without a terminal")


def test_plain_lines_at_phase_start_end_and_every_30_seconds(capsys):
    clock = Clock()
    with Bars(clock=clock) as progress:
        assert progress.plain and progress.bar is None
        progress.delay = 0  # announce every phase at once
        progress({"phase": "load", "label": "loading the teacher"})
        clock.now += 4
        progress({"phase": "teacher", "done": 10, "total": 100})
        clock.now += 10
        progress({"phase": "teacher", "done": 20, "total": 100})  # < 30 s since the last line: quiet
        clock.now += 21
        progress({"phase": "teacher", "done": 40, "total": 100})
        clock.now += 29
        progress({"phase": "teacher", "done": 60, "total": 100})
        clock.now += 1
        progress({"phase": "teacher", "done": 100, "total": 100})
        progress({"phase": "train", "step": 1, "total": 4, "loss": 0.5, "eval": 0.75, "best": 0.75,
                  "metric": "accuracy"})
        clock.now += 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "loading the teacher ...",
        "loading the teacher: done in 4s",
        "teacher outputs: 0/100 ...",
        "teacher outputs: 40/100 (40%), 31s elapsed, ETA 1m02s",  # 30 rows in 31 s, 60 to go
        "teacher outputs: done in 1m01s (100/100)",
        "train: 0/4 ...",
        "train: 1/4: eval accuracy 0.7500 (best 0.7500)",
        "train: done in 2s (1/4), loss 0.5000",
    ]


def test_phases_quicker_than_the_delay_stay_quiet_and_long_ones_are_announced(capsys):
    """An input error found in the first seconds stays a one-line error; a long stretch is announced after
    ``delay`` seconds, then reports every ``every`` seconds even without events."""
    clock = Clock()
    with Bars(clock=clock) as progress:
        progress({"phase": "load", "label": "loading the teacher"})
        clock.now += 9
        progress.tick()
        progress({"phase": "student", "label": "building the student"})  # load ended quietly after 9 s
        clock.now += 10
        progress.tick()
        clock.now += 29
        progress.tick()
        clock.now += 1
        progress.tick()
        progress({"phase": "teacher", "done": 1, "total": 10})
        clock.now += 1
    assert capsys.readouterr().err.splitlines() == [
        "building the student ...",
        "building the student: 40s elapsed",
        "building the student: done in 40s",
    ]  # the teacher phase lasted 1 s: quiet


def test_quiet_prints_nothing(capsys):
    import click

    @click.command()
    def cmd():
        with Bars() as progress:
            progress({"phase": "load", "label": "loading"})
            progress({"phase": "teacher", "done": 1, "total": 1})

    from compress.cli import State

    result = CliRunner().invoke(cmd, [], obj=State(debug=False, verbosity=-1))
    assert result.exit_code == 0 and result.stderr == ""


def test_distill_reports_its_phases_without_a_terminal(bert_classifier, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from compress.cli import cli

    monkeypatch.setattr(PhaseProgress, "delay", 0)  # the tiny fixture is quick: announce every phase
    data = write_tsv(tmp_path / "data")
    out = tmp_path / "student"
    result = CliRunner().invoke(cli, [
        "distill", "--teacher", str(bert_classifier), "--train", str(data), "--eval", str(data), "--out", str(out),
        "--layers", "1", "--max-steps", "2", "--batch-size", "4", "--eval-every", "1", "--max-length", "32",
        "--max-train-rows", "8",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    err = result.stderr.splitlines()
    for line in ("loading the teacher", "building the student", "tokenising 8 training rows",
                 "teacher outputs: 0/8 ...", "teacher outputs: done in", "scoring the teacher on 12 eval rows",
                 "distilling: 0/2 ...", "distilling: 1/2: eval accuracy", "distilling: done in",
                 "writing the student"):
        assert any(x.startswith(line) for x in err), (line, err)
    assert "wrote " in result.stdout and "wrote " not in result.stderr


def test_export_and_quantize_say_what_they_do_without_a_terminal(bert_classifier, tmp_path, monkeypatch):
    """The spinner's message becomes plain lines in a CI log: when the work has run a while, and when it ends."""
    from compress.cli import cli

    monkeypatch.setattr(PhaseProgress, "delay", 0)  # the tiny fixture is quick: announce at once
    result = CliRunner().invoke(cli, ["export", str(bert_classifier), "--out", str(tmp_path / "onnx")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    err = result.stderr.splitlines()
    assert any(x.startswith(f"exporting {bert_classifier} to onnx ...") for x in err), err
    assert any(x.startswith(f"exporting {bert_classifier} to onnx: done in") for x in err), err
    result = CliRunner().invoke(cli, ["-q", "quantize", str(tmp_path / "onnx"), "--out", str(tmp_path / "int8")],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "quantizing" not in result.stderr  # -q: no progress


def test_a_prune_summary_with_a_teacher_scoring_zero_says_retention_is_undefined():
    """Before: a TypeError formatting retention None (a question-answering teacher whose F1 on --eval was 0)."""
    from compress.cli.prune import summary_lines

    lines = summary_lines({"recovery": {"steps": 4, "train_seconds": 1.0, "eval_metric": 0.0, "metric": "f1",
                                        "teacher_eval_metric": 0.0, "retention": None},
                           "eval": {"metric": "f1", "written": 0.0, "rows": 8, "unpruned": 0.0,
                                    "retention_vs_unpruned": None}})
    assert sum("retention undefined: the reference scores 0" in ln for ln in lines) == 1, lines
