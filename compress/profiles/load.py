"""Device profiles: what a target device is, how to measure on it, and the budgets an artifact must meet.

A profile is YAML data validated by :class:`DeviceProfile`. Built-in profiles ship as package data
(``profiles/*.yaml`` in the repository, installed as ``compress.builtin_profiles``); users may pass
any file path, or ``host`` for a profile detected from the machine running the command.

A file may name a parent in ``extends:`` (a built-in name, ``host``, or a path relative to the file);
parents are resolved recursively and deep-merged (mappings merge key by key, the child wins; lists
and scalars are replaced). ``name`` is never inherited. Files whose name starts with ``_`` are
abstract parents: they may be extended but are not profiles themselves.

Every problem raises :class:`~compress.errors.ProfileError` with a one-line message naming the file
and field path, e.g. ``my.yaml: budgets -> latency_ms -> p95: Input should be greater than 0``.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import types
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from compress.errors import ProfileError
from compress.profiles.host import (
    _host_data,
)
from compress.profiles.schema import (
    _LIST_HINT,
    _MAX_EXTENDS_DEPTH,
    _SUFFIXES,
    HOST,
    DeviceProfile,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

__all__ = [
    "builtin_profile_names",
    "load_profile",
    "detect_host",
    "check_profile_file",
    "list_profiles",
]


# --------------------------------------------------------------------------------------------------
# Built-ins
# --------------------------------------------------------------------------------------------------


def _builtin_dir() -> Traversable:
    """The folder of built-in YAML files: package data when installed, ``profiles/`` in a source tree."""
    try:
        return resources.files("compress.builtin_profiles")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "profiles"


def _builtin_files(include_abstract: bool = False) -> dict[str, Traversable]:
    out: dict[str, Traversable] = {}
    for entry in _builtin_dir().iterdir():
        if not entry.name.endswith(_SUFFIXES) or entry.name.startswith("."):
            continue
        stem = entry.name.rsplit(".", 1)[0]
        if stem.startswith("_") and not include_abstract:
            continue
        out[stem] = entry
    return out


def builtin_profile_names() -> list[str]:
    """Names of the built-in profiles, sorted (abstract ``_`` parents excluded)."""
    return sorted(_builtin_files())


def _suggest(name: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_name_hint(name: str) -> str:
    known = [*builtin_profile_names(), HOST]
    close = _suggest(name, known)
    if close:
        return f"did you mean {close}? ({_LIST_HINT})"
    return f"known profiles: {', '.join(known)} ({_LIST_HINT}), or pass a path to a .yaml file"


# --------------------------------------------------------------------------------------------------
# YAML reading and extends resolution
# --------------------------------------------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # let the base class report unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class _Source:
    """One layer of a profile: a file, a built-in, or the detected host."""

    label: str  # how messages name it
    key: str  # identity for cycle detection
    kind: str  # "file" | "builtin" | "host"
    location: Any = None  # Path or Traversable for files and built-ins
    source: str = ""  # what DeviceProfile.source says when this is the top layer


def looks_like_path(value: str) -> bool:
    return (
        value.lower().endswith(_SUFFIXES)
        or "/" in value
        or os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.startswith((".", "~"))
    )


def _file_source(path: Path) -> _Source:
    path = Path(path).expanduser()
    try:
        key = str(path.resolve())
    except OSError:
        key = str(path.absolute())
    return _Source(label=str(path), key=key, kind="file", location=path, source=str(path))


def _builtin_source(name: str) -> _Source:
    files = _builtin_files(include_abstract=True)
    entry = files[name]
    return _Source(
        label=f"{entry.name} (built-in)", key=f"builtin:{name}", kind="builtin", location=entry,
        source=f"builtin:{name}",
    )


_HOST_SOURCE = _Source(label="host (detected)", key=HOST, kind="host", source="detected")


def _parent_source(ref: Any, child: _Source) -> _Source:
    """The layer an ``extends:`` value names, relative to the file that names it."""
    if not isinstance(ref, str) or not ref.strip():
        raise ProfileError(
            f"{child.label}: extends: expected a profile name or a path to a .yaml file, got {ref!r}",
            hint=f"use a built-in name ({', '.join(builtin_profile_names())}), 'host', or a relative path",
        )
    ref = ref.strip()
    if looks_like_path(ref):
        if child.kind == "builtin":
            entry = _builtin_dir().joinpath(ref)
            return _Source(label=f"{ref} (built-in)", key=f"builtin-file:{ref}", kind="builtin", location=entry,
                           source=f"builtin:{ref}")
        target = Path(ref).expanduser()
        if not target.is_absolute() and child.kind == "file":
            target = Path(child.location).parent / target
        return _file_source(target)
    if ref == HOST:
        return _HOST_SOURCE
    if ref in _builtin_files(include_abstract=True):
        return _builtin_source(ref)
    raise ProfileError(f"{child.label}: extends: unknown profile {ref!r}", hint=_unknown_name_hint(ref))


def _read_text(src: _Source, referrer: _Source | None) -> str:
    where = f"{referrer.label}: extends: " if referrer else ""
    shown = src.label
    try:
        return src.location.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "check the path (relative paths in extends: are relative to the extending file)"
        stem = Path(str(src.location)).stem
        if stem in builtin_profile_names():
            hint = f"to use the built-in profile, pass its name: {stem}"
        elif referrer is None:
            hint = f"check the path, or pass a built-in profile name ({_LIST_HINT})"
        raise ProfileError(f"{where}profile file '{shown}' not found", hint=hint) from None
    except IsADirectoryError:
        raise ProfileError(f"{where}profile path '{shown}' is a directory", hint="pass a .yaml file") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{where}{shown}: not UTF-8 text ({exc.reason})", hint="save the profile as UTF-8 YAML") from None
    except OSError as exc:
        raise ProfileError(f"{where}cannot read profile file '{shown}': {exc.strerror or exc}",
                           hint="check the file's permissions") from None


def _parse_yaml(text: str, label: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        hint = (
            "remove or rename one of the two entries" if problem.startswith("duplicate key") else
            "check indentation (spaces, not tabs), a ':' after each key, and quotes around values containing ': ' or '#'"
        )
        raise ProfileError(f"{label}: invalid YAML{at}: {problem}", hint=hint) from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{label}: invalid YAML: {exc}", hint="check the file is YAML") from None
    if data is None:
        raise ProfileError(f"{label}: the file is empty",
                           hint="a profile needs at least name and hardware (see `edgecompress profiles show cpu-x86-avx2`)")
    if not isinstance(data, dict):
        raise ProfileError(
            f"{label}: expected a mapping at the top level, got a {_yaml_type(data)}",
            hint="write keys like name:, hardware:, runtime:, measure:, budgets: (see `edgecompress profiles show cpu-x86-avx2`)",
        )
    return data


def _yaml_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), type(value).__name__)


def _layer_data(src: _Source, referrer: _Source | None) -> dict[str, Any]:
    if src.kind == "host":
        return _host_data()
    data = _parse_yaml(_read_text(src, referrer), src.label)
    _refuse_moot_generator_budgets(data, src.label)
    return data


def _refuse_moot_generator_budgets(data: dict[str, Any], label: str) -> None:
    """A budget written under ``generator_budgets`` that reads a classifier's or an embedder's outputs judges no
    generator (validate drops it for one): refused where the user wrote it, not kept as if it held. Only the file's
    own keys are read (a resolved profile shown with ``profiles show --yaml`` holds every key, null)."""
    from compress.profiles.budgets import budgets_of

    written = data.get("generator_budgets")
    moot = [k for k in budgets_of("forward") if isinstance(written, dict) and written.get(k) is not None]
    if moot:
        raise ProfileError(f"{label}: generator_budgets: {', '.join(moot)} judge a classifier's or an embedder's "
                           "outputs, never a text generator's",
                           hint="move them under budgets: or drop them (a generator's quality budgets: "
                                "max_perplexity_increase, min_top1_agreement, max_kl)")


Origins = dict[tuple[str, ...], str]


def _origins(data: dict[str, Any], label: str, prefix: tuple[str, ...] = ()) -> Origins:
    out: Origins = {}
    for key, value in data.items():
        path = (*prefix, str(key))
        out[path] = label
        if isinstance(value, dict):
            out.update(_origins(value, label, path))
    return out


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_origins(parent: Origins, child_data: dict[str, Any], label: str, prefix: tuple[str, ...] = ()) -> Origins:
    out = dict(parent)
    for key, value in child_data.items():
        path = (*prefix, str(key))
        if not isinstance(value, dict):  # a scalar/list replaces whatever the parent had below this key
            for stale in [p for p in out if p[: len(path)] == path and len(p) > len(path)]:
                del out[stale]
        out[path] = label
        if isinstance(value, dict):
            out = _merge_origins(out, value, label, path)
    return out


def _resolve(src: _Source, chain: tuple[_Source, ...] = (), referrer: _Source | None = None) -> tuple[dict[str, Any], Origins]:
    """The layer's data merged over all its parents, and which layer each key path came from."""
    if any(s.key == src.key for s in chain):
        start = next(i for i, s in enumerate(chain) if s.key == src.key)
        cycle = " -> ".join(s.label for s in (*chain[start:], src))
        raise ProfileError(f"extends cycle: {cycle}", hint="remove one of the extends: entries in the cycle")
    if len(chain) >= _MAX_EXTENDS_DEPTH:
        raise ProfileError(f"{src.label}: extends chain deeper than {_MAX_EXTENDS_DEPTH} profiles",
                           hint="flatten the chain of extends: entries")
    data = _layer_data(src, referrer)
    ref = data.pop("extends", None)
    if ref is None:
        return data, _origins(data, src.label)
    parent = _parent_source(ref, src)
    pdata, porigins = _resolve(parent, (*chain, src), src)
    pdata.pop("name", None)  # a name belongs to one profile; never inherit it
    porigins.pop(("name",), None)
    merged = _deep_merge(pdata, data)
    inherited = merged.get("generator_budgets")
    if isinstance(inherited, dict) and isinstance(data.get("budgets"), dict):
        # a budget this layer writes holds for generators too, over a parent's generator_budgets of the same name
        # (the layer's own generator_budgets still win): the profile a user writes says what it means
        own = data.get("generator_budgets") if isinstance(data.get("generator_budgets"), dict) else {}
        for key in data["budgets"]:
            if key not in own:
                inherited.pop(key, None)
    return merged, _merge_origins(porigins, data, src.label)


