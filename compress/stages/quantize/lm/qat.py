"""Quantization-aware INT4 for causal LMs (``quantize LM-ARTIFACT --precision int4 --qat-steps N --qat-data TEXT``):
when post-training INT4 loses perplexity, train the checkpoint the FP32 artifact was exported from with its weights
fake-quantized at exactly the grid the INT4 artifact will hold (:mod:`.fake_quant`: bits 4, ``--block-size``,
``--symmetric``, the LM head at ``--lm-head-bits`` and the embedding table at ``--embeddings-bits``, 8 by default),
gradients through the rounding by the straight-through estimator, distilling from the FP32 model itself: the loss is
the KL divergence of the next-token distributions (teacher's to student's) at every position of ``--qat-data`` text
windows of the model's perplexity window. ``--qat-lora-rank R`` trains LoRA adapters on every linear layer instead of
the weights (NNCF's FQ_LORA and torchao's QAT + LoRA recipe); they are merged before export.

The held-out tenth of the windows (at most 32) chooses the weights: the step whose fake-quantized model is closest to
the teacher there (mean KL); they are exported again with the artifact's own export settings, and the format's
post-training quantizer (ONNX Runtime's round to nearest, :func:`.onnx.quantize_lm_onnx`) quantizes them. The
grid is the same by construction: round to nearest derives each block's scale from the weights alone, and those are
the weights training saw on the grid. The lineage, the collapse check and every comparison stay against the
original FP32 artifact.

Why our fake quantizer and not torchao's or NNCF's: torchao's ``IntxFakeQuantizeConfig`` (symmetric) scales a block
by ``absmax / 7.5`` and its ``Int4WeightOnlyQATQuantizer`` is tinygemm's asymmetric bf16 scheme; NNCF's FQ_LORA
learns the scales. Neither is the grid ONNX Runtime's MatMulNBits round to nearest writes (the signed extreme on
-8), so the artifact would not hold what training saw; and torchao is only in the transformers-5 environment here.

Interrupted runs resume: the state sits in ``OUT.qad/`` beside the output (as :mod:`.qad`'s) until the artifact is
written. Only ONNX artifacts take it; other formats refuse ``--qat-steps`` in one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compress.artifact import Artifact
from compress.errors import ConfigError
from compress.progress import Progress, silent, sink
from compress.stages.quantize.config import QuantizeConfig
from compress.stages.quantize.train_state import train_run

if TYPE_CHECKING:  # torch is imported when a run starts, not when quantize checks a request
    from compress.stages.quantize.lm.fake_quant import Scheme

log = logging.getLogger("compress.stages.quantize")

STATE = "lm_qat_state.pt"
#: peak learning rates (AdamW, warm-up then cosine): the whole model's weights, or LoRA adapters (measured on
#: stories260K, docs/guides/lm.md)
DEFAULT_LR = {"weights": 3e-4, "lora": 3e-3}
MAX_HELD = 32  #: held-out windows that choose the weights, at most
_OPTIONS = ("qad.data", "qad.source", "qad.lr", "qad.batch_size", "qad.lora_rank")


def check_request(art: Artifact, config: QuantizeConfig) -> Path | None:
    """Refuse, before anything is trained or written, what quantization-aware INT4 cannot do (one line each); the
    PyTorch checkpoint to train, or None without ``--qat-steps``."""
    from compress.stages.quantize.qad import trainable_source

    given = sorted(config.flat_key(p) for p in config.given() if p in _OPTIONS)
    if not config.qad.steps:
        if given:
            raise ConfigError(f"{', '.join('--' + n.replace('_', '-') for n in given)} appl"
                              f"{'ies' if len(given) == 1 else 'y'} to quantization-aware INT4 (it would be ignored)",
                              hint="add --qat-steps N, or drop it")
        return None
    if config.precision != "int4":
        raise ConfigError("--qat-steps trains a causal LM for INT4 weights (INT8 weight-only loses next to nothing)",
                          hint="add --precision int4, or drop --qat-steps")
    if config.int4.algorithm != "rtn":
        raise ConfigError(f"--qat-steps trains for round-to-nearest INT4; --int4-algorithm {config.int4.algorithm} "
                          "would round the trained weights onto another grid", hint="drop --int4-algorithm")
    if config.accuracy.max_perplexity_increase is not None:
        raise ConfigError("--max-perplexity-increase with --qat-steps: the trained model is fake-quantized at 4 bits "
                          "in every linear layer", hint="drop one of them")
    if config.exclude_nodes:
        raise ConfigError("--exclude-nodes with --qat-steps: the trained model is fake-quantized in every linear layer",
                          hint="drop --exclude-nodes")
    if config.calibration.data:
        raise ConfigError("--calibration calibrates GPTQ, which --qat-steps does not run: quantization-aware INT4 "
                          "trains on --qat-data", hint="pass the text as --qat-data")
    if not config.qad.data:
        raise ConfigError("quantization-aware INT4 distils from the FP32 model on text, and none was given",
                          hint="pass --qat-data TEXT (.txt or .jsonl, text like the model's use)")
    return trainable_source(art, config)


def scheme_of(config: QuantizeConfig) -> Scheme:
    """The grid the ONNX route's INT4 writes for ``config`` (:func:`.onnx.quantize_lm_onnx`'s defaults)."""
    from compress.stages.quantize.lm.common import GENERATOR_BLOCK
    from compress.stages.quantize.lm.fake_quant import Scheme

    block = config.int4.block_size if "block_size" in config.given_keys() else GENERATOR_BLOCK
    return Scheme(bits=4, block=block, symmetric=config.int4.symmetric, lm_head_bits=config.int4.lm_head_bits,
                  embeddings_bits=config.int4.embeddings_bits)


class _Windows:
    """The transfer text as token windows, a held-out tenth (at most :data:`MAX_HELD`) apart."""

    def __init__(self, art: Artifact, path: str) -> None:
        from compress.stages.quantize.lm.common import text_windows

        windows = text_windows(art, path, art.manifest.postprocess.window, None, "--qat-data")
        if len(windows) < 2:
            raise ConfigError(f"{path}: one window of {windows.shape[1]} tokens; quantization-aware INT4 needs "
                              "at least two (one held out)", hint="give more text with --qat-data")
        order = np.random.default_rng(0).permutation(len(windows))
        hold = min(MAX_HELD, max(1, len(windows) // 10))
        self.held, self.train = windows[np.sort(order[:hold])], windows[np.sort(order[hold:])]
        self.source = str(path)

    def at_step(self, step: int, size: int) -> np.ndarray:
        """The ``step``-th batch of an endless stream of seeded per-epoch shuffles: the same on a resumed run."""
        n = len(self.train)
        rows = []
        for pos in range(step * size, (step + 1) * size):
            epoch, i = divmod(pos, n)
            rows.append(int(np.random.default_rng([2, epoch]).permutation(n)[i]))
        return self.train[rows]


def _kl(student, teacher):
    import torch.nn.functional as F

    s, t = F.log_softmax(student.float(), -1).flatten(0, 1), F.log_softmax(teacher.float(), -1).flatten(0, 1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


class _Run:
    """One run: the FP32 teacher, the fake-quantized student, the optimiser, and the state a resume needs."""

    STATE, LABEL, WHAT = STATE, "QAT", "quantization-aware INT4"

    write_kind = "hf"  # what :func:`.qad.export_trained` writes the student back as

    def __init__(self, art: Artifact, config: QuantizeConfig, source: Path, work: Path) -> None:
        from compress.stages.quantize.lm.fake_quant import attach
        from compress.teachers.lm import CausalLM

        self.art, self.config, self.source, self.work = art, config, source, work
        self.teacher, self.student = CausalLM.load(source), CausalLM.load(source).teacher
        self.teacher.model.eval().requires_grad_(False)
        self.student.model.eval()  # no dropout: only the weights move
        self.scheme, self.rank = scheme_of(config), config.qad.lora_rank
        self.data = _Windows(art, config.qad.data)
        made = attach(self.student.model, self.scheme, lora_rank=self.rank)
        self.layers = made["layers"]
        self.student.model.requires_grad_(not self.rank)
        for p in made["lora"]:
            p.requires_grad_(True)
        self.params = [p for p in self.student.model.parameters() if p.requires_grad]
        self.lr = config.qad.lr or DEFAULT_LR["lora" if self.rank else "weights"]
        self.batch_size = config.qad.batch_size
        self.say: Progress = silent
        settings = [config.qad.steps, self.data.source, self.lr, self.batch_size, self.rank, self.scheme.__dict__]
        self.key = hashlib.sha256(json.dumps([str(source), art.digest, settings], sort_keys=True,
                                             default=str).encode()).hexdigest()

    def score(self) -> dict[str, float]:
        """The fake-quantized student on the held-out windows: mean KL to the teacher per token, its top-1
        agreement with the teacher, and its perplexity (every position but the first)."""
        import torch
        import torch.nn.functional as F

        kl = agree = nll = 0.0
        tokens = 0
        with torch.no_grad():
            for i in range(0, len(self.data.held), self.batch_size):
                x = torch.from_numpy(self.data.held[i:i + self.batch_size])
                s = self.student.model(input_ids=x, use_cache=False).logits.float()
                t = self.teacher.model(input_ids=x, use_cache=False).logits.float()
                n = x.numel()
                kl += float(_kl(s, t)) * n
                agree += float((s.argmax(-1) == t.argmax(-1)).sum())
                nll += float(F.cross_entropy(s[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
                tokens += n
        pairs = tokens - len(self.data.held)
        return {"kl_mean": round(kl / tokens, 6), "top1_agreement": round(agree / tokens, 6),
                "perplexity": round(math.exp(nll / pairs), 5)}

    def begin(self) -> None:
        self.state["best"] = self.state["before"] = self.score()
        self.state["teacher_perplexity"] = self._teacher_perplexity()
        self.state["history"].append({"step": 0, **self.state["before"]})
        log.info("QAT: fake-quantized before training: %s on %d held-out windows", self.state["before"],
                 len(self.data.held))

    def loss_at(self, step: int):
        import torch

        x = torch.from_numpy(self.data.at_step(step, self.batch_size))
        with torch.no_grad():
            t = self.teacher.model(input_ids=x, use_cache=False).logits
        return _kl(self.student.model(input_ids=x, use_cache=False).logits, t)

    def better(self, score: dict[str, float], best: dict[str, float] | None) -> bool:
        return best is None or score["kl_mean"] < best["kl_mean"]

    def _teacher_perplexity(self) -> float:
        import torch
        import torch.nn.functional as F

        nll = 0.0
        with torch.no_grad():
            for i in range(0, len(self.data.held), self.batch_size):
                x = torch.from_numpy(self.data.held[i:i + self.batch_size])
                t = self.teacher.model(input_ids=x, use_cache=False).logits.float()
                nll += float(F.cross_entropy(t[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
        return round(math.exp(nll / (self.data.held.size - len(self.data.held))), 5)

    def record(self) -> dict[str, Any]:
        s = self.state
        return {
            "steps": self.config.qad.steps, "source": str(self.source), "data": self.data.source,
            "train_windows": len(self.data.train), "held_out_windows": len(self.data.held),
            "window": int(self.data.train.shape[1]), "learning_rate": self.lr, "batch_size": self.batch_size,
            "trained": f"LoRA adapters of rank {self.rank} on every linear layer, merged" if self.rank else
            "every weight", "scheme": dict(self.scheme.__dict__), "layers_fake_quantized": self.layers,
            "teacher_perplexity": s.get("teacher_perplexity"),
            "before": s["before"], "best": s["best"], "best_step": s["best_step"], "history": s["history"],
            "train_seconds": round(s["seconds"], 1), "loss": "KL(teacher || student) of the next-token distributions",
            "measure": "the fake-quantized PyTorch model against its FP32 self on the held-out windows",
        }


def quantization_aware_int4(art: Artifact, config: QuantizeConfig, out: Path, source: Path,
                            progress: Progress | None = None) -> tuple[Artifact, dict[str, Any]]:
    """Train ``source`` (the checkpoint ``art`` was exported from) for ``config.qad.steps`` steps fake-quantized at
    the INT4 artifact's grid (see the module doc); return the FP32 ONNX artifact of the chosen weights (``art``
    itself when no step came closer to the teacher than the untrained model) and the record of the run."""
    from compress.stages.quantize.lm.fake_quant import detach
    from compress.stages.quantize.qad import export_trained, work_dir

    say = sink(progress)
    say({"phase": "qad-load", "label": "quantization-aware INT4: loading the model and text"})
    run = _Run(art, config, source, work_dir(out))
    run.say = say
    log.info("QAT: %d steps on %d windows of %d tokens from %s (batch %d, lr %g, %s)", config.qad.steps,
             len(run.data.train), run.data.train.shape[1], run.data.source, run.batch_size, run.lr,
             f"LoRA rank {run.rank}" if run.rank else "all weights")
    train_run(run)
    record = run.record()
    if not run.state["best_step"]:
        record["kept"] = "the original weights: no step came closer to the teacher than the untrained model"
        return art, record
    run.student.model.load_state_dict(run.best_weights)
    detach(run.student.model)
    say({"phase": "qad-export", "label": f"exporting the weights of step {run.state['best_step']}"})
    trained = export_trained(art, run, run.work)
    record["kept"] = f"the weights of step {run.state['best_step']}"
    return trained, record


def quantize_lm_qat(art: Artifact, out: Path, config: QuantizeConfig, *, source: Path,
                    quantizer: Callable[..., Artifact], force: bool = False,
                    progress: Progress | None = None) -> Artifact:
    """Quantization-aware INT4 of the FP32 ONNX causal-LM artifact ``art`` into a new artifact at ``out``: train
    (:func:`quantization_aware_int4`), then the format's generator quantizer ``quantizer`` (its ``FORMATS`` entry:
    :func:`compress.stages.quantize.lm.onnx.quantize_lm_onnx`) on the trained weights, the run's record in the step's
    ``qat`` metrics. ``source``: what :func:`check_request` returned."""
    from compress.stages.quantize.qad import finish

    trained, record = quantization_aware_int4(art, config, Path(out), source, progress)
    result = quantizer(art, out, config, force=force, trained=trained, qat=record)
    finish(Path(out))
    return result
