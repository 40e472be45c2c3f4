"""Instance segmentations that may overlap, stored compactly.

Neurons in MCFO data overlap (FISBe stores one channel per neuron). A dense stack of N masks
is wasteful for large volumes, so everywhere in activeseg an instance segmentation is a label
image holding one id per voxel plus a short table of the extra memberships of overlapping
voxels. ``to_stack``/``from_stack`` convert to and from the dense form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from activeseg.errors import InputError

LabelArray = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class Instances:
    """A possibly overlapping instance segmentation of a (Z, Y, X) volume.

    labels: (Z, Y, X) uint32, 0 = background; where instances overlap, the smallest id.
    overlaps: (K, 4) int64 rows ``(z, y, x, id)``: every further instance a voxel belongs to.
    """

    labels: LabelArray
    overlaps: npt.NDArray[np.int64]

    @classmethod
    def from_labels(cls, labels: npt.ArrayLike) -> Instances:
        """Return non-overlapping instances from a (Z, Y, X) integer label image."""
        array = np.asarray(labels)
        if array.dtype.kind not in "ui" or array.ndim != 3:
            raise InputError(
                f"labels must be a 3-D integer array, got {array.ndim}-D {array.dtype}"
            )
        if array.size and array.min() < 0:
            raise InputError("labels must not be negative")
        return cls(array.astype(np.uint32, copy=False), np.zeros((0, 4), np.int64))

    @classmethod
    def from_stack(cls, stack: npt.ArrayLike, ids: npt.ArrayLike | None = None) -> Instances:
        """Return instances from a (N, Z, Y, X) stack of masks; mask k gets ``ids[k]`` (k+1)."""
        masks = np.asarray(stack).astype(bool, copy=False)
        if masks.ndim != 4:
            raise InputError(f"an instance stack must be 4-D (N, Z, Y, X), got {masks.ndim}-D")
        id_list = np.arange(1, len(masks) + 1) if ids is None else np.asarray(ids)
        order = np.argsort(id_list)
        labels = np.zeros(masks.shape[1:], np.uint32)
        extra = []
        for k in order[::-1]:  # descending, so the smallest id ends up in `labels`
            taken = masks[k] & (labels > 0)
            coords = np.argwhere(taken)
            extra.append(np.column_stack([coords, np.full(len(coords), labels[taken])]))
            labels[masks[k]] = id_list[k]
        overlaps = np.concatenate(extra) if extra else np.zeros((0, 4))
        return cls(labels, overlaps.astype(np.int64).reshape(-1, 4))

    @property
    def shape(self) -> tuple[int, ...]:
        """Return the (Z, Y, X) shape."""
        return tuple(self.labels.shape)

    def ids(self) -> npt.NDArray[np.uint32]:
        """Return the sorted instance ids present (0 excluded)."""
        ids = np.union1d(np.unique(self.labels), self.overlaps[:, 3].astype(np.uint32))
        return ids[ids > 0].astype(np.uint32)

    def mask(self, instance_id: int) -> npt.NDArray[np.bool_]:
        """Return the (Z, Y, X) boolean mask of one instance, overlaps included."""
        mask = self.labels == instance_id
        rows = self.overlaps[self.overlaps[:, 3] == instance_id]
        mask[rows[:, 0], rows[:, 1], rows[:, 2]] = True
        return mask

    def to_stack(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.bool_]]:
        """Return ``(ids, stack)``: the ids and a (N, Z, Y, X) boolean stack of their masks."""
        ids = self.ids()
        stack = np.zeros((len(ids), *self.labels.shape), bool)
        for k, instance_id in enumerate(ids):
            stack[k] = self.mask(int(instance_id))
        return ids, stack

    def overlap_mask(self) -> npt.NDArray[np.bool_]:
        """Return a (Z, Y, X) mask of voxels that belong to more than one instance."""
        mask = np.zeros(self.labels.shape, bool)
        mask[self.overlaps[:, 0], self.overlaps[:, 1], self.overlaps[:, 2]] = True
        return mask

    def crop(self, box: tuple[slice, slice, slice]) -> Instances:
        """Return the instances inside a (z, y, x) box of slices with step 1, re-based."""
        starts = np.array([s.start or 0 for s in box])
        stops = np.array(
            [s.stop if s.stop is not None else n for s, n in zip(box, self.shape, strict=True)]
        )
        rows = self.overlaps
        inside = np.all((rows[:, :3] >= starts) & (rows[:, :3] < stops), axis=1)
        moved = rows[inside].copy()
        moved[:, :3] -= starts
        return Instances(self.labels[box], moved)