# --------------------------------------------------------------------------------------------------
# Validation errors -> one line
# --------------------------------------------------------------------------------------------------


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = DeviceProfile
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        model = _submodel(model.model_fields[part].annotation)
    return model


def _clean_loc(loc: tuple[Any, ...]) -> tuple[list[str], tuple[str, ...]]:
    """Displayed parts (``simd[1]``) and the string field path (for model lookups)."""
    shown: list[str] = []
    fields: list[str] = []
    for part in loc:
        if isinstance(part, int):
            if shown:
                shown[-1] = f"{shown[-1]}[{part}]"
            else:
                shown.append(f"[{part}]")
            continue
        part = str(part)
        if "[" in part or "(" in part:  # pydantic's internal union/validator tags
            continue
        shown.append(part)
        fields.append(part)
    return shown, tuple(fields)


def _origin_of(fields: tuple[str, ...], origins: Origins, default: str) -> str:
    for n in range(len(fields), 0, -1):
        if fields[:n] in origins:
            return origins[fields[:n]]
    return default


def _hint_for(err: dict[str, Any], fields: tuple[str, ...]) -> str:
    example = "see `edgecompress profiles show cpu-x86-avx2` for a complete profile"
    if err["type"] == "extra_forbidden" and fields:
        parent = _model_at(fields[:-1])
        if parent is not None:
            valid = list(parent.model_fields)
            if parent is DeviceProfile:
                valid = [k for k in valid if k != "source"]
            where = " -> ".join(fields[:-1]) or "the top level"
            close = _suggest(fields[-1], valid)
            lead = f"did you mean {close}? " if close else ""
            return f"{lead}valid keys at {where}: {', '.join(valid)}"
    if fields:
        parent = _model_at(fields[:-1])
        if parent is not None and fields[-1] in parent.model_fields:
            desc = parent.model_fields[fields[-1]].description
            if desc:
                verb = "add" if err["type"] == "missing" else "expected"
                return f"{verb} {fields[-1]}: {desc}"
    return example


