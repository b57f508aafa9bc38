"""Quantization-aware distillation (``quantize --qat-steps N``): when post-training INT8 loses accuracy, train the
PyTorch model the FP32 ONNX artifact was exported from, fake-quantized at the placement and scheme ONNX Runtime's
quantizer will give it (:mod:`.fake_quant`), to match its own FP32 self (the teacher) on the ``--qat-data`` inputs
(KL divergence of the class scores, plus cross-entropy where the data has labels; a normalised squared error for
other outputs). The weights that agree best with the teacher on held-out inputs are exported again, with the
artifact's own export settings, and post-training quantization then runs on them as it would have on the original:
its ranges re-estimated, its placement the same. Retention and parity stay measured against the original FP32.

Why not torchao's QAT or PT2E: their placement is not ONNX Runtime's (PT2E's X86 and XNNPACK quantizers annotate
conv-BN-ReLU patterns and shared observers differently), and a prototype with ``prepare_qat_pt2e`` then ONNX Runtime
PTQ kept *less* accuracy than PTQ alone on MobileNetV2 (0.975 vs 0.990); torchao's linear-only QAT does not touch
convolutions. PyTorch's own ``fake_quantize_per_{tensor,channel}_affine`` give the exact grid, with
straight-through gradients, at the exact layers.

Interrupted runs resume: the training state sits in ``OUT.qad/`` beside the output until the artifact is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import MANIFEST, Artifact, Manifest, load_artifact, write_manifest
from compress.errors import ConfigError
from compress.progress import Progress, silent, sink
from compress.stages.quantize.config import CalibrationMethod, QuantizeConfig, QuantMode
from compress.stages.quantize.fake_quant import FakeQuant, Ranges
from compress.stages.quantize.train_state import train_run

log = logging.getLogger("compress.stages.quantize")

STATE = "qad_state.pt"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt2", ".pth", ".pt", ".ckpt", ".h5", ".msgpack")
DEFAULT_LR = {"image": 1e-5, "text": 2e-5, "arrays": 1e-5}


def work_dir(out: Path) -> Path:
    """Where an interrupted QAD run keeps its state: beside the output, until the artifact is written."""
    return Path(out).parent / f"{Path(out).name}.qad"


def check_request(art: Artifact, config: QuantizeConfig) -> Path | None:
    """Refuse, before anything is trained or written, what QAD cannot do (one line each); the PyTorch source to train
    (:func:`trainable_source`, checked once, here), or None without ``qat_steps``."""
    given = sorted(config.flat_key(p) for p in config.given()
                   if p in ("qad.data", "qad.source", "qad.lr", "qad.batch_size") and getattr(config.qad, p[4:]) is not None)
    if not config.qad.steps:
        if given:
            raise ConfigError(f"{', '.join('--' + n.replace('_', '-') for n in given)} apply to quantization-aware "
                              "distillation (it would be ignored)", hint="add --qat-steps N, or drop it")
        return None
    if config.precision != "int8":
        raise ConfigError("--qat-steps trains for INT8 (weights and activations); INT4 is weight-only",
                          hint="drop --qat-steps, or use --precision int8")
    if not (config.qad.data or config.calibration.data):
        raise ConfigError("quantization-aware distillation trains on data, and none was given",
                          hint="pass --qat-data DATA (inputs like the model's; labels are used when present)")
    return trainable_source(art, config)


def adopted_file(art: Artifact) -> Path | None:
    """The model file (ONNX, IR) ``art`` was adopted from as it is, or None when its export read a PyTorch model."""
    last = art.manifest.steps[-1] if art.manifest.steps else None
    recorded = Path((last.metrics.get("exported_from") if last else None) or art.manifest.source.path)
    return recorded if recorded.suffix.lower() in (".onnx", ".xml") else None


def trainable_source(art: Artifact, config: QuantizeConfig) -> Path:
    """The PyTorch model ``art`` was exported from: ``--qat-source`` or the lineage's source, checked by content; for
    a model file adopted as it is, ``--qat-source`` (the program or checkpoint the file was exported from) checked by
    its outputs, which must be the file's."""
    from compress.teachers.load import source_digest
    from compress.teachers.model_files import is_model_file

    last = art.manifest.steps[-1] if art.manifest.steps else None
    if last is None or last.stage != "export":
        raise ConfigError(f"{art.path}: quantization-aware distillation trains the PyTorch model an FP32 artifact "
                          f"was exported from, and this one's last step is {last.stage if last else 'none'}",
                          hint="quantize the FP32 ONNX artifact `edgecompress export` wrote")
    adopted = adopted_file(art)
    path = Path(config.qad.source or last.metrics.get("exported_from") or art.manifest.source.path)
    if (origin := art.manifest.source.origin) and not adopted:  # exported from the checkpoint a .gguf dequantizes to
        return _gguf_source(art, path, origin, given=config.qad.source)
    if adopted and not config.qad.source:
        raise ConfigError(f"{art.path} was adopted from {adopted.name}, a model file with no trainable source: "
                          "quantization-aware distillation needs the PyTorch model",
                          hint="pass --qat-source with the .pt2 program or checkpoint the file was exported from, or "
                          "drop --qat-steps (post-training INT8 still applies)")
    if not path.exists():
        raise ConfigError(f"{art.path}'s PyTorch source {path} is not there any more",
                          hint="pass --qat-source with the checkpoint or student it was exported from")
    if is_model_file(path):
        raise ConfigError(f"--qat-source {path.name} is a model file, not a PyTorch model",
                          hint="pass the .pt2 program or checkpoint it was exported from")
    if adopted:
        _check_same_outputs(art, path, config)
        return path
    if last.input_digest and source_digest(path) != last.input_digest:  # what the export recorded, computed alike
        raise ConfigError(f"{path} is not the model {art.path} was exported from (its content differs)",
                          hint="pass --qat-source with the checkpoint, .pt2 program or distilled/pruned student "
                          "the artifact was exported from")
    return path


