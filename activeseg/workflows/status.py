"""What a project holds, as plain data for `activeseg status`."""

from __future__ import annotations

from typing import Any

from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.models import CropStatus
from activeseg.workflows.project import Project


def project_status(project: Project) -> dict[str, Any]:
    """Return volumes, crop counts (total by status, and by split) and the number of rounds."""
    with project.session() as session:
        volumes = pool_volumes.list_volumes(session)
        by_split = pool_volumes.crop_counts(session)
        n_rounds = pool_rounds.count_rounds(session)
    statuses = [s.value for s in CropStatus]
    totals = {s: sum(counts[s] for counts in by_split.values()) for s in statuses}
    return {
        "project": str(project.root),
        "volumes": [
            {
                "name": v.name,
                "shape": list(v.shape),
                "split": v.split,
                "channels": v.channels,
                "has_ground_truth": v.has_ground_truth,
            }
            for v in volumes
        ],
        "crops": totals,
        "crops_by_split": by_split,
        "crop_statuses": statuses,
        "rounds": n_rounds,
    }
