"""Instance and uncertainty metrics: arrays in, numbers out.

Instance metrics compare a prediction with ground truth, both :class:`Instances` (so either
may overlap). Every count comes from one pass over the foreground voxels plus the overlap rows;
skeletons are computed per instance inside its bounding box. Nothing dense of shape
(N, Z, Y, X) is ever built, so a 400 x 700 x 700 FISBe volume is evaluated in seconds.

- **AP** (stardist / cellpose convention): per IoU threshold t in 0.5:0.05:0.95, a one-to-one
  matching maximising the number of pairs with IoU >= t (Hungarian, ties broken by IoU, as
  stardist); ``AP_t = TP / (TP + FP + FN)``; mAP is the mean over the thresholds.
- **FISBe** (Mais et al., CVPR 2024; Kainmueller lab's evaluation code) on 3-D skeletons
  (``skimage.morphology.skeletonize``): clPrecision(p, g) = fraction of p's skeleton inside
  g's mask; clRecall(p, g) = fraction of g's skeleton inside p's mask; clDice = their harmonic
  mean.

  - avF1: greedy one-to-one matching by clDice (highest first); for t in 0.1:0.1:0.9 a pair is a
    TP if clDice > t; ``F1_t = 2TP / (2TP + FP + FN)``; averaged over t.
  - C: each prediction goes to the GT with the highest clPrecision, if that beats the fraction
    of its skeleton in background; per GT, the clRecall of the union of its predictions;
    mean over GTs.
  - S = 0.5 avF1 + 0.5 C.
  - FS / FM: greedy many-to-many matching by clRecall with consumption (FISBe): repeatedly the
    pair with the highest current clRecall above the threshold (0.05 for FS, 0.1 for FM) is
    matched; then the GT's skeleton loses the voxels of that prediction and the prediction loses
    the voxels of that GT, and the other pairs' clRecall is recomputed on what is left (both
    consumptions applied to every pair). ``FS = sum_gt max(0, #preds - 1)``,
    ``FM = sum_pred max(0, #gts - 1)``.
  - ``fisbe=True`` drops predicted instances of at most 800 voxels first (FISBe's filter).
  - ``partly=True`` (sparsely labeled GT): an unmatched prediction is a FP only if more of its
    skeleton lies in one GT instance than in no GT instance (FISBe's rule) or, given an
    ``annotated`` mask of the region the annotator labeled, only if most of its skeleton lies
    inside that region.
- **VOI** (split = H(pred | gt), merge = H(gt | pred), in bits) and **adapted Rand error**
  (GT background ignored) of the label images (overlap rows ignored), from one contingency
  table; they agree with ``skimage.metrics``.

Over several volumes, TP/FP/FN are summed before AP and F1 are computed, C is the mean over all
GT instances, FS/FM are summed and VOI/ARAND averaged. Undefined ratios (0/0) are NaN.

Uncertainty metrics: PAvPU (Mukhoti & Gal 2018), AUROC, ECE and reliability-diagram data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from skimage.morphology import skeletonize

from activeseg.core.instances import Instances
from activeseg.errors import InputError

logger = logging.getLogger(__name__)

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
CLDICE_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
FISBE_MAX_REMOVED_SIZE = 800
FALSE_SPLIT_THRESHOLD = 0.05
FALSE_MERGE_THRESHOLD = 0.1

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# ---------------------------------------------------------------- memberships and skeletons


@dataclass(frozen=True)
class _Members:
    """Every (voxel, instance) membership of one segmentation; instances as indices 0..n-1.

    ids: (n,) uint32 sorted instance ids; keys/index: (M,) int64 linear voxel index and
    instance index of each membership; flat: (V,) the raveled label image; extra_keys /
    extra_index: the overlap rows, sorted by voxel.
    """

    ids: npt.NDArray[np.uint32]
    keys: IntArray
    index: IntArray
    flat: npt.NDArray[np.uint32]
    extra_keys: IntArray
    extra_index: IntArray

    def index_of(self, values: npt.NDArray[np.integer]) -> IntArray:
        """Return the instance index of each id in ``values`` (any shape), -1 if absent."""
        if len(self.ids) == 0:
            return np.full(np.shape(values), -1, np.int64)
        position = np.searchsorted(self.ids, values).clip(0, len(self.ids) - 1)
        return np.where(self.ids[position] == values, position, -1).astype(np.int64)

    def at(self, keys: IntArray) -> tuple[IntArray, IntArray]:
        """Return (query position, instance index) for every membership of the voxels ``keys``."""
        primary = self.index_of(self.flat[keys])
        hit = np.flatnonzero(primary >= 0)
        lo = np.searchsorted(self.extra_keys, keys, side="left")
        hi = np.searchsorted(self.extra_keys, keys, side="right")
        query, row = _expand_ranges(lo, hi)
        return (
            np.concatenate([hit, query]),
            np.concatenate([primary[hit], self.extra_index[row]]),
        )

    def sizes(self) -> IntArray:
        """Return (n,) the voxel count of each instance, overlaps included."""
        return np.bincount(self.index, minlength=len(self.ids)).astype(np.int64)


def _expand_ranges(lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """Return (owner, item): every item in [lo[i], hi[i]) paired with its owner i."""
    counts = hi - lo
    owner = np.repeat(np.arange(len(lo)), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    return owner, starts + np.arange(int(counts.sum()))


def _members(instances: Instances, *, drop_up_to: int = 0) -> _Members:
    """Return the memberships of ``instances``, without instances of <= ``drop_up_to`` voxels."""
    _check_instances(instances)
    flat = instances.labels.reshape(-1)
    primary = np.flatnonzero(flat)
    extra = np.ravel_multi_index(tuple(instances.overlaps[:, :3].T), instances.shape)
    order = np.argsort(extra, kind="stable")
    extra_keys, extra_ids = extra[order].astype(np.int64), instances.overlaps[order, 3]
    ids, index = np.unique(np.concatenate([flat[primary], extra_ids]), return_inverse=True)
    kept = np.bincount(index, minlength=len(ids)) > drop_up_to
    index = np.where(kept, np.cumsum(kept) - 1, -1)[index]
    keep = index >= 0
    is_extra = slice(len(primary), None)
    return _Members(
        ids=ids[kept].astype(np.uint32),
        keys=np.concatenate([primary, extra_keys])[keep],
        index=index[keep],
        flat=flat,
        extra_keys=extra_keys[keep[is_extra]],
        extra_index=index[is_extra][keep[is_extra]],
    )


def _check_instances(instances: Instances) -> None:
    """Raise InputError unless the label image is 3-D and the overlap rows fit inside it."""
    rows = instances.overlaps
    if instances.labels.ndim != 3 or rows.ndim != 2 or rows.shape[1] != 4:
        raise InputError(
            f"instances need (Z, Y, X) labels and (K, 4) overlaps, got "
            f"{instances.labels.shape} and {rows.shape}"
        )
    inside = (rows[:, :3] >= 0) & (rows[:, :3] < np.array(instances.shape))
    if not inside.all() or (rows[:, 3] <= 0).any():
        raise InputError("overlap rows must lie inside the volume and carry ids > 0")


def _skeletons(members: _Members, shape: tuple[int, ...]) -> tuple[IntArray, IntArray]:
    """Return (keys, owner): the skeleton voxels of every instance and the instance of each.

    Each instance is skeletonized alone inside its bounding box (padded by one voxel), so the
    cost follows the instance, not the volume.
    """
    order = np.argsort(members.index, kind="stable")
    bounds = np.concatenate(
        [[0], np.cumsum(np.bincount(members.index, minlength=len(members.ids)))]
    )
    keys, owners = [], []
    for instance in range(len(members.ids)):
        voxels = members.keys[order[bounds[instance] : bounds[instance + 1]]]
        skeleton = _skeleton_keys(voxels, shape)
        keys.append(skeleton)
        owners.append(np.full(len(skeleton), instance, np.int64))
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(owners)


def _skeleton_keys(voxels: IntArray, shape: tuple[int, ...]) -> IntArray:
    """Return the linear keys of the 3-D skeleton of the instance made of the voxels ``voxels``.

    skimage's 3-D thinning deletes some thin, even-sided shapes entirely (a bar of 2 x 2 or
    4 x 3 voxels leaves nothing); such an instance is its own skeleton, so that it can still
    be matched.
    """
    coords = np.stack(np.unravel_index(voxels, shape), axis=1)
    low = coords.min(axis=0)
    mask = np.zeros(tuple(coords.max(axis=0) - low + 3), bool)
    mask[tuple((coords - low + 1).T)] = True
    thinned = skeletonize(mask)
    skeleton = np.argwhere(thinned if thinned.any() else mask) + low - 1
    return np.ravel_multi_index(tuple(skeleton.T), shape).astype(np.int64)


# ---------------------------------------------------------------- per-volume tables


@dataclass(frozen=True)
class _PairTable:
    """What matching needs about one volume: P predictions x G ground-truth instances.

    iou/cl_precision/cl_recall: (P, G);
    pred_background: (P,) fraction of each prediction's skeleton outside every GT;
    pred_unannotated: (P,) fraction outside the annotated region, None without a mask;
    gt_points: (Q,) GT instance owning each GT skeleton point; point_pred / point_gt: sparse
    (point, instance) memberships of those points in prediction / GT masks.
    """

    iou: FloatArray
    cl_precision: FloatArray
    cl_recall: FloatArray
    pred_background: FloatArray
    pred_unannotated: FloatArray | None
    gt_points: IntArray
    point_pred: tuple[IntArray, IntArray]
    point_gt: tuple[IntArray, IntArray]

    @property
    def cl_dice(self) -> FloatArray:
        """Return (P, G) clDice, the harmonic mean of clPrecision and clRecall (0 if both 0)."""
        total = self.cl_precision + self.cl_recall
        product = 2 * self.cl_precision * self.cl_recall
        return np.divide(product, total, out=np.zeros_like(total), where=total > 0)


def _pair_table(
    pred: _Members, gt: _Members, shape: tuple[int, ...], annotated: BoolArray | None
) -> _PairTable:
    """Return the pair table of predictions ``pred`` against ground truth ``gt``.

    annotated: (Z, Y, X) bool region the annotator labeled, or None.
    """
    pred_keys, pred_owner = _skeletons(pred, shape)
    gt_keys, gt_owner = _skeletons(gt, shape)
    cl_precision, pred_background = _skeleton_fractions(pred_keys, pred_owner, len(pred.ids), gt)
    gt_in_pred, _ = _skeleton_fractions(gt_keys, gt_owner, len(gt.ids), pred)
    return _PairTable(
        iou=_iou(pred, gt),
        cl_precision=cl_precision,
        cl_recall=gt_in_pred.T,
        pred_background=pred_background,
        pred_unannotated=_outside_fraction(pred_keys, pred_owner, len(pred.ids), annotated),
        gt_points=gt_owner,
        point_pred=pred.at(gt_keys),
        point_gt=gt.at(gt_keys),
    )


def _iou(pred: _Members, gt: _Members) -> FloatArray:
    """Return the (P, G) intersection over union of every prediction with every GT instance."""
    query, gt_index = gt.at(pred.keys)
    intersection = _pair_counts(pred.index[query], gt_index, len(pred.ids), len(gt.ids))
    union = pred.sizes()[:, None] + gt.sizes()[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros(union.shape), where=union > 0)


def _pair_counts(first: IntArray, second: IntArray, n_first: int, n_second: int) -> FloatArray:
    """Return the (n_first, n_second) table counting each (first[i], second[i]) pair."""
    counts = np.bincount(first * n_second + second, minlength=n_first * n_second)
    return counts.reshape(n_first, n_second).astype(np.float64)


def _skeleton_fractions(
    keys: IntArray, owner: IntArray, n_owners: int, other: _Members
) -> tuple[FloatArray, FloatArray]:
    """Return (A, B) the fraction of each skeleton inside each instance of ``other``, and (A,)
    the fraction inside none of them.

    keys, owner: (Q,) skeleton voxels of A instances and the instance owning each.
    """
    query, index = other.at(keys)
    inside = _pair_counts(owner[query], index, n_owners, len(other.ids))
    length = np.maximum(np.bincount(owner, minlength=n_owners), 1)
    in_none = np.ones(len(keys), bool)
    in_none[query] = False
    return inside / length[:, None], np.bincount(
        owner, weights=in_none, minlength=n_owners
    ) / length


def _outside_fraction(
    keys: IntArray, owner: IntArray, n_pred: int, annotated: BoolArray | None
) -> FloatArray | None:
    """Return (P,) the fraction of each prediction's skeleton outside the annotated region.

    keys, owner: (Q,) skeleton voxels and their prediction; annotated: (Z, Y, X) bool or None
    (then None).
    """
    if annotated is None:
        return None
    outside = ~annotated.reshape(-1)[keys]
    length = np.maximum(np.bincount(owner, minlength=n_pred), 1)
    return np.bincount(owner, weights=outside, minlength=n_pred) / length


# ---------------------------------------------------------------- matching


def _hungarian_matches(iou: FloatArray, threshold: float) -> BoolArray:
    """Return (P,) bool: prediction matched one-to-one with IoU >= threshold.

    iou: (P, G). The matching maximises the number of pairs at or above the threshold, then
    their IoU (stardist's cost).
    """
    matched = np.zeros(iou.shape[0], bool)
    if iou.size == 0:
        return matched
    hit = iou >= threshold
    rows, cols = linear_sum_assignment(-hit.astype(np.float64) - iou / (2 * min(iou.shape)))
    matched[rows[hit[rows, cols]]] = True
    return matched


def _greedy_matches(score: FloatArray) -> FloatArray:
    """Return (P,) the score of each prediction's greedy one-to-one match, -inf if none.

    score: (P, G). Pairs are taken by decreasing score (ties: lower GT, then lower prediction
    index first, as FISBe), skipping pairs whose prediction or GT is taken. Greedy matching at
    a threshold t is the prefix of this one with scores above t, so one pass serves every t.
    """
    pred, gt = np.nonzero(score > 0)
    order = np.lexsort((pred, gt, -score[pred, gt]))
    best = np.full(score.shape[0], -np.inf)
    gt_taken = np.zeros(score.shape[1], bool)
    for p, g in zip(pred[order], gt[order], strict=True):
        if best[p] == -np.inf and not gt_taken[g]:
            best[p] = score[p, g]
            gt_taken[g] = True
    return best


def _tp_fp_fn(matched: BoolArray, n_gt: int, may_be_fp: BoolArray) -> IntArray:
    """Return (3,) int64 TP, FP, FN from (P,) matched predictions and (P,) may_be_fp."""
    tp = int(matched.sum())
    return np.array([tp, int((~matched & may_be_fp).sum()), n_gt - tp], np.int64)


def _coverage(table: _PairTable, n_gt: int) -> FloatArray:
    """Return (G,) per GT the clRecall of the union of the predictions assigned to it.

    A prediction is assigned to the GT with its highest clPrecision if that beats the fraction
    of its skeleton in background (FISBe's argmax with background first).
    """
    if n_gt == 0:
        return np.zeros(0)
    assigned: IntArray = np.full(table.cl_precision.shape[0], -1, np.int64)
    if table.cl_precision.size:
        best = table.cl_precision.max(axis=1)
        assigned = np.where(best > table.pred_background, table.cl_precision.argmax(axis=1), -1)
    point, pred = table.point_pred
    covered = np.zeros(len(table.gt_points), bool)
    covered[point[assigned[pred] == table.gt_points[point]]] = True
    length = np.maximum(np.bincount(table.gt_points, minlength=n_gt), 1)
    return np.bincount(table.gt_points, weights=covered, minlength=n_gt) / length


def _many_to_many(table: _PairTable, threshold: float) -> BoolArray:
    """Return (G, P) bool: the pairs matched by FISBe's greedy many-to-many clRecall matching.

    The best pair above ``threshold`` is matched, then consumed: the GT's skeleton loses the
    prediction's voxels and the prediction loses the GT's voxels; repeat on what is left.
    """
    n_pred, n_gt = table.cl_recall.shape
    matched = np.zeros((n_gt, n_pred), bool)
    if not (table.cl_recall > threshold).any():
        return matched
    owner = table.gt_points
    in_pred = _dense_members(table.point_pred, len(owner), n_pred)
    in_gt = _dense_members(table.point_gt, len(owner), n_gt)
    per_gt = np.eye(n_gt)[owner].T / np.maximum(np.bincount(owner, minlength=n_gt), 1)[:, None]
    gt_free = np.ones(len(owner), bool)
    pred_free = in_pred.copy()
    while True:
        recall = per_gt @ (gt_free[:, None] & pred_free)
        g, p = np.unravel_index(np.argmax(recall), recall.shape)
        if recall[g, p] <= threshold:
            return matched
        matched[g, p] = True
        gt_free &= ~((owner == g) & in_pred[:, p])
        pred_free[:, p] &= ~in_gt[:, g]


def _dense_members(pairs: tuple[IntArray, IntArray], n_points: int, n_instances: int) -> BoolArray:
    """Return (n_points, n_instances) bool from sparse (point, instance) pairs."""
    dense = np.zeros((n_points, n_instances), bool)
    dense[pairs[0], pairs[1]] = True
    return dense


# ---------------------------------------------------------------- label-image scores


def _contingency(pred: IntArray, gt: IntArray, shape: tuple[int, int], background: int) -> IntArray:
    """Return the (P+1, G+1) int64 contingency table; row/column 0 is background.

    pred, gt: (F,) instance index (-1 = background) at the voxels where either is foreground;
    background: the number of voxels where both are background.
    """
    n_pred, n_gt = shape
    table = np.bincount((pred + 1) * (n_gt + 1) + gt + 1, minlength=(n_pred + 1) * (n_gt + 1))
    table = table.reshape(n_pred + 1, n_gt + 1).astype(np.int64)
    table[0, 0] += background
    return table


def _voi(table: IntArray) -> tuple[float, float]:
    """Return (H(pred | gt), H(gt | pred)) in bits from a (P+1, G+1) contingency table."""
    joint = table / max(table.sum(), 1)
    return _conditional_entropy(joint), _conditional_entropy(joint.T)


def _conditional_entropy(joint: FloatArray) -> float:
    """Return H(row | column) in bits of an (R, C) joint distribution."""
    column = np.broadcast_to(joint.sum(axis=0, keepdims=True), joint.shape)
    nonzero = joint > 0
    return float(-(joint[nonzero] * np.log2(joint[nonzero] / column[nonzero])).sum())


def _adapted_rand(table: IntArray) -> float:
    """Return the adapted Rand error of a (P+1, G+1) contingency table, GT background ignored."""
    counts = table[:, 1:].astype(np.float64)
    total = counts.sum()
    pairs_together = (counts**2).sum() - total
    gt_pairs = (counts.sum(axis=0) ** 2).sum() - total
    pred_pairs = (counts.sum(axis=1) ** 2).sum() - total
    denominator = 0.5 * (gt_pairs + pred_pairs)
    return float(1.0 - pairs_together / denominator) if denominator > 0 else float("nan")


def contingency_table(pred_labels: npt.ArrayLike, gt_labels: npt.ArrayLike) -> IntArray:
    """Return the (P+1, G+1) int64 voxel-count table of two label images; index 0 = background.

    pred_labels, gt_labels: (Z, Y, X) non-negative integer label images (0 = background).
    Rows follow the sorted predicted ids, columns the sorted GT ids.
    """
    pred, gt = np.asarray(pred_labels).reshape(-1), np.asarray(gt_labels).reshape(-1)
    if pred.shape != gt.shape:
        raise InputError(f"label images differ in size: {pred.size} and {gt.size} voxels")
    voxels = np.flatnonzero((pred != 0) | (gt != 0))
    pred_ids, pred_index = np.unique(pred[voxels], return_inverse=True)
    gt_ids, gt_index = np.unique(gt[voxels], return_inverse=True)
    pred_index = pred_index - int(len(pred_ids) > 0 and pred_ids[0] == 0)
    gt_index = gt_index - int(len(gt_ids) > 0 and gt_ids[0] == 0)
    shape = (int(pred_index.max(initial=-1)) + 1, int(gt_index.max(initial=-1)) + 1)
    return _contingency(pred_index, gt_index, shape, pred.size - len(voxels))


def variation_of_information(
    pred_labels: npt.ArrayLike, gt_labels: npt.ArrayLike
) -> tuple[float, float]:
    """Return (split, merge) = (H(pred | gt), H(gt | pred)) in bits of two label images.

    pred_labels, gt_labels: (Z, Y, X) integer label images; background is a label like any.
    Equals ``skimage.metrics.variation_of_information(gt_labels, pred_labels)``.
    """
    return _voi(contingency_table(pred_labels, gt_labels))


def adapted_rand_error(pred_labels: npt.ArrayLike, gt_labels: npt.ArrayLike) -> float:
    """Return the adapted Rand error (0 = perfect) of two label images, GT background ignored.

    pred_labels, gt_labels: (Z, Y, X) integer label images.
    Equals ``skimage.metrics.adapted_rand_error(gt_labels, pred_labels)[0]``.
    """
    return _adapted_rand(contingency_table(pred_labels, gt_labels))


def _label_table(pred: _Members, gt: _Members) -> IntArray:
    """Return the contingency table of the two label images, removed predictions as background."""
    voxels = np.flatnonzero((pred.flat != 0) | (gt.flat != 0))
    shape = (len(pred.ids), len(gt.ids))
    background = pred.flat.size - len(voxels)
    return _contingency(
        pred.index_of(pred.flat[voxels]), gt.index_of(gt.flat[voxels]), shape, background
    )


# ---------------------------------------------------------------- per volume and summary


@dataclass(frozen=True)
class VolumeScores:
    """Additive results of one volume; :func:`summarize` turns a list of them into metrics.

    iou_counts: (10, 3) int64 TP, FP, FN per IoU threshold (``IOU_THRESHOLDS``).
    cldice_counts: (9, 3) int64 TP, FP, FN per clDice threshold (``CLDICE_THRESHOLDS``).
    coverage: (G,) float per-GT coverage (C before averaging).
    """

    iou_counts: IntArray
    cldice_counts: IntArray
    coverage: FloatArray
    false_splits: int
    false_merges: int
    voi_split: float
    voi_merge: float
    arand: float
    n_pred: int
    n_gt: int


def score_volume(
    pred: Instances,
    gt: Instances,
    *,
    fisbe: bool = False,
    partly: bool = False,
    annotated: npt.ArrayLike | None = None,
) -> VolumeScores:
    """Return the additive scores of one predicted volume against its ground truth.

    pred, gt: instances of the same (Z, Y, X) volume; either may overlap.
    fisbe: drop predicted instances of at most 800 voxels first.
    partly: the GT is sparse; an unmatched prediction is a FP only where labels exist (see the
        module docstring).
    annotated: (Z, Y, X) bool region the annotator labeled (neurons and background), or None
        (then FISBe's rule, from the GT instances alone); used if ``partly``.
    """
    if pred.shape != gt.shape:
        raise InputError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    mask = _annotated_mask(annotated, gt.shape) if partly else None
    p = _members(pred, drop_up_to=FISBE_MAX_REMOVED_SIZE if fisbe else 0)
    g = _members(gt)
    table = _pair_table(p, g, gt.shape, mask)
    may_be_fp = _may_be_false_positive(table, partly)
    label_table = _label_table(p, g)
    voi_split, voi_merge = _voi(label_table)
    logger.debug("scored a volume: %d predictions, %d GT instances", len(p.ids), len(g.ids))
    false_splits, false_merges = _false_splits_merges(table)
    return VolumeScores(
        iou_counts=_iou_counts(table, len(g.ids), may_be_fp),
        cldice_counts=_cldice_counts(table, len(g.ids), may_be_fp),
        coverage=_coverage(table, len(g.ids)),
        false_splits=false_splits,
        false_merges=false_merges,
        voi_split=voi_split,
        voi_merge=voi_merge,
        arand=_adapted_rand(label_table),
        n_pred=len(p.ids),
        n_gt=len(g.ids),
    )


def _annotated_mask(annotated: npt.ArrayLike | None, shape: tuple[int, ...]) -> BoolArray | None:
    """Return the (Z, Y, X) bool annotated mask, or None; raise InputError on a shape mismatch."""
    if annotated is None:
        return None
    mask = np.asarray(annotated).astype(bool, copy=False)
    if mask.shape != shape:
        raise InputError(f"annotated mask {mask.shape} does not match the volume {shape}")
    return mask


def _may_be_false_positive(table: _PairTable, partly: bool) -> BoolArray:
    """Return (P,) bool: an unmatched prediction counts as FP (always, unless ``partly``)."""
    n_pred, n_gt = table.cl_precision.shape
    if not partly:
        return np.ones(n_pred, bool)
    if table.pred_unannotated is not None:
        return table.pred_unannotated < 0.5
    if n_gt == 0:
        return np.zeros(n_pred, bool)
    return table.cl_precision.max(axis=1) > table.pred_background


def _iou_counts(table: _PairTable, n_gt: int, may_be_fp: BoolArray) -> IntArray:
    """Return (10, 3) int64 TP, FP, FN of the Hungarian IoU matching per IoU threshold."""
    return np.stack(
        [_tp_fp_fn(_hungarian_matches(table.iou, t), n_gt, may_be_fp) for t in IOU_THRESHOLDS]
    )


def _cldice_counts(table: _PairTable, n_gt: int, may_be_fp: BoolArray) -> IntArray:
    """Return (9, 3) int64 TP, FP, FN of the greedy clDice matching per clDice threshold."""
    best = _greedy_matches(table.cl_dice)
    return np.stack([_tp_fp_fn(best > t, n_gt, may_be_fp) for t in CLDICE_THRESHOLDS])


def _false_splits_merges(table: _PairTable) -> tuple[int, int]:
    """Return (FS, FM): sum over GTs of extra predictions, over predictions of extra GTs."""
    splits = _many_to_many(table, FALSE_SPLIT_THRESHOLD).sum(axis=1)
    merges = _many_to_many(table, FALSE_MERGE_THRESHOLD).sum(axis=0)
    return int(np.maximum(splits - 1, 0).sum()), int(np.maximum(merges - 1, 0).sum())


def summarize(scores: Sequence[VolumeScores]) -> dict[str, float]:
    """Return AP50, AP75, mAP, avF1, C, S, FS, FM, VOI_split, VOI_merge, ARAND, n_pred, n_gt.

    Counts are summed over volumes before AP and F1 are formed; C is the mean over every GT
    instance; FS, FM, n_pred, n_gt are sums; VOI and ARAND are means over volumes.
    """
    if not scores:
        raise InputError("no volumes to summarize")
    ap = _ratio(*_summed(scores, "iou_counts").T, kind="ap")
    f1 = _ratio(*_summed(scores, "cldice_counts").T, kind="f1")
    coverage = np.concatenate([s.coverage for s in scores])
    av_f1 = float(np.mean(f1))
    c = float(coverage.mean()) if len(coverage) else float("nan")
    return {
        "AP50": float(ap[0]),
        "AP75": float(ap[IOU_THRESHOLDS.index(0.75)]),
        "mAP": float(np.mean(ap)),
        "avF1": av_f1,
        "C": c,
        "S": 0.5 * av_f1 + 0.5 * c,
        "FS": float(sum(s.false_splits for s in scores)),
        "FM": float(sum(s.false_merges for s in scores)),
        "VOI_split": float(np.mean([s.voi_split for s in scores])),
        "VOI_merge": float(np.mean([s.voi_merge for s in scores])),
        "ARAND": float(np.mean([s.arand for s in scores])),
        "n_pred": float(sum(s.n_pred for s in scores)),
        "n_gt": float(sum(s.n_gt for s in scores)),
    }


def threshold_table(scores: Sequence[VolumeScores]) -> list[dict[str, float]]:
    """Return one row per IoU threshold: threshold, tp, fp, fn, precision, recall, f1, ap."""
    tp, fp, fn = _summed(scores, "iou_counts").T.astype(np.float64)
    columns = {
        "threshold": np.array(IOU_THRESHOLDS),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _divide(tp, tp + fp),
        "recall": _divide(tp, tp + fn),
        "f1": _ratio(tp, fp, fn, kind="f1"),
        "ap": _ratio(tp, fp, fn, kind="ap"),
    }
    return [{name: float(values[k]) for name, values in columns.items()} for k in range(len(tp))]


def _summed(scores: Sequence[VolumeScores], field: str) -> IntArray:
    """Return the (T, 3) TP, FP, FN counts of ``field`` summed over the volumes."""
    return np.sum([getattr(s, field) for s in scores], axis=0)


def _ratio(tp: npt.ArrayLike, fp: npt.ArrayLike, fn: npt.ArrayLike, *, kind: str) -> FloatArray:
    """Return AP = TP/(TP+FP+FN) or F1 = 2TP/(2TP+FP+FN) per threshold (NaN where 0/0)."""
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    weight = 2.0 if kind == "f1" else 1.0
    return _divide(weight * tp, weight * tp + fp + fn)


def _divide(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> FloatArray:
    """Return numerator / denominator elementwise as float64, NaN where the denominator is 0."""
    top, bottom = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    return np.divide(top, bottom, out=np.full(top.shape, np.nan), where=bottom > 0)


def evaluate_instances(
    pred: Instances,
    gt: Instances,
    *,
    fisbe: bool = False,
    partly: bool = False,
    annotated: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """Return the metrics of :func:`summarize` for one volume (see :func:`score_volume`)."""
    return summarize([score_volume(pred, gt, fisbe=fisbe, partly=partly, annotated=annotated)])


def evaluate_volumes(
    pairs: Sequence[tuple[Instances, Instances]],
    *,
    fisbe: bool = False,
    partly: bool = False,
    annotated: Sequence[npt.ArrayLike | None] | None = None,
) -> dict[str, float]:
    """Return the metrics of :func:`summarize` over several (prediction, ground truth) pairs.

    annotated: one (Z, Y, X) bool mask (or None) per pair, used if ``partly``.
    """
    masks = list(annotated) if annotated is not None else [None] * len(pairs)
    if len(masks) != len(pairs):
        raise InputError(f"{len(pairs)} volumes but {len(masks)} annotated masks")
    return summarize(
        [
            score_volume(pred, gt, fisbe=fisbe, partly=partly, annotated=mask)
            for (pred, gt), mask in zip(pairs, masks, strict=True)
        ]
    )


# ---------------------------------------------------------------- uncertainty evaluation


@dataclass(frozen=True)
class PavpuCurve:
    """PAvPU and its two conditional probabilities over a sweep of uncertainty thresholds.

    All fields (T,) float64; NaN where a probability's condition never occurs.
    """

    thresholds: FloatArray
    pavpu: FloatArray
    p_accurate_given_certain: FloatArray
    p_uncertain_given_inaccurate: FloatArray


def pavpu(
    accurate: npt.ArrayLike,
    uncertainty: npt.ArrayLike,
    thresholds: npt.ArrayLike,
    *,
    grid: tuple[int, int] = (4, 4),
    relevant: npt.ArrayLike | None = None,
) -> PavpuCurve:
    """Return PAvPU (Mukhoti & Gal 2018) per uncertainty threshold, on patches of z-slices.

    accurate: (Z, Y, X) bool, the voxel's prediction is correct.
    uncertainty: (Z, Y, X) float voxel uncertainty.
    thresholds: (T,) float; a patch is uncertain if its mean uncertainty exceeds one.
    grid: every z-slice is cut into grid[0] x grid[1] patches (along Y, X). A patch is accurate
        if at least half its voxels are.
    relevant: (Z, Y, X) bool, the voxels whose accuracy counts (e.g. predicted or true
        foreground, so that ~95 % background does not make every patch accurate); patches
        without a relevant voxel are left out. None: every voxel counts.
    PAvPU = (n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu); also p(accurate | certain) =
    n_ac / (n_ac + n_ic) and p(uncertain | inaccurate) = n_iu / (n_ic + n_iu).
    """
    acc, unc = np.asarray(accurate), np.asarray(uncertainty)
    if acc.shape != unc.shape or acc.ndim != 3:
        raise InputError(f"pavpu needs two (Z, Y, X) volumes, got {acc.shape} and {unc.shape}")
    weight = np.ones(acc.shape, bool) if relevant is None else np.asarray(relevant, bool)
    if weight.shape != acc.shape:
        raise InputError(f"pavpu: relevant has shape {weight.shape}, accurate has {acc.shape}")
    counted = _patch_means(weight.astype(np.float32), grid).ravel()
    kept = counted > 0
    hits = _patch_means((acc & weight).astype(np.float32), grid).ravel()
    patch_accurate = hits[kept] >= 0.5 * counted[kept]
    patch_uncertainty = _patch_means(unc.astype(np.float32), grid).ravel()[kept]
    levels = np.atleast_1d(np.asarray(thresholds, np.float64))
    uncertain = patch_uncertainty[None, :] > levels[:, None]
    n_ac, n_au = _count(patch_accurate & ~uncertain), _count(patch_accurate & uncertain)
    n_ic, n_iu = _count(~patch_accurate & ~uncertain), _count(~patch_accurate & uncertain)
    return PavpuCurve(
        thresholds=levels,
        pavpu=_divide(n_ac + n_iu, n_ac + n_au + n_ic + n_iu),
        p_accurate_given_certain=_divide(n_ac, n_ac + n_ic),
        p_uncertain_given_inaccurate=_divide(n_iu, n_ic + n_iu),
    )


def _count(flags: BoolArray) -> FloatArray:
    """Return (T,) float64 the number of true flags in each row of (T, n) ``flags``."""
    return flags.sum(axis=1).astype(np.float64)


def _patch_means(volume: npt.NDArray[np.float32], grid: tuple[int, int]) -> FloatArray:
    """Return (Z, gy, gx) means of a (Z, Y, X) volume over a gy x gx grid of patches per slice."""
    _, ny, nx = volume.shape
    if not (1 <= grid[0] <= ny and 1 <= grid[1] <= nx):
        raise InputError(f"a {grid} patch grid does not fit slices of {ny} x {nx} voxels")
    y_edges = np.linspace(0, ny, grid[0] + 1).round().astype(int)
    x_edges = np.linspace(0, nx, grid[1] + 1).round().astype(int)
    sums = np.add.reduceat(
        np.add.reduceat(volume, y_edges[:-1], axis=1, dtype=np.float64), x_edges[:-1], axis=2
    )
    return sums / (np.diff(y_edges)[:, None] * np.diff(x_edges)[None, :])


def auroc(scores: npt.ArrayLike, is_error: npt.ArrayLike) -> float:
    """Return the area under the ROC curve of ``scores`` for detecting ``is_error``.

    scores: (N,) float, higher = more likely an error; is_error: (N,) bool.
    Rank-based (Mann-Whitney U) with average ranks, so tied scores count one half. NaN if one
    class is empty.
    """
    s = np.asarray(scores, np.float64).ravel()
    positive = np.asarray(is_error, bool).ravel()
    if s.shape != positive.shape:
        raise InputError(
            f"auroc needs scores and labels of one length, got {s.size} and {positive.size}"
        )
    n_pos = int(positive.sum())
    n_neg = len(s) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(rankdata(s)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data; all fields (bins,), NaN accuracy/confidence for empty bins."""

    centers: FloatArray
    accuracy: FloatArray
    confidence: FloatArray
    counts: IntArray


def reliability(
    prob: npt.ArrayLike, target: npt.ArrayLike, bins: int = 15, *, top_label: bool = True
) -> Reliability:
    """Return the reliability-diagram data of binary probabilities.

    prob: (N,) or any shape, float probability of the positive class (foreground).
    target: same shape, bool truth.
    top_label: as Guo et al. 2017, confidence = max(p, 1 - p) binned over [0.5, 1] and accuracy
        = fraction of correct decisions (p >= 0.5); otherwise confidence = p binned over [0, 1]
        and accuracy = fraction of positives (the calibration curve of the positive class).
    """
    p = np.asarray(prob, np.float64).ravel()
    truth = np.asarray(target, bool).ravel()
    if p.shape != truth.shape or bins < 1:
        raise InputError(
            f"reliability needs prob and target of one size and bins >= 1, "
            f"got {p.size}, {truth.size} and {bins}"
        )
    if top_label:
        confidence, correct, low = np.maximum(p, 1 - p), (p >= 0.5) == truth, 0.5
    else:
        confidence, correct, low = p, truth, 0.0
    edges = np.linspace(low, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    return Reliability(
        centers=(edges[:-1] + edges[1:]) / 2,
        accuracy=_divide(np.bincount(which, weights=correct, minlength=bins), counts),
        confidence=_divide(np.bincount(which, weights=confidence, minlength=bins), counts),
        counts=counts.astype(np.int64),
    )


def ece(
    prob: npt.ArrayLike, target: npt.ArrayLike, bins: int = 15, *, top_label: bool = True
) -> float:
    """Return the expected calibration error: sum over bins of n_b / N * |accuracy - confidence|.

    prob, target: as in :func:`reliability` (same binning and meaning of ``top_label``).
    """
    diagram = reliability(prob, target, bins, top_label=top_label)
    filled = diagram.counts > 0
    if not filled.any():
        return float("nan")
    gap = np.abs(diagram.accuracy[filled] - diagram.confidence[filled])
    return float((diagram.counts[filled] * gap).sum() / diagram.counts.sum())
