"""Any PyTorch module, as a ``torch.export`` program (``.pt2``): load it without unpickling, and read its input spec.

A ``.pt2`` archive holds the graph as JSON and the weights as tensors, so it loads with ``torch.load(...,
weights_only=True)``. ``torch.export.load`` quietly retries with ``weights_only=False`` when that fails, which
unpickles whatever the archive holds: arbitrary code, from a file someone sent you. :func:`load_program` refuses
that fallback unless ``allow_pickle`` is given, the same opt-in checkpoints have.

:func:`program_inputs` / :func:`program_outputs` describe the program's user inputs and outputs as the manifest
does (:class:`~compress.artifact_entries.TensorSpec`: name, numpy dtype, shape with dynamic dimensions named by their
symbol), so the program itself says what it takes; what it cannot say (task, labels, preprocessing) comes
from the user.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compress.artifact_entries import TensorSpec
from compress.errors import ModelLoadError

__all__ = ["load_program", "program_inputs", "program_outputs", "save_program", "training_mode_ops"]


@contextlib.contextmanager
def no_unpickling(source: str) -> Iterator[None]:
    """Within the block, ``torch.load`` only loads tensors: a call asking for ``weights_only=False`` is refused."""
    import torch

    real = torch.load

    def tensors_only(f, *args: Any, weights_only: bool | None = None, **kwargs: Any):
        if weights_only is False:
            raise ModelLoadError(
                f"{source} holds objects that only unpickling can load (arbitrary code could run)",
                hint="re-export it with plain tensors, or pass --allow-pickle if you trust where it came from")
        return real(f, *args, weights_only=True, **kwargs)

    torch.load = tensors_only
    try:
        yield
    finally:
        torch.load = real


def load_program(path: Path | str, *, allow_pickle: bool = False):
    """A ``torch.export.ExportedProgram`` from a ``.pt2`` file; pickled content only with ``allow_pickle``."""
    from compress._optional import require

    torch = require("torch", "loading a torch.export program")
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such file", hint="pass the .pt2 file torch.export.save wrote")
    if not zipfile.is_zipfile(p):
        raise ModelLoadError(f"{p}: not a torch.export archive (.pt2 is a zip)",
                             hint="save the module with torch.export.save(torch.export.export(model, args), path); "
                                  "TorchScript and pickled modules need --allow-pickle")
    guard = contextlib.nullcontext() if allow_pickle else no_unpickling(str(p))
    try:
        with guard:
            return torch.export.load(str(p))
    except ModelLoadError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelLoadError(f"{p}: cannot load the program ({type(e).__name__}: {first[:200]})",
                             hint="was it written by torch.export.save with this torch version?") from e


def _dtype(t) -> str:
    import torch

    return str(torch.empty((), dtype=t).numpy().dtype) if t is not torch.bfloat16 else "bfloat16"


def _spec(name: str, val) -> TensorSpec:
    import torch

    shape: list[int | str] = [int(d) if not isinstance(d, torch.SymInt) else str(d) for d in val.shape]
    return TensorSpec(name=name, dtype=_dtype(val.dtype), shape=shape)


def program_inputs(program) -> list[TensorSpec]:
    """The program's user inputs (not its parameters or buffers), in call order."""
    from torch.export.graph_signature import InputKind

    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return [_spec(name, nodes[name].meta["val"]) for name in user]


def program_outputs(program) -> list[TensorSpec]:
    """The program's user outputs, in return order."""
    from torch.export.graph_signature import OutputKind

    out_node = next(n for n in program.graph.nodes if n.op == "output")
    vals = out_node.args[0]
    specs = program.graph_signature.output_specs
    return [_spec(s.arg.name, v.meta["val"]) for s, v in zip(specs, vals, strict=True)
            if s.kind == OutputKind.USER_OUTPUT]


def save_program(call, example, path: Path | str) -> None:
    """Export ``call`` (an ``nn.Module`` taking one tensor) with a dynamic batch and write it with
    ``torch.export.save``: how a model whose shape no config describes any more (a channel-pruned CNN) is kept,
    loadable without unpickling."""
    import torch

    batch = torch.export.Dim("batch_size", min=1, max=4096)
    was_training = call.training
    call.eval()
    try:
        program = torch.export.export(call, (example,), dynamic_shapes=({0: batch},))
    finally:
        call.train(was_training)
    torch.export.save(program, str(path))


def training_mode_ops(program) -> list[str]:
    """Operators the program runs in training mode (BatchNorm on batch statistics, dropout): a module exported
    without ``model.eval()`` computes something else at inference, and no exporter can fix that."""
    found = []
    for n in program.graph.nodes:
        target = str(n.target)
        if "batch_norm" in target and len(n.args) > 5 and n.args[5] is True:
            found.append(f"{n.name} (BatchNorm on batch statistics)")
        elif "_native_batch_norm_legit_functional" in target or ("dropout" in target and n.args[-1:] == (True,)):
            found.append(f"{n.name} ({target})")
    return found
