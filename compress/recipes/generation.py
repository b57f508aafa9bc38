"""Recipes of text generators: what a causal LM's chain takes (finetune, distill, prune, export, quantize, validate,
package, gate), checked at plan time.

A recipe whose teacher is a causal language model (a Hugging Face ``…ForCausalLM`` folder, an artifact of task
text-generation, a ``.gguf`` file, or ``teacher: {finetune: {base: ...}}`` from such a base) may first make it smaller in
PyTorch (``distill``: a student of the teacher's layers; ``prune``: heads, FFN neurons, layers, the vocabulary; each
verb refuses at run time, in one line, what a causal LM does not take), then runs the generator routes of
docs/guides/lm.md: ``export`` with a KV cache (ONNX
Runtime GenAI's builder, a stateful OpenVINO IR, GGUF through llama.cpp's converter), ``quantize`` weight-only (the
format's generator quantizer: ``int4: {algorithm, block_size, embeddings_bits, lm_head_bits}``, ``gguf: {type}``,
``accuracy: {max_perplexity_increase, data}``), ``validate`` with ``generation: {prompts, prompt_tokens, new_tokens,
window}`` against the generator budgets, ``package`` of its ONNX artifact (a generating handler). An option that the
generator's verb would not read, a verb or a format that takes no generator, and a generator's option in a recipe of
another model, are each refused here, in one line naming the recipe's field and the command's flag, before any job
runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.tasks import KIND_INFO, Kind, is_generator

#: export's settings a generator exporter reads (flat keys); GGUF's converter also reads these
_EXPORT_READS = {"format", "task", "atol", "sample_data"}
_GGUF_EXPORT_READS = {"llama_cpp", "precision"}
#: validate's settings a generator's validation reads (flat keys: the command's flags)
_VALIDATE_READS = {"profile", "data", "teacher", "limit", "baseline", "cold_start", "estimate", "allow_pickle",
                   "trust_remote_code", "cache", "prompts", "prompt_tokens", "new_tokens", "window"}
#: settings only a generator reads (flat keys), per verb: refused in a recipe of another model
_GENERATOR_ONLY = {
    "quantize": {"int4_algorithm", "embeddings_bits", "lm_head_bits", "gguf_type", "max_perplexity_increase"},
    "validate": {"prompts", "prompt_tokens", "new_tokens", "window"},
}
#: the INT4 algorithms that read calibration text (the recipe's data.calibration feeds them where the step names none)
DATA_AWARE = ("gptq", "awq", "scale_estimation")
GENERATOR = "causal LM (text-generation)"


def _export_reads(fmt: str) -> set[str]:
    return _EXPORT_READS | (_GGUF_EXPORT_READS if fmt == "gguf" else {"max_context"} if fmt == "onnx" else set())


def _quantize_reads(fmt: str) -> set[str] | None:
    from compress.formats import FORMATS

    ref = FORMATS[fmt].quantizer_for("generation")
    if ref is None:
        return None
    import importlib

    # the quantizer's own list of the settings it reads (it refuses any other at run time, after the export);
    # a quantizer without one is left to refuse at run time
    applies = getattr(importlib.import_module(ref.partition(":")[0]), "_APPLIES", None)
    return None if applies is None else set(applies)


#: what a generator's verb reads of its settings (flat keys) for an artifact of a format, per verb (None: every one)
_READS = {"export": _export_reads, "quantize": _quantize_reads, "validate": lambda fmt: set(_VALIDATE_READS)}


def reads(verb: str, fmt: str) -> set[str] | None:
    """The settings (flat keys) a generator's ``verb`` reads for an artifact of format ``fmt``; None: every one."""
    return _READS[verb](fmt) if verb in _READS else None


#: the verbs of a generator's chain that make a smaller PyTorch model (their options are the verbs' own to check)
SHRINKING = ("distill", "prune")