def _validation_error(exc: ValidationError, origins: Origins, top: str) -> ProfileError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    shown, fields = _clean_loc(tuple(first["loc"]))
    msg = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if first["type"] == "extra_forbidden" and fields:
        msg = "unknown key"
    where = top if first["type"] == "missing" and len(fields) <= 1 else _origin_of(fields, origins, top)
    path = " -> ".join(shown)
    text = f"{where}: {path}: {msg}" if path else f"{where}: {msg}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return ProfileError(text, hint=_hint_for(first, fields))


def _build(src: _Source) -> DeviceProfile:
    data, origins = _resolve(src)
    data["source"] = src.source
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, origins, src.label) from None


def detect_host() -> DeviceProfile:
    """The ``host`` profile: this machine's facts, with relative budgets (``profiles/_host.yaml``) that hold
    whatever the load: speedup over the FP32 baseline, retention, agreement, size, peak memory."""
    profile = _build(_HOST_SOURCE)
    log.debug("detected host: %s", profile.hardware.model_dump())
    return profile


def check_profile_file(path: str | Path) -> DeviceProfile:
    """Load and validate a profile file (``extends:`` resolved); raises ProfileError when invalid."""
    return _build(_file_source(Path(path)))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A built-in profile by name, ``host`` (detected), or a profile from a .yaml/.yml file."""
    if isinstance(name_or_path, Path):
        return check_profile_file(name_or_path)
    value = str(name_or_path).strip()
    if not value:
        raise ProfileError("empty profile name", hint=_unknown_name_hint(""))
    if looks_like_path(value):
        return check_profile_file(Path(value))
    if value == HOST:
        return detect_host()
    if value in _builtin_files():
        return _build(_builtin_source(value))
    if value.startswith("_") and value in _builtin_files(include_abstract=True):
        raise ProfileError(f"{value!r} is an abstract parent, not a profile",
                           hint=f"use it in extends:, or pick a profile ({_LIST_HINT})")
    raise ProfileError(f"unknown profile {value!r}", hint=_unknown_name_hint(value))


def list_profiles(include_host: bool = True) -> list[DeviceProfile]:
    """Every built-in profile, resolved, then ``host`` (skipped with a warning if it cannot be detected)."""
    out = [load_profile(name) for name in builtin_profile_names()]
    if include_host:
        try:
            out.append(detect_host())
        except ProfileError as exc:
            log.warning("host profile unavailable: %s", exc)
    return out
