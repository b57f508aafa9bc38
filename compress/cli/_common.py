"""Helpers shared by the command modules: consoles, progress, config building."""

from __future__ import annotations

from typing import Any, Self, TypeVar

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


def live_console():
    """The stderr console when live output is wanted; None with -q or when stderr is not a terminal."""
    st = state()
    con = console(stderr=True)
    if (st is not None and st.quiet) or not con.is_terminal:
        return None
    return con


def status(message: str):
    """A spinner on stderr for long work (off with -q or when stderr is not a terminal)."""
    import contextlib

    con = live_console()
    return contextlib.nullcontext() if con is None else con.status(message)


class PhaseProgress:
    """Rich progress bars on stderr for a library call that reports ``{"phase": ...}`` dicts.

    Used as ``with Sub() as progress: library_call(..., progress=progress)``; off with -q or when
    stderr is not a terminal. Subclasses map phases to bars in ``show`` with ``task``.
    """

    def __init__(self) -> None:
        self.bar = None
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> Self:
        con = live_console()
        if con is None:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=con)
        self.bar.start()
        return self

    def task(self, key: str, label: str, total, completed: int = 0) -> int:
        """The bar for ``key``, added on first use."""
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(label, total=total, info="", completed=completed)
        return self.tasks[key]

    def __call__(self, d: dict) -> None:
        if self.bar is not None:
            self.show(d)

    def show(self, d: dict) -> None:
        raise NotImplementedError

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


force_option = click.option("--force", is_flag=True, help="Replace OUT if it exists.")
