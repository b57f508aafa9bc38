"""``quantize``: an FP32 ONNX, OpenVINO or LiteRT artifact to INT8 (ONNX and OpenVINO: or INT4).

The family in the shape NNCF gives its backends: the verb here checks what every backend shares (the input is
something a backend declares it takes, the output is new) and dispatches on the artifact's format to one
module per backend, each declaring the settings it reads (``_APPLIES``; any other given is refused here, the same way
for every backend, by :func:`.config.refuse_ignored`): ONNX Runtime in :mod:`.onnxruntime` (graph inspection and the request checks in
:mod:`.graph`), OpenVINO in :mod:`.openvino` (the NNCF calls in :mod:`.nncf`), LiteRT in :mod:`.litert`
(ai-edge-quantizer). Calibration data for every
backend comes from :mod:`.calibration`. The settings and each backend's declaration live in the leaf
:mod:`.config` and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from compress.artifact import Artifact, load_artifact
from compress.errors import ConfigError
from compress.progress import Progress
from compress.stages.quantize.config import (
    QUANTIZE_LITERT,
    QUANTIZE_OPENVINO,
    QUANTIZE_SPECS,
    QuantizeConfig,
    backend_of,
    backends,
    refuse_ignored,
)
from compress.stages.spec import spec_for
from compress.storage import check_output
from compress.tasks import by_kind, kind_of


def quantize(
    artifact: Artifact | Path | str,
    out: Path | str,
    config: QuantizeConfig | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Artifact:
    """Quantize an ONNX artifact to INT8 or INT4 (OpenVINO artifacts: NNCF) into a new artifact at ``out``.

    With ``max_drop``/``min_retention`` and ``data`` the most sensitive layers stay in float until the
    eval metric meets the budget; if no mix within ``max_fp32_fraction`` does, the best candidate is
    written to ``OUT.best-candidate/`` (with ``accuracy_report.json``) and
    :class:`~compress.errors.AccuracyBudgetError` is raised. ``progress`` hears quantization-aware distillation's
    steps (``qat_steps``; a causal LM's ONNX artifact: quantization-aware INT4, :mod:`.lm.qat`).
    """
    config = config or QuantizeConfig()
    out = check_output(out, force)
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    quantize_kind = by_kind(_KINDS, art, "quantize")  # a kind it does not take: refused before anything else
    backend = backend_of(str(art.format), str(art.task))
    if backend in backends():  # what this backend does not read is refused, the same way for every backend
        refuse_ignored(config, backend)
    if config.accuracy_aware and (refused := _NOT_ACCURACY_AWARE.get(kind_of(art))):
        raise ConfigError(f"{art.path}: accuracy-aware quantization (--max-drop) does not run a "
                          f"{kind_of(art)} model yet ({refused[0]})", hint=refused[1])
    if config.accuracy_aware and not config.accuracy.data:
        raise ConfigError("accuracy-aware quantization needs labelled eval data", hint="pass --data EVAL")
    if config.accuracy.metric and not config.accuracy_aware:
        raise ConfigError("--metric applies to accuracy-aware quantization (it would be ignored)",
                          hint="add --max-drop or --min-retention with --data, or drop --metric")
    if config.accuracy.rank_by and not config.accuracy_aware:
        raise ConfigError("--rank-by orders accuracy-aware quantization's float fallbacks (it would be ignored)",
                          hint="add --max-drop or --min-retention with --data, or drop --rank-by")
    config.user_metric()  # a metric that does not import fails before anything is quantized
    return quantize_kind(art, out, config, force=force, progress=progress)


def _quantize_generator(art: Artifact, out: Path, config: QuantizeConfig, *, force: bool,
                        progress: Progress | None) -> Artifact:
    """A causal LM: its format's weight-only generator quantizer (ONNX: quantization-aware INT4 trained first)."""
    from compress.formats import FORMATS, import_string

    kind = kind_of(art)
    ref = FORMATS[str(art.format)].quantizer_for(kind)
    if ref is None:
        raise ConfigError(f"{art.path}: quantize takes no {FORMATS[str(art.format)].label} causal language model",
                          hint=f"export the checkpoint with --format "
                          f"{' or '.join(n for n, f in FORMATS.items() if f.quantizer_for(kind))} and quantize that")
    if Path(out).resolve() == art.path.resolve():
        raise ConfigError("--out is the input artifact", hint="choose a new directory")
    from compress.stages.quantize.lm.qat import check_request as qat_request
    from compress.stages.quantize.lm.qat import quantize_lm_qat

    if (qat_source := qat_request(art, config)) is not None:  # quantization-aware INT4 (ONNX): trained first
        return quantize_lm_qat(art, out, config, source=qat_source, quantizer=import_string(ref), force=force,
                               progress=progress)
    return import_string(ref)(art, out, config, force=force, progress=progress)


def _quantize_forward(art: Artifact, out: Path, config: QuantizeConfig, *, force: bool,
                      progress: Progress | None) -> Artifact:
    """One forward pass (a stream's calls too): the backend the artifact's format takes (the spec it matches)."""
    spec = spec_for(QUANTIZE_SPECS, art)
    if Path(out).resolve() == art.path.resolve():
        raise ConfigError("--out is the input artifact", hint="choose a new directory")
    if spec is QUANTIZE_LITERT:
        from compress.stages.quantize.litert import quantize_litert

        return quantize_litert(art, out, config, force=force)
    if spec is QUANTIZE_OPENVINO:
        from compress.stages.quantize.openvino import quantize_openvino

        return quantize_openvino(art, out, config, force=force)
    from compress.stages.quantize.onnxruntime import quantize_onnxruntime
    from compress.stages.quantize.qad import check_request

    qad_source = check_request(art, config)  # the PyTorch source QAD trains, checked before anything runs
    return quantize_onnxruntime(art, out, config, force=force, progress=progress, qad_source=qad_source)


#: how quantize takes a model of each kind (:func:`compress.tasks.by_kind`): a stream's calls are one forward pass each
_KINDS = {"forward": _quantize_forward, "generation": _quantize_generator, "stream": _quantize_forward}
#: the kinds accuracy-aware quantization does not run yet -> (why, the hint)
_NOT_ACCURACY_AWARE = {"stream": ("its state is carried from call to call; the search scores single calls",
                                  "drop --max-drop: static INT8 checks the stream's decisions against the input "
                                  "(parity_vs_input), then validate -p PROFILE --data FILE.wav measures it")}