def _gguf_source(art: Artifact, path: Path, origin: dict[str, Any], *, given: str | None) -> Path:
    """The checkpoint ``art`` was exported from when a .gguf dequantized to it (``origin``: the lineage's record of the
    file), checked by that file's sha256: ``--qat-source`` (the .gguf, dequantized the same way, or the checkpoint),
    else the cached checkpoint, made again from the recorded file when the cache dropped it (as validate does)."""
    from compress.teachers.gguf_checkpoint import (
        gguf_checkpoint,
        is_gguf,
        recorded_checkpoint,
        sha256_cached,
        source_changed,
    )
    from compress.teachers.lm_config import gguf_origin

    recorded = Path(origin.get("path") or "")
    if given is None:
        found = recorded_checkpoint(path, origin)
        if found is None:
            why = source_changed(origin) or f"{recorded} is not on this machine"
            raise ConfigError(f"{art.path} was exported from the checkpoint {recorded.name} dequantizes to, which the "
                              f"cache has dropped and which cannot be made again: {why}",
                              hint=f"pass --qat-source with the .gguf it was exported from ({recorded.name})")
        return found
    if not path.exists():
        raise ConfigError(f"--qat-source {path}: no such file or folder",
                          hint=f"pass the .gguf {art.path} was exported from ({recorded.name})")
    if is_gguf(path) and sha256_cached(path) != origin.get("sha256"):  # before the work of dequantizing it
        raise ConfigError(f"--qat-source {path.name} is not the .gguf {art.path} was exported from (its sha256 is not "
                          "the lineage's)", hint=f"pass {recorded} or a copy of it")
    found = gguf_checkpoint(path) if is_gguf(path) else path
    if ((gguf_origin(found) if found.is_dir() else None) or {}).get("sha256") != origin.get("sha256"):
        raise ConfigError(f"--qat-source {path} is not the model {art.path} was exported from: it was exported from "
                          f"the checkpoint {recorded.name} dequantizes to", hint=f"pass --qat-source {recorded}")
    return found


