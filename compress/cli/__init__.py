"""The ``edgecompress`` command line: a thin Click layer over the library.

Subcommands load lazily (one module each), so ``edgecompress --help`` imports no ML runtime.
Every library error becomes one line on stderr and exit code 2 (1 for a failed budget);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys

import click

from compress import __version__
from compress.errors import exit_codes_help
from compress.recipes.verbs import VERBS

# command name -> "module:attribute": the recipe verbs' from their table, then the commands that are only commands
COMMANDS: dict[str, str] = {
    **{name: verb.command for name, verb in VERBS.items()},
    "inspect": "compress.cli.inspect:inspect_cmd",
    "profiles": "compress.cli.profiles:profiles",
    "doctor": "compress.cli.doctor:doctor_cmd",
    "demo": "compress.cli.demo:demo_cmd",
    "gate": "compress.cli.gate:gate_cmd",
    "run": "compress.cli.run:run_cmd",
    "search": "compress.cli.search:search_cmd",
    "finetune": "compress.cli.finetune:finetune_cmd",
}


class LazyGroup(click.Group):
    """Click group whose subcommands are imported only when used (Click docs: lazily loading subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name].partition(":")
        return getattr(importlib.import_module(module), attr)


class State:
    def __init__(self, debug: bool, verbosity: int) -> None:
        self.debug = debug
        self.verbosity = verbosity

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="edgecompress")
@click.option("--debug", is_flag=True, envvar="EDGECOMPRESS_DEBUG", help="Show tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars or tables on stderr.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """Distil, prune, quantize and export fine-tuned transformers for small devices,
    and validate every artifact against a device profile.

    \b
    Typical run:
      edgecompress export TEACHER_DIR --out model-onnx
      edgecompress quantize model-onnx --precision int8 --out model-int8
      edgecompress validate model-int8 --profile host --data dev.tsv --teacher TEACHER_DIR

    (The exit codes follow, from compress.errors.EXIT_CODES.)
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, show_time=False, console=_stderr())
    if verbose < 1:
        handler.addFilter(_own_warnings_only)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    # transformers sets its own level from TRANSFORMERS_VERBOSITY when first imported (after this), and on 5 prints
    # its load reports, model-type notes and deprecations through its own handler: third-party chatter is for -v
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", ("error", "warning", "info")[min(verbose, 2)] if not quiet else "error")
    for noisy in ("accelerate", "onnx_model", "fusion_base", "onnx_model_bert", "transformers", "optimum", "nncf",
                  "onnxruntime", "optimum.onnxruntime", "optimum.exporters"):
        logging.getLogger(noisy).setLevel(logging.ERROR if verbose < 2 else logging.DEBUG)
    if verbose < 1 and not debug:  # transformers' "Loading weights" bar, ONNX Runtime's [E:onnxruntime:...] lines
        from compress.native_stderr import quiet_native_logs

        quiet_native_logs()
    if verbose < 1:
        import warnings

        warnings.filterwarnings("ignore")  # exporter tracer/deprecation chatter; -v shows it
    ctx.obj = State(debug=debug, verbosity=-1 if quiet else verbose)


cli.help = inspect.cleandoc(cli.help or "").replace("(The exit codes follow, from compress.errors.EXIT_CODES.)",
                                                    exit_codes_help())


def _own_warnings_only(record: logging.LogRecord) -> bool:
    """Without -v, other libraries' warnings stay off the screen (ONNX Runtime's quantizer logs "Please
    consider to run pre-processing…" to the root logger, its fusions "symbolic shape inference disabled or
    failed"): they are about its internals, and edgecompress reports what matters in its own words."""
    return record.levelno >= logging.ERROR or record.name == "compress" or record.name.startswith("compress.")


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the group and turn library errors into one line + exit code.

    ``argv`` None: this is the process's entry (the console script, ``python -m compress``), and a stopping signal
    after the command ended exits 128 + the signal with one line (:func:`compress.interrupt.finishing`) instead of
    killing the process by the signal. Given ``argv`` (a caller in the same process), the signal handlers are put
    back as they were."""
    from compress import interrupt

    interrupt.reset()
    with interrupt.sigterm_as_interrupt():  # SIGTERM cleans up like Ctrl-C (staged outputs removed)
        try:
            code = _run(argv)
            if argv is None:
                interrupt.finishing("ended" if code == 0 else "failed")
        except KeyboardInterrupt:  # the signal came while the command's error line was being written
            code = _interrupted()
            if argv is None:
                interrupt.finishing("failed")
    if interrupt.signal_received():
        interrupt.answered()
        if argv is not None:  # a caller in this process goes on: a later library call must not see this signal
            interrupt.reset()
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """Run the command (inside :func:`main`'s signal handlers); its exit code, after its one error line if it
    failed."""
    from compress.errors import EdgeCompressError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("EDGECOMPRESS_DEBUG"))
    from compress import interrupt
    from compress.errors import StageError
    from compress.storage import storage_error

    try:
        rc = cli.main(args=argv, prog_name="edgecompress", standalone_mode=False)
        if interrupt.swallowed():  # a library ate the Ctrl-C and the command carried on: it still ends as interrupted
            return _interrupted()
        if argv is None:  # the work is over: a signal from here on is answered by finishing's handler
            interrupt.finishing("ended")
    except EdgeCompressError as e:
        if e.exit_code != 130 and interrupt.caused_by_signal(e) and not debug:  # a wrapped or swallowed Ctrl-C
            return _interrupted()
        if debug:
            raise
        if type(e) is StageError:  # a stage's wrapper around a full disk, a read-only location, ...
            e = storage_error(e) or e
        click.echo(f"{e.label}: {e}", err=True)
        return interrupt.exit_code() if e.exit_code == 130 else e.exit_code
    except click.exceptions.Abort:  # Click's name for a KeyboardInterrupt (Ctrl-C, or SIGTERM via interrupt)
        if interrupt.signal_received():
            return _interrupted()
        click.echo("aborted", err=True)
        return interrupt.exit_code()
    except click.ClickException as e:
        e.show()
        return 2 if e.exit_code == 1 else e.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:
        if interrupt.caused_by_signal(e) and not debug:  # a library wrapped the interrupt (pybind11's ImportError)
            return _interrupted()
        if debug:
            raise
        env = storage_error(e)  # the user's environment (disk full, read-only, no permission): exit 2
        if env is not None:
            click.echo(f"error: {env}", err=True)
            return env.exit_code
        invalid = _invalid_value(e)
        if invalid is not None:  # a value an option led to, refused by a model the command built from it
            click.echo(f"error: {invalid}", err=True)
            return 2
        click.echo(f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        return 3
    return rc if isinstance(rc, int) else 0


def _invalid_value(e: Exception) -> str | None:
    """pydantic's several-line ValidationError as one line (its first error: the model, the field, the rule); None
    for any other exception. The settings' own errors name their flags (cli._common.build_config); this is the net
    under a model a stage builds from an option's value."""
    from pydantic import ValidationError

    if not isinstance(e, ValidationError):
        return None
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return (f"{e.title}{' ' + where if where else ''}: {err['msg']}{more}; check the option that sets it "
            "(rerun with --debug for the traceback)")


def _interrupted() -> int:
    from compress import interrupt

    click.echo(interrupt.interrupted_line(), err=True)
    return interrupt.exit_code()
