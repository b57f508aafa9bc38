"""The base of every verb's settings: grouped in nested sub-models, checked in the library.

A verb's settings (``ExportConfig``, ``QuantizeConfig``, ...) group the options of one backend or technique in a
sub-model (``quantize.calibration``, ``export.tensorrt``), and say in a model validator which options do not apply
to which choice (a TensorRT option with ``format: onnx``), so the CLI, a recipe and the Python API refuse the same
things with the same one-line message. The CLI keeps its flat flags: :meth:`Settings.from_flat` nests them through
the class's ``MOVED`` table, the same table that names the new home of a key written flat in a version-1 recipe::

    class QuantizeConfig(Settings):
        MOVED = {"calibration_method": "calibration.method"}   # --calibration-method, or a v1 recipe's key
        calibration: Calibration = Field(default_factory=Calibration)

    QuantizeConfig.from_flat(calibration_method="minmax")       # what the CLI builds
    QuantizeConfig(calibration={"method": "minmax"})            # a recipe, the Python API
    QuantizeConfig(calibration_method="minmax")                 # refused: `calibration_method` is now `calibration.method`
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError


def refuse(message: str) -> PydanticCustomError:
    """A settings error whose text is ``message`` exactly (no "Value error, " prefix): raise it in a validator."""
    return PydanticCustomError("not_applicable", message)


class For:
    """A mark on a settings field: the kinds of model (the task table's: ``forward``, ``generation``) whose work reads
    it; a field without one is read for every kind::

        metric: Annotated[str | None, For("forward")] = Field(None, description=...)

    :meth:`Settings.set_for_others` names the options given for another kind."""

    __slots__ = ("kinds",)

    def __init__(self, *kinds: str) -> None:
        self.kinds = kinds

    def __repr__(self) -> str:
        return f"For{self.kinds!r}"


def flag(key: str) -> str:
    """The CLI flag of a flat key: ``calibration_method`` -> ``--calibration-method``."""
    return "--" + key.replace("_", "-")


class Section(BaseModel):
    """A group of options of one backend or technique, nested in a verb's settings."""

    model_config = ConfigDict(extra="forbid")


class Settings(BaseModel):
    """A verb's settings. ``MOVED`` maps each flat key (a CLI flag, a version-1 recipe key) to its dotted path."""

    model_config = ConfigDict(extra="forbid")

    #: flat key -> dotted path of the nested field it sets (every option that lives in a sub-model)
    MOVED: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_flat_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if cls._moves(key, data[key]):
                    path = cls.MOVED[key]
                    head, _, rest = path.partition(".")
                    raise PydanticCustomError(
                        "moved", "`{key}` is now `{path}` (settings version 2): write {example}",
                        {"key": key, "path": path, "example": f"{head}: {{{rest}: ...}}" if rest else f"{head}: ..."})
        return data

    @classmethod
    def from_flat(cls, **values: Any) -> Self:
        """Settings from flat keys (the CLI's flags; None means not given), nested through ``MOVED``."""
        return cls.model_validate(cls.nest({k: v for k, v in values.items() if v is not None}))

    @classmethod
    def nest(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with every flat key (a CLI flag's name, a version-1 key) moved to its place through ``MOVED``;
        keys already nested are merged with them."""
        nested: dict[str, Any] = {}
        for key, value in values.items():
            *parents, leaf = (cls.MOVED[key] if cls._moves(key, value) else key).split(".")
            node = nested
            for p in parents:
                node = node.setdefault(p, {})
            if isinstance(value, dict) and isinstance(node.get(leaf), dict):
                node[leaf].update(value)
            else:
                node[leaf] = dict(value) if isinstance(value, dict) else value  # the caller's dict stays as it was
        return nested

    @classmethod
    def _moves(cls, key: str, value: Any) -> bool:
        """Whether ``key: value`` is a flat key that moved: one ``MOVED`` lists, unless it is also the name of a
        section given as one (``student: {layers: 3}`` beside a flat ``student: DIR`` now ``student.checkpoint``)."""
        return key in cls.MOVED and (key not in cls.model_fields or not isinstance(value, dict))

    @classmethod
    def flat_fields(cls) -> dict[str, FieldInfo]:
        """Every option's field by its flat key (a CLI flag's name), nested ones through ``MOVED``: where a command
        reads its options' help texts and defaults."""
        out: dict[str, FieldInfo] = {}
        for name, info in cls.model_fields.items():
            if not (isinstance(info.annotation, type) and issubclass(info.annotation, Section)):
                out[name] = info
        for key, path in cls.MOVED.items():
            model: type[BaseModel] = cls
            *parents, leaf = path.split(".")
            for p in parents:
                model = model.model_fields[p].annotation
            out[key] = model.model_fields[leaf]
        return out

    @classmethod
    def flat_key(cls, path: str) -> str:
        """The flat key (CLI flag name) of a dotted path: the inverse of ``MOVED``."""
        for key, p in cls.MOVED.items():
            if p == path:
                return key
        return path.rsplit(".", 1)[-1]

    @classmethod
    def option(cls, path: str) -> str:
        """How a message names an option: its recipe path and its CLI flag, ``calibration.method
        (--calibration-method)``; a top-level option is named once."""
        key = cls.flat_key(path)
        return f"{path} ({flag(key)})" if "." in path else f"{path} ({flag(path)})"

    def set_for_others(self, kind: str) -> list[str]:
        """The flat keys (CLI flags' names) of the options marked :class:`For` kinds other than ``kind`` whose values
        differ from their defaults, in order: what a ``kind`` model's work would ignore."""
        out = []
        for key, info in type(self).flat_fields().items():
            marks = [m for m in info.metadata if isinstance(m, For)]
            if not marks or any(kind in m.kinds for m in marks):
                continue
            value: Any = self
            for part in type(self).MOVED.get(key, key).split("."):
                value = getattr(value, part)
            if value != info.get_default(call_default_factory=True):
                out.append(key)
        return out

    def given(self) -> list[str]:
        """The dotted paths of every option set explicitly (the CLI's given flags, a recipe's keys), in order."""
        return list(_given(self, ""))

    def refuse_unless(self, allowed: bool, prefixes: tuple[str, ...], applies_to: str, hint: str = "") -> None:
        """Refuse every given option under ``prefixes`` (dotted paths or section names) unless ``allowed``:
        ``<option> applies to <applies_to> only``."""
        if allowed:
            return
        for path in self.given():
            if any(path == p or path.startswith(p + ".") for p in prefixes):
                raise refuse(f"{self.option(path)} applies to {applies_to} only" + (f"; {hint}" if hint else ""))


def _given(model: BaseModel, prefix: str):
    for name in model.model_fields:
        if name not in model.model_fields_set:
            continue
        value = getattr(model, name)
        if isinstance(value, Section):
            yield from _given(value, f"{prefix}{name}.")
        else:
            yield prefix + name