def _check_same_outputs(art: Artifact, path: Path, config: QuantizeConfig) -> None:
    """A PyTorch source given for an adopted file must compute what the file does (on 8 training inputs)."""
    from compress.data.inputs import sample_inputs
    from compress.runtimes.ort_backend import OrtBackend
    from compress.runtimes.torch_backend import TorchBackend
    from compress.stages.common import measure_parity
    from compress.teachers.load import load_teacher

    items = sample_inputs(config.qad.data or config.calibration.data, 8, art.manifest.preprocess)
    parity = measure_parity(OrtBackend(art), TorchBackend.from_teacher(load_teacher(path)), items,
                            art.manifest.labels is not None)
    if not parity.cosine_min >= 0.9999:
        raise ConfigError(f"--qat-source {path} does not compute what {art.path}'s file does (output cosine "
                          f"{parity.cosine_min:.4f} on 8 inputs)", hint="pass the program or checkpoint the file was "
                          "exported from, with the same input names")


def _eval(model) -> None:
    """Evaluation mode (BatchNorm statistics, dropout off); a ``torch.export`` program's module is in it already."""
    try:
        model.eval()
    except NotImplementedError:  # torch.export's module refuses eval()/train(): it was exported in eval mode
        pass


def _tensors(feeds: dict[str, Any], names: list[str]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items() if k in names}


