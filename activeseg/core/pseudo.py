"""Sparse pseudo-labels from the model's own confident predictions on unlabeled crops.

Semi-supervised use of the unlabeled pool: the consensus instances of the current model, kept
only where its epistemic uncertainty (mutual information over the samples) is low and the
voxel is confidently inside a consensus instance or confidently background. Everything else
is left out of the mask, so the loss ignores it, as it ignores the unlabeled slices of a
human label. Pseudo-labels are derived from one model: a new model gives new ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PseudoLabels:
    """labels: (Z, Y, X) uint32 instance ids, 0 background; mask: (Z, Y, X) bool, the voxels
    that count (confident ones only)."""

    labels: npt.NDArray[np.uint32]
    mask: npt.NDArray[np.bool_]

    @property
    def coverage(self) -> float:
        """Return the share of voxels that count."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def pseudo_labels(
    consensus: npt.NDArray[np.integer],
    mutual_information: npt.NDArray[np.floating],
    foreground: npt.NDArray[np.floating],
    *,
    max_uncertainty: float,
    threshold: float,
    human: npt.NDArray[np.bool_] | None = None,
) -> PseudoLabels:
    """Return the confident part of a model's segmentation of one crop as sparse labels.

    consensus: (Z, Y, X) instance ids of the sample mean; mutual_information: (Z, Y, X)
    epistemic uncertainty; foreground: (Z, Y, X) mean foreground probability; threshold: the
    clustering's foreground threshold (background is confident below 1 - threshold).
    human: (Z, Y, X) voxels a person annotated: never pseudo-labeled (their label stands).
    """
    if not (consensus.shape == mutual_information.shape == foreground.shape):
        raise ValueError(
            f"consensus {consensus.shape}, uncertainty {mutual_information.shape} and "
            f"foreground {foreground.shape} differ"
        )
    confident = mutual_information <= max_uncertainty
    inside = (consensus > 0) & (foreground >= threshold)
    outside = (consensus == 0) & (foreground <= 1.0 - threshold)
    mask = confident & (inside | outside)
    if human is not None:
        mask &= ~human
    labels = np.where(mask & inside, consensus, 0).astype(np.uint32)
    return PseudoLabels(labels, mask)
