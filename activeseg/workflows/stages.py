"""What a round's stages get (the round and its project) and what each returns.

Every output is a frozen dataclass whose ``as_dict()`` is what the ledger stores for the stage
and what the ``events`` callback receives. Those dicts keep the keys that projects have always
stored (the history and ``show`` read them), so a stage that can end in several ways (skipped,
or one annotator's counts rather than another's) writes only the keys of the way it ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from activeseg.pool.records import RoundInfo
from activeseg.workflows.project import Project

Json = dict[str, Any]


@dataclass(frozen=True)
class RoundContext:
    """What every stage of one round gets."""

    project: Project
    round: RoundInfo


class StageOutput(Protocol):
    """What a stage returns: anything that turns into the JSON the ledger stores."""

    def as_dict(self) -> Json:
        """Return the output as the JSON-able dict stored for the stage."""
        ...


@dataclass(frozen=True)
class CorrectionEffort:
    """How much the simulated annotator repainted of the pre-annotations it answered.

    Means over the answered tasks that came with a pre-annotation; None when none did.
    """

    voxels: float | None = None
    fraction: float | None = None


@dataclass(frozen=True)
class IngestOutput:
    """What the ingest stage took in.

    From Label Studio: counts per outcome and one message per task that failed. From the
    simulated annotator: how many tasks it answered and its ``correction`` effort.
    """

    ingested: int = 0
    updated: int = 0
    skipped: int = 0
    withdrawn: int = 0
    unchanged: int = 0
    deleted: int = 0
    errors: tuple[str, ...] = ()
    correction: CorrectionEffort | None = None

    def as_dict(self) -> Json:
        """Return the stored dict: the simulated annotator's effort, or the ingest counts."""
        if self.correction is not None:
            return {
                "ingested": self.ingested,
                "correction_voxels": self.correction.voxels,
                "correction_fraction": self.correction.fraction,
            }
        return {
            "ingested": self.ingested,
            "updated": self.updated,
            "skipped": self.skipped,
            "withdrawn": self.withdrawn,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class TrainOutput:
    """The checkpoint a round trained (path, steps, labeled crops), or why it did not train."""

    checkpoint: str | None = None
    steps: int | None = None
    labeled_crops: int | None = None
    skipped: str | None = None

    def as_dict(self) -> Json:
        """Return the stored dict: ``{"skipped": why}`` or the checkpoint's facts."""
        if self.skipped is not None:
            return {"skipped": self.skipped}
        return {
            "checkpoint": self.checkpoint,
            "steps": self.steps,
            "labeled_crops": self.labeled_crops,
        }


@dataclass(frozen=True)
class EvaluateOutput:
    """The validation metrics of the round's model, or why there are none."""

    metrics: Mapping[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def as_dict(self) -> Json:
        """Return the stored dict: ``{"skipped": why}`` or the metrics themselves."""
        if self.skipped is not None:
            return {"skipped": self.skipped}
        return dict(self.metrics)


@dataclass(frozen=True)
class ScoreOutput:
    """How many pool crops were scored, and with which model (None: model-free)."""

    scored: int
    model: str | None

    def as_dict(self) -> Json:
        """Return the stored dict ``{"scored", "model"}``."""
        return {"scored": self.scored, "model": self.model}


@dataclass(frozen=True)
class SelectOutput:
    """The crops the round selected, in order, and the strategy that chose them."""

    selected: tuple[int, ...]
    strategy: str

    def as_dict(self) -> Json:
        """Return the stored dict ``{"selected": [crop ids], "strategy"}``."""
        return {"selected": list(self.selected), "strategy": self.strategy}


@dataclass(frozen=True)
class PushOutput:
    """How many crops went to the annotator.

    ``project_id`` (with ``recovered`` and the ``tasks`` ids) only when they went to a Label
    Studio project; crops queued in the pool alone have none.
    """

    pushed: int
    project_id: int | None = None
    recovered: int = 0
    tasks: tuple[int, ...] = ()

    def as_dict(self) -> Json:
        """Return the stored dict: ``{"pushed"}``, plus the Label Studio project's facts."""
        if self.project_id is None:
            return {"pushed": self.pushed}
        return {
            "project_id": self.project_id,
            "pushed": self.pushed,
            "recovered": self.recovered,
            "tasks": list(self.tasks),
        }