class _Data:
    """The training inputs encoded a batch at a time, their labels, and a held-out tenth (at most 512) for choosing
    the weights."""

    def __init__(self, art: Artifact, config: QuantizeConfig, teacher) -> None:
        from compress.data.inputs import load_inputs
        from compress.tasks import TASKS

        path = config.qad.data or config.calibration.data
        task = TASKS[art.manifest.task]  # a classifier with a head of its own: its classes are trained on
        labels = art.manifest.labels if task.classifies and task.head is not None else None
        ds = load_inputs(path, art.manifest.preprocess, label2id={n: i for i, n in enumerate(labels)} if labels else None,
                         texts_only=labels is None)
        self.items, self.labels = list(ds.inputs), getattr(ds, "labels", None)
        self.pairs = getattr(ds, "pairs", None)  # second segments of a sentence-pair task
        if len(self.items) < 2:
            raise ConfigError(f"{path}: {len(self.items)} input(s); quantization-aware distillation needs more",
                              hint="pass --qat-data with at least a few dozen inputs like the model's")
        n = len(self.items)
        order = np.random.default_rng(0).permutation(n)
        hold = min(512, max(8, n // 10)) if n >= 40 else 0
        self.held = sorted(order[:hold].tolist()) or list(range(n))  # tiny sets: chosen on what it trained on
        self.train = sorted(order[hold:].tolist())
        self.encoder, self.names = teacher.encoder(), teacher.input_names
        self.source = str(path)

    def batch(self, idx: list[int]):
        import torch

        pairs = [self.pairs[i] for i in idx] if self.pairs is not None else None
        feeds = _tensors(self.encoder.encode([self.items[i] for i in idx], pairs), self.names)
        labels = None
        if self.labels is not None and all(self.labels[i] is not None for i in idx):
            labels = torch.tensor([int(self.labels[i]) for i in idx])
        return feeds, labels

    def at_step(self, step: int, size: int) -> list[int]:
        """The ``step``-th batch of an endless stream of seeded per-epoch shuffles: the same on a resumed run."""
        n = len(self.train)
        out = []
        for pos in range(step * size, (step + 1) * size):
            epoch, i = divmod(pos, n)
            out.append(self.train[int(np.random.default_rng([1, epoch]).permutation(n)[i])])
        return out


def _loss(s, t, labels, classes: bool):
    import torch.nn.functional as F

    if classes and s.dim() == 2:  # class scores; a map's or a sequence's outputs are matched value by value
        loss = F.kl_div(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1), log_target=True,
                        reduction="batchmean")
        return loss + F.cross_entropy(s.float(), labels) if labels is not None else loss
    return F.mse_loss(s.float(), t.float()) / (t.float().var() + 1e-8)


class _Run:
    """One QAD run: the teacher, the student being trained, the fake-quantizer, and the state a resume needs."""

    STATE, LABEL, WHAT = STATE, "QAD", "quantization-aware distillation"

    def __init__(self, art: Artifact, config: QuantizeConfig, source: Path, work: Path, reduce_range: bool) -> None:
        from compress.teachers.load import load_teacher

        self.art, self.config, self.source, self.work = art, config, source, work
        self.teacher, self.student = load_teacher(source), load_teacher(source)
        self.write_kind = _write_kind(self.student, source)  # refused now, not after training
        for p in self.teacher.model.parameters():
            p.requires_grad_(False)
        _eval(self.teacher.model)
        _eval(self.student.model)  # BatchNorm statistics and dropout frozen: only the weights move
        self.params = [p for p in self.student.model.parameters() if p.is_floating_point()]
        for p in self.params:
            p.requires_grad_(True)
        self.data = _Data(art, config, self.teacher)
        self.classes = art.manifest.labels is not None and getattr(art.manifest.postprocess, "class_axis", None) is None
        static = config.mode is QuantMode.static
        self.fq = FakeQuant(per_channel=config.int8.per_channel, reduce_range=reduce_range,
                            activations="static" if static else "dynamic",
                            ranges=Ranges(mean=config.calibration.method is CalibrationMethod.mean_minmax))
        self.batch_size = config.qad.batch_size
        kind = getattr(art.manifest.preprocess, "kind", "text")
        self.lr = config.qad.lr or DEFAULT_LR.get(kind, 1e-5)
        self.say: Progress = silent
        dump = config.model_dump(mode="json")  # keyed by flat key, as version 1 was: an interrupted run resumes
        keyed = {k: functools.reduce(lambda node, part: node[part], config.MOVED.get(k, k).split("."), dump)
                 for k in ("qat_steps", "qat_data", "qat_lr", "qat_batch_size", "calibration", "calibration_method",
                           "per_channel", "mode", "calibration_samples")}
        self.key = hashlib.sha256(json.dumps(
            [str(source), art.digest, keyed, reduce_range], sort_keys=True).encode()).hexdigest()

    # --- ranges, scores, checkpoints ------------------------------------------------------------------
    def calibrate(self) -> None:
        """Static mode: each quantized input's range, observed one sample at a time (as ONNX Runtime's calibrator
        reads them) on up to ``calibration_samples`` training inputs."""
        import torch

        if self.fq.activations != "static":
            return
        fq, mode = self.fq, self.fq.activations
        fq.activations = "observe"
        try:
            with torch.no_grad():
                for i in self.data.train[: self.config.calibration.samples]:
                    fq.forward(self.student.call, self.student.model, self.data.batch([i])[0])
        finally:
            fq.activations = mode

    def score(self) -> dict[str, float]:
        """Agreement of the fake-quantized student with the teacher on the held-out inputs."""
        import torch

        agree, cos, n = 0.0, 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.data.held), self.batch_size):
                x, _ = self.data.batch(self.data.held[i:i + self.batch_size])
                s = self.fq.forward(self.student.call, self.student.model, x).float()
                t = self.teacher.call(self.teacher.model, x).float()
                if self.classes and s.dim() == 2:
                    agree += float((s.argmax(-1) == t.argmax(-1)).sum())
                cos += float(torch.nn.functional.cosine_similarity(s.flatten(1), t.flatten(1), dim=1).sum())
                n += s.shape[0]
        out = {"cosine": round(cos / n, 6)}
        if self.classes:
            out["agreement"] = round(agree / n, 6)
        return out

    def better(self, score: dict[str, float], best: dict[str, float] | None) -> bool:
        if best is None:
            return True
        return (score.get("agreement", 0.0), score["cosine"]) > (best.get("agreement", 0.0), best["cosine"])

    def extra_state(self) -> dict[str, Any]:
        return {"ranges": json.dumps({str(k): v for k, v in self.fq.ranges.seen.items()})}

    def restore_extra(self, saved: dict[str, Any]) -> None:
        self.fq.ranges.seen = {(int(k) if k.isdigit() else k): [tuple(r) for r in v]
                               for k, v in json.loads(saved["ranges"]).items()}

    # --- training --------------------------------------------------------------------------------------
    def begin(self) -> None:
        self.calibrate()
        self.state["best"] = self.state["before"] = self.score()
        self.state["history"].append({"step": 0, **self.state["before"]})
        log.info("QAD: fake-quantized before training: %s on %d held-out inputs", self.state["before"],
                 len(self.data.held))

    def loss_at(self, step: int):
        import torch

        x, labels = self.data.batch(self.data.at_step(step, self.batch_size))
        s = self.fq.forward(self.student.call, self.student.model, x)
        with torch.no_grad():
            t = self.teacher.call(self.teacher.model, x)
        return _loss(s, t, labels, self.classes)

    # --- the result --------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        s = self.state
        if not self.fq.quantized:  # a run resumed at its last step made no pass to count the layers in
            import torch

            with torch.no_grad():
                self.fq.forward(self.student.call, self.student.model, self.data.batch(self.data.held[:1])[0])
        return {
            "steps": self.config.qad.steps, "source": str(self.source), "data": self.data.source,
            "train_inputs": len(self.data.train), "held_out_inputs": len(self.data.held),
            "learning_rate": self.lr, "batch_size": self.batch_size,
            "activations": self.fq.activations, "per_channel": self.fq.per_channel,
            "layers_fake_quantized": self.fq.quantized,
            "before": s["before"], "best": s["best"], "best_step": s["best_step"], "history": s["history"],
            "train_seconds": round(s["seconds"], 1),
            "measure": "the fake-quantized PyTorch model against its FP32 self on the held-out inputs",
        }


