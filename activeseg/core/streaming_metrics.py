"""Voxel uncertainty quality accumulated z-slab by z-slab, for volumes too large for memory.

:func:`activeseg.workflows.evaluate.uncertainty_report` judges a volume's voxel uncertainty
(mutual information) against its errors with whole-volume arrays. Here the same quantities
are summed over z-slabs into small tables, so memory does not grow with the volume:

- the voxel error AUROC from histograms of the uncertainty of wrong and right voxels
  (AUROC_BINS bins over [0, 1] bits; voxels in one bin count as tied);
- the uncertainty quantiles that set the PAvPU thresholds, from the same histograms (the
  lower edge of the bin holding the quantile);
- PAvPU on patches of z-slices exactly as :func:`activeseg.core.metrics.pavpu` (patches never
  cross a slab, so per-patch sums are exact);
- ECE and the reliability diagram of the mean foreground from per-bin sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from activeseg.core import metrics
from activeseg.errors import InputError

AUROC_BINS = 2**16
PAVPU_QUANTILES = (0.5, 0.8, 0.9, 0.95, 0.99)
RELIABILITY_BINS = 15


@dataclass
class UncertaintyTables:
    """Sums over the slabs seen so far (see the module docstring)."""

    grid: tuple[int, int] = (4, 4)
    wrong: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(AUROC_BINS, np.int64))
    right: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(AUROC_BINS, np.int64))
    patches: list[npt.NDArray[np.float64]] = field(default_factory=list)
    counts: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.zeros((3, RELIABILITY_BINS), np.float64)
    )

    def add(
        self,
        mapped: npt.NDArray[np.integer],
        truth: npt.NDArray[np.integer],
        uncertainty: npt.NDArray[np.floating],
        foreground: npt.NDArray[np.floating],
        consensus: npt.NDArray[np.integer],
    ) -> None:
        """Add one (z, Y, X) slab: mapped = the true id each voxel's predicted instance stands
        for (see evaluate._matched_truth), truth = true ids, uncertainty = voxel MI in bits,
        foreground = mean foreground probability, consensus = predicted ids."""
        if not (mapped.shape == truth.shape == uncertainty.shape == foreground.shape):
            raise InputError(f"slabs of different shapes: {mapped.shape}, {truth.shape}")
        wrong = mapped != truth
        bins = np.clip((uncertainty * AUROC_BINS).astype(np.int64), 0, AUROC_BINS - 1)
        self.wrong += np.bincount(bins[wrong], minlength=AUROC_BINS)
        self.right += np.bincount(bins[~wrong], minlength=AUROC_BINS)
        relevant = (consensus > 0) | (truth > 0)
        self.patches.append(
            np.stack(
                [
                    _patch_means(relevant.astype(np.float32), self.grid),
                    _patch_means((~wrong & relevant).astype(np.float32), self.grid),
                    _patch_means(uncertainty.astype(np.float32), self.grid),
                ]
            )
        )
        self._add_reliability(np.asarray(foreground, np.float64), truth > 0)

    def _add_reliability(self, p: npt.NDArray[np.float64], target: npt.NDArray[np.bool_]) -> None:
        confidence, correct = np.maximum(p, 1 - p).ravel(), ((p >= 0.5) == target).ravel()
        edges = np.linspace(0.5, 1.0, RELIABILITY_BINS + 1)
        which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)
        self.counts[0] += np.bincount(which, minlength=RELIABILITY_BINS)
        self.counts[1] += np.bincount(which, weights=correct, minlength=RELIABILITY_BINS)
        self.counts[2] += np.bincount(which, weights=confidence, minlength=RELIABILITY_BINS)

    def voxel_auroc(self) -> float:
        """Return the AUROC of the uncertainty for detecting wrong voxels (ties count half)."""
        n_wrong, n_right = int(self.wrong.sum()), int(self.right.sum())
        if n_wrong == 0 or n_right == 0:
            return float("nan")
        right_below = np.cumsum(self.right) - self.right
        above = (self.wrong * (right_below + 0.5 * self.right)).sum()
        return float(above / (n_wrong * n_right))

    def thresholds(self) -> npt.NDArray[np.float64]:
        """Return the PAVPU_QUANTILES of the uncertainty (lower edges of their bins)."""
        cumulative = np.cumsum(self.wrong + self.right)
        wanted = np.asarray(PAVPU_QUANTILES) * cumulative[-1]
        return np.searchsorted(cumulative, wanted, side="left") / AUROC_BINS

    def pavpu(self) -> metrics.PavpuCurve:
        """Return the PAvPU curve over :meth:`thresholds`, as metrics.pavpu computes it."""
        counted, hits, unc = np.concatenate(self.patches, axis=1)
        # One voxel per patch: pavpu's patch means of these are the patches' own values.
        return metrics.pavpu(
            hits >= 0.5 * counted,
            unc,
            self.thresholds(),
            grid=(counted.shape[1], counted.shape[2]),
            relevant=counted > 0,
        )

    def reliability(self) -> metrics.Reliability:
        """Return the reliability diagram of the mean foreground (top-label, 15 bins)."""
        edges = np.linspace(0.5, 1.0, RELIABILITY_BINS + 1)
        counts, correct, confidence = self.counts
        with np.errstate(invalid="ignore", divide="ignore"):
            return metrics.Reliability(
                centers=(edges[:-1] + edges[1:]) / 2,
                accuracy=np.where(counts > 0, correct / counts, np.nan),
                confidence=np.where(counts > 0, confidence / counts, np.nan),
                counts=counts.astype(np.int64),
            )

    def ece(self) -> float:
        """Return the expected calibration error of the mean foreground."""
        diagram = self.reliability()
        filled = diagram.counts > 0
        if not filled.any():
            return float("nan")
        gap = np.abs(diagram.accuracy[filled] - diagram.confidence[filled])
        return float((diagram.counts[filled] * gap).sum() / diagram.counts.sum())


def _patch_means(volume: npt.NDArray[np.float32], grid: tuple[int, int]) -> npt.NDArray[np.float64]:
    """Return (z, gy, gx) means of a (z, Y, X) slab over a gy x gx grid of patches per slice,
    with the patch edges of :func:`activeseg.core.metrics.pavpu`."""
    _, ny, nx = volume.shape
    y_edges = np.linspace(0, ny, grid[0] + 1).round().astype(int)
    x_edges = np.linspace(0, nx, grid[1] + 1).round().astype(int)
    sums = np.add.reduceat(
        np.add.reduceat(volume, y_edges[:-1], axis=1, dtype=np.float64), x_edges[:-1], axis=2
    )
    return np.asarray(sums / (np.diff(y_edges)[:, None] * np.diff(x_edges)[None, :]))
