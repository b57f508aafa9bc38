"""Helpers shared by the command modules: consoles, progress, config building."""

from __future__ import annotations

from typing import Any, TypeVar

import click
from pydantic import BaseModel, ValidationError

from compress.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def build_config(model: type[M], **values: Any) -> M:
    """Build a typed config from CLI values (None means 'not given'); errors name the option."""
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        opt = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "option"
        raise ConfigError(f"{opt}: {err['msg']}", hint=f"see `edgecompress {click.get_current_context().info_name} --help`") from e


def state() -> Any:
    return click.get_current_context().find_root().obj


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def status(message: str):
    """A spinner on stderr for long work (off with -q or when stderr is not a terminal)."""
    import contextlib

    st = state()
    con = console(stderr=True)
    if (st is not None and st.quiet) or not con.is_terminal:
        return contextlib.nullcontext()
    return con.status(message)


force_option = click.option("--force", is_flag=True, help="Replace OUT if it exists.")