def quantization_aware_distillation(art: Artifact, config: QuantizeConfig, out: Path, reduce_range: bool,
                                    progress: Progress | None = None, *,
                                    source: Path | None = None) -> tuple[Artifact, dict[str, Any]]:
    """Train ``art``'s PyTorch source (``source`` when :func:`check_request` found it already) for ``config.qad.steps`` steps fake-quantized (see the module doc) and return
    the FP32 ONNX artifact of the chosen weights (``art`` itself when no step beat the untrained model) and the
    record of the run."""
    from compress._optional import require

    require("torch", "quantization-aware distillation")
    source = source or trainable_source(art, config)
    work = work_dir(out)
    say = sink(progress)
    say({"phase": "qad-load", "label": "quantization-aware distillation: loading the model and data"})
    run = _Run(art, config, source, work, reduce_range)
    run.say = say
    log.info("QAD: %d steps on %d inputs from %s (batch %d, lr %g, %s activations)", config.qad.steps,
             len(run.data.train), run.data.source, run.batch_size, run.lr, run.fq.activations)
    train_run(run)
    record = run.record()
    if not run.state["best_step"]:
        record["kept"] = "the original weights: no step agreed better with the teacher than the untrained model"
        return art, record
    run.student.model.load_state_dict(run.best_weights)
    say({"phase": "qad-export", "label": f"exporting the weights of step {run.state['best_step']}"})
    trained = export_trained(art, run, work)
    record["kept"] = f"the weights of step {run.state['best_step']}"
    return trained, record


def finish(out: Path) -> None:
    """The artifact is written: the QAD run's state is no longer needed."""
    shutil.rmtree(work_dir(out), ignore_errors=True)