def recipe_kind(teacher: str | None, tuned_base: str | None) -> Kind:
    """The kind of a recipe's model (:func:`compress.teachers.kinds.source_kind`): its ``teacher``'s (resolved; None
    where the recipe fine-tunes it, or it cannot be resolved), else that of ``tuned_base``, the base the recipe
    fine-tunes it from (:func:`compress.recipes.schema.finetune_base`); one forward pass where neither is known."""
    from compress.teachers.kinds import source_kind

    model = teacher if teacher is not None else tuned_base
    return "forward" if model is None else source_kind(model)


def problem(recipe, teacher: str | None, tuned_base: str | None) -> tuple[tuple, str, str] | None:
    """The first thing in ``recipe`` that does not fit its teacher's kind (a generator or not), as ``(field location,
    problem, hint)`` for the schema's one-line error; None when all fits. ``teacher``: the resolved teacher path
    (None: the recipe fine-tunes its teacher from ``tuned_base``, a generator where that is, :func:`recipe_kind`)."""
    from compress.recipes.verbs import VERBS

    generator = KIND_INFO[recipe_kind(teacher, tuned_base)].generates
    for name, step in recipe.steps.items():
        settings = VERBS[step.verb].config_model().model_validate(step.settings)
        at = ("steps", name, step.verb)
        if not generator:
            found = _generator_only(step.verb, settings, at)
            if found:
                return found
            continue
        if step.verb in SHRINKING:
            continue
        if step.verb not in ("export", "quantize"):
            return (("steps", name), f"{step.verb} takes no {GENERATOR}, and the teacher is one",
                    "a generator's chain is distill, prune, export, quantize, validate and gate "
                    "(docs/guides/lm.md)")
        fmt = recipe.format_of(name)
        found = _format(step.verb, fmt, at) or _ignored(step.verb, fmt, settings, at) or \
            _DOORS[step.verb].rules(fmt, settings, at)
        if found:
            return found
    for n, spec in enumerate(recipe.targets("validate")):
        at = ("validate", n) if isinstance(recipe.validate_, list) else ("validate",)
        settings = VERBS["validate"].config_model().model_validate({"profile": spec.profiles[0], **spec.options})
        found = _ignored("validate", "", settings, (*at, "options")) if generator else \
            _generator_only("validate", settings, (*at, "options"))
        if found:
            return found
    for n, spec in enumerate(recipe.targets("package")):
        at = ("package", n) if isinstance(recipe.package, list) else ("package",)
        for i, art in enumerate(spec.artifacts or recipe.deployable()):
            fmt = recipe.format_of(art)
            if generator and fmt != "onnx":  # the bundle's generating handler decodes with ONNX Runtime
                return ((*at, "artifacts", i) if spec.artifacts else at, f"{art!r} is a {fmt} generator; a "
                        "generator's bundle runs its ONNX Runtime artifact", "package an export step with format: "
                        "onnx (or a quantize step from it)")
        if not generator and "max_new_tokens" in spec.options:
            return ((*at, "options", "max_new_tokens"), "--max-new-tokens applies to text generators only; the "
                    "teacher is not a causal LM", "drop it")
    return None


def _format(verb: str, fmt: str, at: tuple) -> tuple[tuple, str, str] | None:
    from compress.formats import FORMATS

    door = _DOORS[verb]
    made = [n for n, f in FORMATS.items() if door.module(f, "generation")]
    if door.module(FORMATS[fmt], "generation") is None:
        return ((*at, *door.at), door.refusal.format(label=FORMATS[fmt].label, what=GENERATOR),
                f"export the teacher with format: {' | '.join(made)}")
    return None


