"""What a project holds, as typed records for `activeseg status`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.models import CropStatus
from activeseg.pool.records import VolumeInfo
from activeseg.workflows.project import Project


@dataclass(frozen=True)
class VolumeSummary:
    """A registered volume as the status shows it."""

    name: str
    shape: tuple[int, ...]
    split: str
    channels: int
    has_ground_truth: bool

    @classmethod
    def of(cls, volume: VolumeInfo) -> VolumeSummary:
        """Return the summary of a pool volume record."""
        return cls(
            volume.name, tuple(volume.shape), volume.split, volume.channels, volume.has_ground_truth
        )

    def as_dict(self) -> dict[str, Any]:
        """Return the volume as JSON-able data."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "split": self.split,
            "channels": self.channels,
            "has_ground_truth": self.has_ground_truth,
        }


@dataclass(frozen=True)
class ProjectStatus:
    """A project's volumes, crop counts (by status, in total and by split) and rounds."""

    project: Path
    volumes: tuple[VolumeSummary, ...]
    crops_by_split: dict[str, dict[str, int]]
    crop_statuses: tuple[str, ...]
    rounds: int

    @property
    def crops(self) -> dict[str, int]:
        """Return the number of crops in each status over all splits."""
        return {
            s: sum(counts.get(s, 0) for counts in self.crops_by_split.values())
            for s in self.crop_statuses
        }

    def as_dict(self) -> dict[str, Any]:
        """Return the status as JSON-able data (the keys of `activeseg status --json`)."""
        return {
            "project": str(self.project),
            "volumes": [v.as_dict() for v in self.volumes],
            "crops": self.crops,
            "crops_by_split": {split: dict(c) for split, c in self.crops_by_split.items()},
            "crop_statuses": list(self.crop_statuses),
            "rounds": self.rounds,
        }


def project_status(project: Project) -> ProjectStatus:
    """Return the project's volumes, crop counts by split and status, and number of rounds."""
    with project.session() as session:
        volumes = pool_volumes.list_volumes(session)
        by_split = pool_volumes.crop_counts(session)
        n_rounds = pool_rounds.count_rounds(session)
    return ProjectStatus(
        project=project.root,
        volumes=tuple(VolumeSummary.of(v) for v in volumes),
        crops_by_split=by_split,
        crop_statuses=tuple(s.value for s in CropStatus),
        rounds=n_rounds,
    )
