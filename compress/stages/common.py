"""What every stage shares: parity measurement, sample inputs, step records, writing a checkpoint, a transformer's
layer list, Accelerate."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError
from compress.tasks.outputs import row_cosines


@dataclass
class Parity:
    """Agreement of a candidate model's outputs with a reference's on the same inputs."""

    max_abs_diff: float
    mean_abs_diff: float
    cosine_min: float
    argmax_agreement: float | None
    n: int
    cosine_mean: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: every reference output a number (False: the source model itself gives NaN/Inf, no tolerance can help)
    reference_finite: bool = True

    def as_dict(self) -> dict[str, Any]:
        d = {
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "cosine_min": self.cosine_min,
            "n": self.n,
        }
        if self.cosine_mean is not None:
            d["cosine_mean"] = self.cosine_mean
        if self.argmax_agreement is not None:
            d["argmax_agreement"] = self.argmax_agreement
        if not self.reference_finite:
            d["reference_finite"] = False
        d.update(self.extra)
        return d


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, classification: bool) -> Parity:
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    cos = row_cosines(cand, ref)  # one cosine per sample, even of a map
    agree = float((ref.argmax(-1) == cand.argmax(-1)).mean()) if classification else None
    return Parity(float(diff.max()), float(diff.mean()), float(cos.min()), agree, int(ref.shape[0]),
                  cosine_mean=float(cos.mean()), reference_finite=bool(np.isfinite(ref).all()))


def measure_parity(reference, candidate, texts: list[str], classification: bool, *, pad_to: int | None = None) -> Parity:
    """Encode ``texts`` once with the reference's encoder, run both runtime backends, close both, compare."""
    try:
        batch = reference.encode(texts, pad_to=pad_to)
        return compare_outputs(reference.predict(batch), candidate.predict(batch), classification)
    finally:
        reference.close()
        candidate.close()


#: a sentence-transformers checkpoint's files beside the model (pooling and module config), which the model does not
#: carry: a checkpoint written from it keeps the teacher's
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
ST_DIRS = ("1_Pooling", "2_Normalize")


def save_checkpoint(model, tokenizer, teacher, directory: Path) -> None:
    """Write ``model`` as a checkpoint directory: weights (safetensors), tokenizer, and the teacher's
    sentence-transformers files."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    for name in ST_FILES:
        if (teacher.path / name).is_file():
            shutil.copy2(teacher.path / name, directory / name)
    for name in ST_DIRS:
        if (teacher.path / name).is_dir() and not (directory / name).exists():
            shutil.copytree(teacher.path / name, directory / name)


def layer_list(model) -> tuple[str, Any]:
    """The ``nn.ModuleList`` of transformer blocks (found by structure, not by module names)."""
    from torch import nn

    n = model.config.num_hidden_layers
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise ConfigError(
            f"cannot find the {n} transformer layers of {type(model).__name__}",
            hint="pass an existing student checkpoint with --student instead",
        )
    return max(found, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def make_accelerator(precision: str = "no", grad_accum: int = 1):
    """Accelerate for this process (one of several under ``accelerate launch``): distillation's and fine-tuning's."""
    import os

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    if AcceleratorState._shared_state.get("_mixed_precision") not in (None, precision):
        # Accelerate keeps one state per process and refuses another precision in a later run (a second distill
        # from Python, search): start its state afresh, keeping the process group (PartialState)
        AcceleratorState._reset_state()
    kwargs = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=grad_accum, kwargs_handlers=[kwargs],
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and accelerator.num_processes == 1:
        raise ConfigError(
            f"launched as {os.environ['WORLD_SIZE']} processes but Accelerate runs each alone (no GPU for --multi_gpu)",
            hint="on CPUs launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...",
        )
    if accelerator.num_processes == 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        from compress.host.cpu import usable_cpus

        torch.set_num_threads(usable_cpus())  # the CPUs this process may use (a cgroup quota too), not the host's
    return accelerator
