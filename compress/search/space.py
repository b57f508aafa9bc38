"""What every search shares, whatever its teacher's kind: :class:`Space`, the hooks the one driver
(:func:`compress.search.run.run_search`) calls, which each kind implements (:class:`compress.search.encoder.EncoderSpace`
for a forward pass, :class:`compress.search.generation.GeneratorSpace` for a causal LM); :class:`SearchResult`, what a
search returns; a budget as a constraint (:func:`violation`); every dimension ``--space`` may name; how a candidate
runs on another runtime than its profile's."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from compress.search.encoder_space import KINDS
from compress.search.generation_space import GENERATOR_SPACE


@dataclass
class SearchResult:
    search_dir: Path
    summary: dict[str, Any]
    chosen: dict[str, Any] | None = None
    diagnosis: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """pass when a candidate meets every budget, on the ranking data and on the held-out data; fail when the chosen
        one fails the held-out check (the check exists to catch a choice that only fit the ranking data); infeasible
        when no measured candidate meets every budget."""
        if not self.chosen:
            return "infeasible"
        return "fail" if (self.chosen.get("holdout") or {}).get("verdict") == "fail" else "pass"

    @property
    def exit_code(self) -> int:
        from compress.profiles.budgets import VERDICTS

        return VERDICTS[self.verdict][0]


class Space(Mapping):
    """What the search of one kind of teacher explores: its choices (the mapping: ``space["runtime"]``), what the
    search directory (:class:`compress.search.directory.Search`) reads, and the hooks through which the one driver
    (:func:`compress.search.run.run_search`) queues, draws, measures, stops and concludes, each kind its own."""

    kind: ClassVar[str]  # the task table's kind of the models it searches
    detected_runs_any: ClassVar[bool]  # a detected profile (host) runs whatever runtime a candidate's artifact needs
    ignores: ClassVar[str]  # what the search says of an option it would ignore (one the settings mark for another kind)
    objectives: ClassVar[tuple[tuple[str, str], ...]]  # the study's (metric, direction) per objective
    startup_trials: ClassVar[int]  # trials the sampler draws at random before it models the space
    own_constraints: ClassVar[int]  # constraints after the budgets' (each trial's "constraints" holds them all)
    #: the best candidates of the exploration are built again at full fidelity (a second phase) before the choice
    promotes: ClassVar[bool]
    choices: dict[str, Any]

    @classmethod
    @abstractmethod
    def judged(cls, profile, notes: list[str]) -> list[str]:
        """The budgets its candidates are judged by (what the search should say about them appended to ``notes``)."""

    @abstractmethod
    def measure(self, number: int, c: Any, *fidelity: Any) -> dict[str, Any]:
        """Build candidate ``c`` (trial ``number``; a kind with fidelities: at the one given) and validate it: its
        figures, the budgets' results and the constraints the sampler reads."""

    # -- the driver's hooks -------------------------------------------------------------------------------------

    @abstractmethod
    def first_trials(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The trials a new study starts with: (Optuna parameters, user attributes) each."""

    @abstractmethod
    def draw(self, trial) -> tuple[Any, str]:
        """Trial ``trial``'s candidate (drawn from the sampler, its label and what else the kind records set on the
        trial) and how the narration names the trial."""

    @abstractmethod
    def answered(self, trial, c: Any, tag: str) -> Any:
        """The objective values of an earlier trial that answers ``c`` already (its figures copied to ``trial``), or
        None: ``c`` is to be measured. Raises ``optuna.TrialPruned`` where ``c`` is not measured at all."""

    @abstractmethod
    def build(self, trial, c: Any, tag: str) -> dict[str, Any]:
        """Build and validate ``c`` for ``trial``: the figures recorded on the trial (``verdict`` and ``seconds``
        among them). A failure is an :class:`compress.errors.EdgeCompressError`."""

    @abstractmethod
    def figures(self, res: dict[str, Any]) -> str:
        """What the narration says after a measured candidate's verdict."""

    @abstractmethod
    def values(self, res: dict[str, Any]) -> tuple[float, ...]:
        """A measured candidate's objective values, in :attr:`objectives`' order."""

    @abstractmethod
    def stop_reason(self, study) -> str | None:
        """Why the exploration is over (None: it goes on)."""

    def exploring(self) -> str | None:
        """What the search says as the exploration starts (None: nothing)."""
        return None

    def after_trial(self, study, trial) -> None:
        """After each explored trial that does not end the exploration: queue or sample differently."""

    def promote(self, study) -> list[tuple[int, dict[str, Any]]]:
        """Where :attr:`promotes`: the explored trials to build again at full fidelity (number, parameters)."""
        return []

    @abstractmethod
    def conclude(self, study) -> SearchResult:
        """The choice (or the closest candidate and a diagnosis), its held-out check, and the search's summary."""

    def __getitem__(self, key: str) -> Any:
        return self.choices[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.choices)

    def __len__(self) -> int:
        return len(self.choices)


def violation(b: dict[str, Any] | None) -> float:
    """A budget as an Optuna constraint: > 0 when it fails (relative to its limit), <= 0 when it holds or was not
    measured (not measured is not a failure; the report says UNVERIFIED)."""
    if not b or b.get("measured") is None or not b.get("limit"):
        return 0.0
    lim, x = float(b["limit"]), float(b["measured"])
    return (x - lim) / abs(lim) if b["comparison"] == "<=" else (lim - x) / abs(lim)


def measured_beside(budgets: list[str]) -> dict[str, bool]:
    """What a search's validation measures beside accuracy and the candidate's own latency (validate's ``measure``
    options): the teacher's FP32 baseline only where ``min_speedup`` is judged, cold start and peak memory (a fresh
    process) only where their budgets are. Nothing the search reads comes from them otherwise, and on 2 cores the
    probe took 10-25 s per candidate (an estimated profile's baseline: an FP32 export of the teacher)."""
    names = set(budgets)
    return {"baseline": "min_speedup" in names, "cold_start": bool(names & {"max_cold_start_ms", "max_peak_memory_mb"})}


#: every dimension, with every choice any kind of teacher has (what ``--space`` may name)
ALL_DIMENSIONS: dict[str, list[Any]] = {}
for _space in [*(k.space for k in KINDS.values()), GENERATOR_SPACE]:
    for _dim, _choices in _space.items():
        ALL_DIMENSIONS.setdefault(_dim, [])
        ALL_DIMENSIONS[_dim] += [c for c in _choices if c not in ALL_DIMENSIONS[_dim]]
#: how a candidate on another runtime than its profile's is run (the device and budgets stay the profile's)
RUNTIME_SETTINGS = {"onnxruntime": {"provider": "CPUExecutionProvider", "options": {}},
                    "openvino": {"provider": "CPU", "options": {"PERFORMANCE_HINT": "LATENCY"}},
                    "executorch": {"provider": None, "options": {}},
                    "llamacpp": {"provider": None, "options": {}}}
