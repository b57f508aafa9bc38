"""What a ``package`` bundle holds beside its wheels: the model and tokenizer files under ``model/``, the handler from
compress/device/bundle_template/ (the generating one for a generator), ``model_config.json`` (what the handler reads:
task, labels, the input description with the tokenizer inside the bundle, post-processing, threads), the shipped
device code byte for byte, ``requirements.txt`` (exact pins, and the resolved closure once the wheels are in) and
``edgecompress-bundle.json``, the record of how it was built.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from compress import __version__
from compress.artifact import Artifact
from compress.errors import ConfigError
from compress.packaging import generation as gen
from compress.packaging.config import BUNDLE_INFO, KIND_DEPENDENCIES, MODEL_DIR, PackageConfig
from compress.tasks import TASKS


def pins_for(config: PackageConfig, names: tuple[str, ...] = KIND_DEPENDENCIES["text"]) -> dict[str, str]:
    """Exact versions of the handler's direct dependencies (``names``): the configured ones, else the versions
    installed here."""
    from compress._optional import version_of

    pins = {}
    for name in names:
        version = config.pins.get(name) or version_of(name)
        if version is None:
            raise ConfigError(
                f"{name} is not installed here, so there is no version to pin for the bundle",
                hint=f"install it (pip install {name}) or pin one: --pin {name}==VERSION",
            )
        pins[name] = version.split("+")[0]  # a local build tag (1.20.1+cpu) is not on PyPI
    return pins


def _handler_source(entry: str, template: str = "handler.py") -> tuple[str, str]:
    """The handler module's file name and source (``template`` of compress/device/bundle_template/); the entry
    point's function is aliased to ours."""
    module, _, func = entry.rpartition(".")
    if not module or not func or not all(p.isidentifier() for p in (*module.split("."), func)) or "." in module:
        raise ConfigError(f"serverless.handler {entry!r} is not MODULE.FUNCTION", hint="e.g. handler.handler")
    src = (resources.files("compress.device") / "bundle_template" / template).read_text(encoding="utf-8")
    if func != "handler":
        src += f"\n\n{func} = handler  # the entry point named in the profile\n"
    return f"{module}.py", src


def _preprocess(art: Artifact) -> dict[str, Any]:
    """The artifact's input description as the handler reads it: the tokenizer inside the bundle, and the pad
    token id resolved exactly as the library's runtimes resolve it (so the bundle needs no tokenizer_config.json)."""
    from compress.data.tokenization import encoder_for

    spec = art.manifest.preprocess.model_dump()
    if spec["kind"] != "text":  # images: the description is complete as it is
        return spec
    return spec | {"tokenizer_file": f"{MODEL_DIR}/{spec['tokenizer_file']}", "pad_id": encoder_for(art).pad_id}


def write_bundle_files(root: Path, art: Artifact, profile, sl, function: dict[str, Any], config: PackageConfig,
                        pins: dict[str, str], generation: dict[str, Any] | None = None) -> dict[str, str]:
    """Write handler, model config, model and tokenizer files; return {relative path: contributor kind}.
    ``generation``: a generator's limits (:func:`compress.packaging.generation.generation_block`): its handler is the
    generating one."""
    m = art.manifest
    own: dict[str, str] = {}
    mdir = root / MODEL_DIR
    mdir.mkdir()
    for name in art.model_files():
        (mdir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(art.path / name, mdir / name)
        own[f"{MODEL_DIR}/{name}"] = "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "manifest.json"):
        if (art.path / name).is_file():
            shutil.copyfile(art.path / name, mdir / name)
            own[f"{MODEL_DIR}/{name}"] = "tokenizer" if name != "manifest.json" else "handler"
    model_config = {
        "task": str(m.task),
        "labels": m.labels if TASKS[m.task].labels != "none" else None,
        "model_file": f"{MODEL_DIR}/{m.model_file}",
        "preprocess": _preprocess(art),
        "input_names": [t.name for t in m.inputs],
        "output_name": m.outputs[0].name if m.outputs else None,
        "max_length": m.max_length,
        "postprocess": m.postprocess.model_dump(),
        "threads": function["threads"],
        "max_batch_size": config.max_batch_size,
    }
    if generation is not None:
        model_config["generation"] = generation
    if m.stream is not None:  # a streaming model: the handler runs each sequence call by call, the state carried
        model_config["stream"] = m.stream.model_dump()
        model_config["inputs"] = [t.model_dump() for t in m.inputs]
    (root / "model_config.json").write_text(json.dumps(model_config, indent=2) + "\n", encoding="utf-8")
    own["model_config.json"] = "handler"
    fname, src = _handler_source(sl.handler, gen.TEMPLATE if generation is not None else "handler.py")
    (root / fname).write_text(src, encoding="utf-8")
    own[fname] = "handler"
    from compress.device.shipped import SHIPPED_FILES

    # the device code the handler shares with the runtimes and the remote runner, byte for byte, every part of it
    for name, source in SHIPPED_FILES.items():
        (root / name).write_bytes((resources.files("compress.device") / source).read_bytes())
        own[name] = "handler"
    write_requirements(root, pins, None, sl)
    own["requirements.txt"] = "handler"
    info = {
        "edgecompress": __version__,
        "config": config.model_dump(mode="json"),
        "profile": {"name": profile.name, "source": profile.source},
        "function": function,
        "artifact": {"path": str(art.path), "digest": art.digest, "precision": str(m.precision)},
        "requirements": pins,
        "wheels": None,
    }
    (root / BUNDLE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    own[BUNDLE_INFO] = "handler"
    return own


def update_bundle_info(root: Path, **changes: Any) -> None:
    path = root / BUNDLE_INFO
    info = json.loads(path.read_text(encoding="utf-8"))
    info.update(changes)
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def write_requirements(root: Path, pins: dict[str, str], resolved: dict[str, str] | None, sl) -> None:
    target = f"{', '.join(sl.pip_platforms) or 'the build host'}, CPython {sl.python_version}"
    lines = [f"# written by edgecompress {__version__} for {sl.platform} ({target})",
             *(f"{n}=={v}" for n, v in pins.items())]
    extra = {n: v for n, v in (resolved or {}).items() if n not in pins}
    if extra:
        lines.append("# pulled in by the packages above (resolved by pip for the target; bundled too)")
        lines += [f"{n}=={v}" for n, v in sorted(extra.items())]
    (root / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