def export_trained(art: Artifact, run, work: Path) -> Artifact:
    """Write the trained model the way its source was written, and export it with the artifact's own settings.
    ``run``: a :class:`_Run`, or anything with its ``student`` (a loaded teacher), ``source`` and ``write_kind``
    (quantization-aware INT4 of a causal LM, :mod:`.lm.qat`)."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    dest = work / "model"
    if dest.exists():
        shutil.rmtree(dest)
    _save_like(run.student, run.source, dest, run.write_kind)
    onnx_dir = work / "onnx"
    adopted = adopted_file(art) is not None
    # not a file's adoption settings; a version-1 record's flat keys nested
    settings = {"format": "onnx"} if adopted else dict(art.manifest.steps[-1].config)
    settings = {k: v for k, v in settings.items() if k in ExportConfig.model_fields}  # not what it recorded besides
    export(dest if run.source.is_dir() else dest / run.source.name, onnx_dir,
           ExportConfig.model_validate(ExportConfig.nest(settings)), force=True)
    trained = load_artifact(onnx_dir)
    if adopted:  # our exporter names the graph's inputs and outputs its own way: the file's names are the contract
        _rename_io(trained, art)
        trained = load_artifact(onnx_dir)
    return trained


def _rename_io(trained: Artifact, art: Artifact) -> None:
    """Give ``trained``'s graph (and manifest) ``art``'s input and output names, position by position."""
    import onnx

    model = onnx.load(str(trained.model_path))
    g = model.graph
    init = {i.name for i in g.initializer}
    pairs = [(a.name, b.name) for a, b in zip([i for i in g.input if i.name not in init], art.manifest.inputs,
                                               strict=True)]
    pairs += [(a.name, b.name) for a, b in zip(g.output, art.manifest.outputs, strict=True)]
    rename = {old: new for old, new in pairs if old != new}
    if not rename:
        return
    for value in [*g.input, *g.output, *g.value_info]:
        value.name = rename.get(value.name, value.name)
    for node in g.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    onnx.save(model, str(trained.model_path))
    m = trained.manifest
    m.inputs, m.outputs = list(art.manifest.inputs), list(art.manifest.outputs)
    write_manifest(trained.path, m)


def _write_kind(student, source: Path) -> str:
    """How a trained ``student`` is written back (:func:`_save_like`): ``program``, ``timm`` or ``hf``; a model that
    cannot be (a TorchScript archive, a pickled module) is refused."""
    kind = getattr(student.info, "kind", "hf")
    if kind in ("program", "timm"):
        return kind
    if hasattr(student.model, "save_pretrained"):
        return "hf"
    raise ConfigError(f"{source}: quantization-aware distillation cannot write this kind of model back",
                      hint="use a Hugging Face or timm checkpoint, or a .pt2 program")


def _save_like(student, source: Path, dest: Path, kind: str) -> None:
    """``student`` (trained) written as its source is (``kind``, :func:`_write_kind`): a Hugging Face checkpoint with
    ``save_pretrained``, a timm checkpoint as safetensors, a ``.pt2`` program with ``torch.export``; every other file
    copied."""
    root = source if source.is_dir() else source.parent
    if source.is_dir():
        names = [p.name for p in root.iterdir()]
    else:  # a program file: its model.yaml and, for text, its tokenizer beside it
        names = [source.with_suffix(".yaml").name]
        if tokenizer := getattr(student.info.preprocess, "tokenizer_file", None):
            names.append(tokenizer)
    dest.mkdir(parents=True)
    for name in names:
        p = root / name
        if p.suffix.lower() in _WEIGHT_SUFFIXES or not p.exists():
            continue
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, dest / name)
    if kind == "program":
        import torch

        program = (root / student.info.weights[0]) if source.is_dir() else source
        example = student.example_inputs()
        with torch.no_grad():  # the batch stays as dynamic as the source program made it
            exported = torch.export.export(student.model, tuple(example[n] for n in student.input_names),
                                           dynamic_shapes=tuple({0: torch.export.Dim.AUTO} for _ in student.input_names))
        torch.export.save(exported, str(dest / program.name))
    elif kind == "timm":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in student.model.state_dict().items()}, str(dest / student.info.weights[0]))
    else:
        student.model.save_pretrained(str(dest), safe_serialization=True)
    if (dest / MANIFEST).is_file():  # a student artifact (distilled, pruned): its lineage kept, its files hashed anew
        write_manifest(dest, Manifest.model_validate_json((dest / MANIFEST).read_text(encoding="utf-8")))
