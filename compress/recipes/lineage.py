"""``edgecompress run --from-artifact``: the recipe that reproduces an artifact, read from its manifest's lineage.

Every artifact records its teacher (path and content hash) and each step with its resolved settings; distillation
and pruning also record the data they read. The recipe keeps only the settings that differ from the defaults, so it
reads like one a person wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compress.recipes.verbs import STEP_VERBS, VERBS


def _name(stage: str, config: dict[str, Any], taken: set[str]) -> str:
    base = VERBS[stage].name_for(stage, config)
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _non_default(stage: str, config: dict[str, Any]) -> dict[str, Any]:
    """The recorded settings that differ from the defaults, nested (a version-1 record's flat keys moved to their
    sections)."""
    model = VERBS[stage].config_model()
    nest = getattr(model, "nest", None)
    return _differing(nest(config) if nest else config, model().model_dump(mode="json"), model.model_fields)


def _differing(config: dict[str, Any], defaults: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if k not in fields or v == defaults.get(k):  # a step's settings: every option has a default
            continue
        section = fields[k].annotation
        if isinstance(v, dict) and isinstance(section, type) and hasattr(section, "model_fields"):
            v = _differing(v, defaults.get(k) or {}, section.model_fields)
        out[k] = v
    return out


def recipe_from_artifact(path: Path | str) -> str:
    """The recipe (YAML text) that rebuilds the artifact at ``path`` from its teacher."""
    from compress.artifact import load_artifact
    from compress.errors import ArtifactError

    art = load_artifact(path, verify=False)
    m = art.manifest
    steps: dict[str, Any] = {}
    data: dict[str, str] = {}
    taken: set[str] = set()
    parent = "teacher"
    skipped = []
    teacher: Any = m.source.path
    for n, rec in enumerate(m.steps):
        if rec.stage == "finetune" and n == 0:  # the teacher was fine-tuned from the source (a pretrained base)
            teacher = {"finetune": {"base": m.source.path, **_non_default(rec.stage, rec.config)}}
            for k, v in ((rec.metrics or {}).get("data") or {}).items():
                data.setdefault(k, v)
            continue
        if rec.stage not in STEP_VERBS:
            skipped.append(rec.stage)
            continue
        name = _name(rec.stage, rec.config, taken)
        step: dict[str, Any] = {} if parent == "teacher" else {"from": parent}
        step[rec.stage] = _non_default(rec.stage, rec.config)
        steps[name] = step
        for k, v in ((rec.metrics or {}).get("data") or {}).items():
            if v and k not in data:
                data[k] = v
        parent = name
    if not steps:
        raise ArtifactError(f"{path}: the manifest records no steps", hint="this is a teacher, not a derived artifact")
    recipe: dict[str, Any] = {"name": _slug(Path(path).name), "teacher": teacher}
    if data:
        recipe["data"] = data
    recipe["steps"] = steps
    if m.format.value != "pytorch":
        recipe["validate"] = {"profiles": ["host"], "artifacts": [parent]}
    head = [
        f"# Reproduces {Path(path).resolve()} ({m.format} {m.precision}), from its manifest's lineage.",
        f"# Teacher content sha256 when it was made: {m.source.sha256}",
        f"# edgecompress {m.versions.get('edgecompress') or ''} made it; run with: edgecompress run THIS_FILE".replace("  ", " "),
    ]
    if skipped:
        head.append(f"# Steps with no recipe verb were left out: {', '.join(skipped)}")
    if not data and any(s in STEP_VERBS and VERBS[s].trains for s in (r.stage for r in m.steps)):
        head.append("# The data the distillation/pruning read is not recorded: set data.train and data.eval")
    return "\n".join(head) + "\n" + yaml.safe_dump(recipe, sort_keys=False, width=110)


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_") or "artifact"
