"""What an annotation cost the annotator, in the annotator's own units.

A task shows some z-slices of a crop with the model's instances on them (the pre-annotation);
the annotator hands back the labels of those slices. The cost is what it took to get from one
to the other: the slices looked at, the voxels repainted, and the instance edits (neurons
added, false ones removed, merged ones split, split ones merged). Without a pre-annotation
everything is painted from scratch: every labeled voxel is repainted, every neuron added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

# A predicted and a submitted instance are the same neuron when this share of the smaller of
# the two lies inside the other.
LINK_OVERLAP = 0.5


@dataclass(frozen=True)
class Effort:
    """The cost of one annotation: slices shown, voxels shown and repainted, instance edits.

    ``split``: extra pieces cut out of predicted instances that covered several neurons;
    ``merged``: predicted pieces joined into one neuron.
    """

    slices: int
    voxels: int
    repainted: int
    added: int
    removed: int
    split: int
    merged: int

    @property
    def edits(self) -> int:
        """Return the instance edits: added + removed + split + merged."""
        return self.added + self.removed + self.split + self.merged

    def as_dict(self) -> dict[str, int]:
        """Return the effort as JSON-able data (with ``edits``)."""
        return {**asdict(self), "edits": self.edits}


def repainted_voxels(predicted: npt.NDArray[np.integer], truth: npt.NDArray[np.integer]) -> int:
    """Return the voxels an annotator must repaint to turn ``predicted`` into ``truth``.

    Each predicted id is matched to the submitted id it overlaps most (ids are arbitrary, so a
    neuron predicted under another id costs nothing); voxels whose matched id differs from the
    submitted one need a correction. A predicted instance that matches only background is
    deleted whole (an instance edit, see :func:`annotation_effort`), not repainted.
    """
    mapping = np.zeros(int(predicted.max(initial=0)) + 1, np.int64)
    fg = predicted > 0
    if fg.any():
        pairs, counts = np.unique(np.stack([predicted[fg], truth[fg]]), axis=1, return_counts=True)
        for (p, t), _ in sorted(zip(pairs.T.tolist(), counts, strict=True), key=lambda x: x[1]):
            mapping[p] = t
    return int((mapping[predicted] != truth).sum())


def annotation_effort(
    predicted: npt.NDArray[np.integer] | None, submitted: npt.NDArray[np.integer]
) -> Effort:
    """Return what turning the pre-annotation into the submitted labels cost.

    predicted, submitted: (S, Y, X) instance ids on the S shown slices (0 background); ids are
    kept across slices, so an instance is one neuron over all of them. ``predicted`` None: no
    pre-annotation (everything painted from scratch).
    """
    if predicted is None:
        predicted = np.zeros_like(submitted)
    if predicted.shape != submitted.shape:
        raise ValueError(f"pre-annotation {predicted.shape} and labels {submitted.shape} differ")
    p_ids, p_inv = np.unique(predicted, return_inverse=True)
    t_ids, t_inv = np.unique(submitted, return_inverse=True)
    overlap = np.zeros((len(p_ids), len(t_ids)), np.int64)
    np.add.at(overlap, (p_inv.ravel(), t_inv.ravel()), 1)
    p_size, t_size = overlap.sum(axis=1), overlap.sum(axis=0)
    p_fg, t_fg = p_ids > 0, t_ids > 0
    links = overlap >= LINK_OVERLAP * np.minimum(p_size[:, None], t_size[None, :])
    links &= (overlap > 0) & p_fg[:, None] & t_fg[None, :]
    p_degree, t_degree = links.sum(axis=1)[p_fg], links.sum(axis=0)[t_fg]
    return Effort(
        slices=int(submitted.shape[0]),
        voxels=int(submitted.size),
        repainted=repainted_voxels(predicted, submitted),
        added=int((t_degree == 0).sum()),
        removed=int((p_degree == 0).sum()),
        split=int(np.maximum(p_degree - 1, 0).sum()),
        merged=int(np.maximum(t_degree - 1, 0).sum()),
    )
