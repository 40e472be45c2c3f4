"""Plain, immutable records that repository functions return instead of ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from activeseg.core.effort import Effort

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class VolumeInfo:
    """A registered volume: where its zarr is and what it holds."""

    id: int
    name: str
    path: str
    split: str
    channels: int
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    has_ground_truth: bool
    source: str


@dataclass(frozen=True)
class CropInfo:
    """A candidate subvolume of a volume, with its place in the annotation life cycle."""

    id: int
    volume_id: int
    volume_name: str
    split: str
    origin: tuple[int, int, int]
    end: tuple[int, int, int]
    foreground: float
    status: str
    labeled_round: int | None
    label_path: str | None
    skip_reason: str | None = None

    @property
    def box(self) -> Box:
        """Return the crop as (z, y, x) slices into its volume."""
        return tuple(slice(a, b) for a, b in zip(self.origin, self.end, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Return the crop's (Z, Y, X) size."""
        return tuple(b - a for a, b in zip(self.origin, self.end, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class StageInfo:
    """One recorded stage of a round."""

    name: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class RoundInfo:
    """A round of the loop with its stages."""

    id: int
    number: int
    strategy: str
    batch_size: int
    config: str
    metrics: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None
    stages: tuple[StageInfo, ...] = ()
    abandoned: bool = False

    def stage(self, name: str) -> StageInfo | None:
        """Return the named stage, or None if it has not started."""
        return next((s for s in self.stages if s.name == name), None)


@dataclass(frozen=True)
class CheckpointInfo:
    """A trained model folder."""

    id: int
    round_id: int | None
    path: str
    kind: str
    steps: int
    labeled_crops: int
    created_at: datetime


@dataclass(frozen=True)
class ScoreInfo:
    """A crop's acquisition score in one round."""

    crop_id: int
    score: float
    rank: int | None
    selected: bool
    parts: dict[str, Any]


@dataclass(frozen=True)
class TaskInfo:
    """A crop pushed to Label Studio."""

    id: int
    crop_id: int
    round_id: int | None
    ls_project_id: int | None
    ls_task_id: int | None
    slices: tuple[int, ...]
    pushed: dict[str, Any]
    active: bool


@dataclass(frozen=True)
class AnnotationInfo:
    """One ingested version of a Label Studio annotation."""

    id: int
    task_id: int
    ls_annotation_id: int | None
    annotator: str | None
    lead_time: float | None
    updated_at: datetime
    label_path: str | None
    was_cancelled: bool
    current: bool
    status: str | None = None


# What an annotation cost the annotator, as the ledger stores it (see core.effort.Effort).
AnnotationCost = Effort


@dataclass(frozen=True)
class CachedScore:
    """A crop's score parts computed by one model, and where its maps were written."""

    crop_id: int
    model: str
    parts: dict[str, Any]
    analysis: str | None