def _ignored(verb: str, fmt: str, settings, at: tuple) -> tuple[tuple, str, str] | None:
    """The first option given that a generator's ``verb`` would not read."""
    wanted = reads(verb, fmt)
    if wanted is None:
        return None
    for path in settings.given():
        if type(settings).flat_key(path) not in wanted:
            where = f" for {fmt}" if fmt else ""
            return ((*at, *path.split(".")), f"{_flag(settings, path)} would be ignored{where}: the teacher is "
                    f"a {GENERATOR}", f"drop it; {verb} of a generator reads {_names(settings, wanted)}")
    if getattr(settings, "task", None) is not None and not is_generator(settings.task):  # export's --task
        return ((*at, "task"), f"task {settings.task}: the teacher is a {GENERATOR}", "drop task:")
    return None


def _quantizer_rules(fmt: str, settings, at: tuple) -> tuple[tuple, str, str] | None:
    """The format's generator quantizer's own checks of a request that need no artifact (its algorithms, NNCF's
    pairings, llama.cpp's type for the precision), run now rather than after the export."""
    from compress.errors import ConfigError

    try:
        if fmt == "onnx":
            from compress.stages.quantize.lm.onnx import ALGORITHMS

            if settings.int4.algorithm not in ALGORITHMS:
                return ((*at, "int4", "algorithm"), f"--int4-algorithm {settings.int4.algorithm}: ONNX Runtime's "
                        f"MatMulNBits quantizer takes {', '.join(ALGORITHMS)}",
                        "awq and scale_estimation are OpenVINO's (NNCF): export with format: openvino")
        elif fmt == "openvino":
            from compress.stages.quantize.lm.openvino import check_request

            check_request(settings)
        elif fmt == "gguf":
            from compress.stages.quantize.lm.gguf import gguf_type

            gguf_type(settings)
    except ConfigError as e:
        return at, e.message, e.hint or "see docs/guides/lm.md"
    return None


@dataclass(frozen=True)
class _Door:
    """How a generator's export or quantize step is checked against its format: the format's module for a generation
    (:meth:`compress.formats.FormatSpec.exporter_for`, ``quantizer_for``), how a format without one is refused and at
    which of the step's fields, and the format's own checks of the request."""

    module: Callable[[Any, str], str | None]
    refusal: str
    at: tuple[str, ...] = ()
    rules: Callable[[str, Any, tuple], tuple[tuple, str, str] | None] = lambda fmt, settings, at: None


#: a generator's export and quantize steps, by verb
_DOORS = {
    "export": _Door(lambda f, kind: f.exporter_for(kind), "{label} takes no {what}", ("format",)),
    "quantize": _Door(lambda f, kind: f.quantizer_for(kind), "quantize takes no {label} {what}",
                      rules=_quantizer_rules),
}


def _generator_only(verb: str, settings, at: tuple) -> tuple[tuple, str, str] | None:
    only = _GENERATOR_ONLY.get(verb, set())
    for path in settings.given():
        if type(settings).flat_key(path) in only:
            return ((*at, *path.split(".")), f"{_flag(settings, path)} applies to text generators only; the "
                    "teacher is not a causal LM", "drop it, or point teacher: at a …ForCausalLM checkpoint")
    return None


def _flag(settings, path: str) -> str:
    """The command's flag of a dotted option (the error's location already names the recipe's field)."""
    from compress.settings import flag

    return flag(type(settings).flat_key(path))


def _names(settings, keys: set[str]) -> str:
    """``keys`` as a recipe writes them (dotted paths)."""
    moved = type(settings).MOVED
    return ", ".join(sorted(moved.get(k, k) for k in keys))


def calibration_for(config, data: dict[str, str], fmt: str) -> Any:
    """A generator's quantize settings with the recipe's calibration text where a data-aware INT4 algorithm (GPTQ,
    AWQ, scale estimation) reads it and the step names none; otherwise ``config`` as it is."""
    if fmt == "gguf" or config.int4.algorithm not in DATA_AWARE or config.calibration.data or not data.get("calibration"):
        return config
    return config.model_copy(update={"calibration": config.calibration.model_copy(update={"data": data["calibration"]})})
