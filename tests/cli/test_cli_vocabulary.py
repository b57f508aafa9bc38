"""One name for one idea across commands: a user who learnt one command knows the others."""

from __future__ import annotations

import click
import pytest

from compress.cli import cli

# the long option -> the short flag it has on every command that takes it
SHORT = {"--profile": "-p", "--out": "-o", "--teacher": "-t", "--eval-data": "-d"}
EVAL_DATA_COMMANDS = {"validate", "quantize", "distill", "prune"}


def _commands():
    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


@pytest.mark.parametrize("name", sorted(_commands()))
def test_shared_options_have_the_same_short_flag(name):
    cmd = _commands()[name]
    for param in cmd.params:
        if not isinstance(param, click.Option):
            continue
        for long, short in SHORT.items():
            if long in param.opts:
                assert short in param.opts, f"{name} {long} lacks {short}"


@pytest.mark.parametrize("name", sorted(EVAL_DATA_COMMANDS))
def test_eval_data_has_one_name_everywhere(name):
    opts = [o for p in _commands()[name].params if isinstance(p, click.Option) for o in p.opts]
    assert "--eval-data" in opts and "-d" in opts


def test_the_readmes_profile_row_lists_exactly_the_commands_that_take_it():
    """The README's option table is a promise: the commands it lists for --profile are those that have it (it once
    listed demo, which has none)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| the device profile |"))
    listed = {re.sub(r"\s*\(.*\)", "", c).strip() for c in row.rstrip(" |").rsplit("|", 1)[1].split(",")}
    having = {name for name, cmd in _commands().items()
              if any("--profile" in p.opts for p in cmd.params if isinstance(p, click.Option))}
    assert listed == having, (listed, having)
