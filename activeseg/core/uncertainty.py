"""Samples of a probabilistic model → voxel, instance and crop uncertainty.

Pure numpy functions. Our shape convention puts the **samples first** (baal, unlike us, puts
its iterations on the last axis). A model with M heads, K ensemble members or K dropout passes
gives S samples per voxel of

- a foreground probability: ``(S, Z, Y, X)`` float in [0, 1];
- an instance segmentation (mean shift of each sample's embedding): ``(S, Z, Y, X)`` uint32,
  0 = background; and one *consensus* segmentation of the mean: ``(Z, Y, X)`` uint32.

Entropies are in bits, so the entropy of a binary foreground probability lies in [0, 1].
The samples' disagreement (mutual information, instance stability) is epistemic uncertainty,
the part of the predictive entropy that more labels can reduce (Kendall & Gal 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from activeseg.errors import InputError

FloatVolume = npt.NDArray[np.float32]
Reduction = Literal["mean", "quantile", "region", "instance_sum"]
REDUCTIONS: tuple[Reduction, ...] = ("mean", "quantile", "region", "instance_sum")

# Probabilities are clipped to [EPS, 1 - EPS] before taking logs; H(EPS) is ~2e-6 bits.
EPS = 1e-7
# Tolerated excursion of a probability outside [0, 1] (float rounding in a sigmoid or a mean).
PROB_TOLERANCE = 1e-4


# --------------------------------------------------------------------------- input checks


def _float_array(
    array: npt.ArrayLike, name: str, ndim: int, layout: str
) -> npt.NDArray[np.floating]:
    """Return ``array`` as a floating numpy array after checking its number of dimensions."""
    values = np.asarray(array)
    if values.ndim != ndim or values.dtype.kind not in "fiub":
        raise InputError(
            f"{name} must be a {ndim}-D {layout} numeric array, got {values.ndim}-D "
            f"{values.dtype} of shape {values.shape}"
        )
    return values if values.dtype.kind == "f" else values.astype(np.float32)


def _probabilities(fg: npt.ArrayLike, name: str = "foreground") -> npt.NDArray[np.float64]:
    """Return (S, Z, Y, X) probabilities as float64, clipped into [EPS, 1 - EPS]."""
    values = _float_array(fg, name, 4, "(S, Z, Y, X)")
    if values.shape[0] < 1:
        raise InputError(f"{name} holds no samples: shape {values.shape}")
    inside = (values >= -PROB_TOLERANCE) & (values <= 1 + PROB_TOLERANCE)  # False for NaN
    if not inside.all():
        raise InputError(
            f"{name} must hold probabilities in [0, 1]; {int((~inside).sum())} voxel sample(s) "
            f"are outside or NaN (range {np.nanmin(values):.4g}..{np.nanmax(values):.4g})"
        )
    return np.clip(values.astype(np.float64), EPS, 1.0 - EPS)


def _labels(array: npt.ArrayLike, name: str, ndim: int) -> npt.NDArray[np.integer]:
    """Return an integer label array after checking its dimensions and sign."""
    values = np.asarray(array)
    if values.ndim != ndim or values.dtype.kind not in "ui":
        raise InputError(
            f"{name} must be a {ndim}-D integer label array, got {values.ndim}-D {values.dtype}"
        )
    if values.dtype.kind == "i" and values.size and values.min() < 0:
        raise InputError(f"{name} must not hold negative labels")
    return values


def _same_volume(name: str, shape: tuple[int, ...], reference: tuple[int, ...]) -> None:
    """Raise InputError unless ``shape`` equals the reference (Z, Y, X) shape."""
    if tuple(shape) != tuple(reference):
        raise InputError(f"{name} has shape {tuple(shape)}, expected (Z, Y, X) = {reference}")


# --------------------------------------------------------------------------- voxel level


def binary_entropy(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return the entropy in bits of Bernoulli probabilities ``p`` (any shape, float in [0, 1])."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))


def predictive_entropy(fg: npt.ArrayLike) -> FloatVolume:
    """Return (Z, Y, X) float32 entropy in bits of the mean foreground probability.

    fg: (S, Z, Y, X) float foreground probability per sample. Total uncertainty: epistemic
    (``mutual_information``) plus aleatoric (the mean entropy of the samples).
    """
    return binary_entropy(_probabilities(fg).mean(axis=0)).astype(np.float32)


def mutual_information(fg: npt.ArrayLike) -> FloatVolume:
    """Return (Z, Y, X) float32 BALD mutual information in bits: H(mean) - mean(H).

    fg: (S, Z, Y, X) float foreground probability per sample. Zero where the samples agree
    (however unsure each is), up to 1 bit where half say 0 and half say 1.
    """
    p = _probabilities(fg)
    mi = binary_entropy(p.mean(axis=0)) - binary_entropy(p).mean(axis=0)
    return np.clip(mi, 0.0, 1.0).astype(np.float32)  # rounding can dip a hair below 0


@dataclass(frozen=True)
class Decomposition:
    """Total predictive uncertainty per voxel split into an aleatoric and an epistemic part.

    Foreground (bits): total = entropy of the mean probability; aleatoric = mean entropy of
    the samples (what each sample is unsure of: noise that no label removes); epistemic = their
    difference, the mutual information (Kendall & Gal 2017). Embedding (squared embedding
    units): epistemic = variance of the samples' embeddings, summed over dimensions; aleatoric
    = the mean predicted scale above its floor of 1 (``heads.embedding_scale``; zero for a
    model without one); total = their sum. All maps (Z, Y, X) float32.
    """

    foreground_total: FloatVolume
    foreground_aleatoric: FloatVolume
    foreground_epistemic: FloatVolume
    embedding_total: FloatVolume
    embedding_aleatoric: FloatVolume
    embedding_epistemic: FloatVolume


def decompose(
    fg: npt.ArrayLike, embedding: npt.ArrayLike, scale: npt.ArrayLike | None = None
) -> Decomposition:
    """Return the aleatoric / epistemic decomposition of S samples (see ``Decomposition``).

    fg: (S, Z, Y, X) float foreground probability; embedding: (S, E, Z, Y, X) float;
    scale: (S, Z, Y, X) float predicted embedding scale (>= 1), or None.
    """
    p = _probabilities(fg)
    emb = _float_array(embedding, "embedding", 5, "(S, E, Z, Y, X)")
    _same_volume("embedding", emb.shape[2:], p.shape[1:])
    total = binary_entropy(p.mean(axis=0))
    aleatoric = binary_entropy(p).mean(axis=0)
    spread = emb.astype(np.float64).var(axis=0).sum(axis=0)
    if scale is None:
        noise = np.zeros_like(spread)
    else:
        values = _float_array(scale, "embedding scale", 4, "(S, Z, Y, X)")
        _same_volume("embedding scale", values.shape[1:], p.shape[1:])
        noise = np.clip(values.astype(np.float64).mean(axis=0) - 1.0, 0.0, None)
    return Decomposition(
        total.astype(np.float32),
        aleatoric.astype(np.float32),
        np.clip(total - aleatoric, 0.0, 1.0).astype(np.float32),
        (spread + noise).astype(np.float32),
        noise.astype(np.float32),
        spread.astype(np.float32),
    )


def instance_means(labels: npt.ArrayLike, values: npt.ArrayLike) -> dict[int, float]:
    """Return the mean of a (Z, Y, X) map over each instance of labels (Z, Y, X), by id."""
    ids = _labels(labels, "labels", 3)
    volume = _float_array(values, "values", 3, "(Z, Y, X)")
    _same_volume("values", volume.shape, ids.shape)
    present, index = np.unique(ids, return_inverse=True)
    sums = np.bincount(index.ravel(), volume.ravel().astype(np.float64), len(present))
    counts = np.bincount(index.ravel(), minlength=len(present))
    return {int(i): float(s / c) for i, s, c in zip(present, sums, counts, strict=True) if i}


# --------------------------------------------------------------------------- instance level


@dataclass(frozen=True)
class InstanceRisk:
    """How stable one consensus instance is across the model's samples; what to proofread.

    id: consensus instance id; size: its voxel count.
    stability: mean over samples of its best-match IoU in the sample's segmentation (1 = every
      sample has exactly this instance; 0 = no sample has it).
    split_risk: fraction of samples that split it into two or more substantial pieces; a high
      value says "check whether this is two neurons falsely merged".
    merge_risk: fraction of samples whose best match of it also covers a substantial part of
      another consensus instance; a high value says "check whether this and its neighbour are
      one neuron falsely split".
    uncertainty: 1 - stability (split and merge both lower the stability).
    flags: the proofreading flags: "split", "merge", "unstable" (see ``instance_uncertainty``).
    """

    id: int
    size: int
    stability: float
    split_risk: float
    merge_risk: float
    uncertainty: float
    flags: frozenset[str]


@dataclass(frozen=True)
class _Overlaps:
    """Contingency table of (sample, consensus instance, sample instance) voxel counts.

    One row per overlapping pair, both sides foreground. ``consensus`` indexes ``ids`` and
    ``consensus_size``; ``sample_size`` holds the size of each row's sample instance.
    """

    n_samples: int
    n_pieces: int  # S * (number of distinct sample ids): the range of ``piece``
    ids: npt.NDArray[np.int64]  # (N,) consensus ids, 0 excluded
    consensus_size: npt.NDArray[np.int64]  # (N,)
    sample: npt.NDArray[np.int64]  # (P,)
    consensus: npt.NDArray[np.int64]  # (P,) index into ids
    piece: npt.NDArray[np.int64]  # (P,) sample instance, unique across samples
    count: npt.NDArray[np.int64]  # (P,) voxels in the intersection
    sample_size: npt.NDArray[np.int64]  # (P,)


# Below this many distinct keys, counting uses a dense bincount (linear time) not a sort.
DENSE_COUNT_LIMIT = 1 << 22


def _compact(
    labels: npt.NDArray[np.integer],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return (sorted distinct ids, index of each voxel's id in them), shaped like ``labels``."""
    top = int(labels.max(initial=0))
    if top >= DENSE_COUNT_LIMIT:
        ids, index = np.unique(labels, return_inverse=True)
        return ids.astype(np.int64), index.reshape(labels.shape).astype(np.int64)
    present = np.bincount(labels.ravel(), minlength=top + 1) > 0
    lookup = np.cumsum(present) - 1
    return np.flatnonzero(present).astype(np.int64), lookup[labels].astype(np.int64)


def _count(
    keys: npt.NDArray[np.int64], n_keys: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return (distinct keys, their counts) of integer keys in [0, n_keys)."""
    if n_keys > DENSE_COUNT_LIMIT:
        found, counts = np.unique(keys, return_counts=True)
        return found.astype(np.int64), counts.astype(np.int64)
    dense = np.bincount(keys.ravel(), minlength=n_keys)
    found = np.flatnonzero(dense)
    return found.astype(np.int64), dense[found].astype(np.int64)


def _overlaps(consensus: npt.NDArray[np.integer], samples: npt.NDArray[np.integer]) -> _Overlaps:
    """Return the overlap table from one count over combined (sample, c, k) keys."""
    n_samples = samples.shape[0]
    c_ids, c_index = _compact(consensus)
    k_ids, k_index = _compact(samples)
    n_c, n_k = len(c_ids), len(k_ids)
    sample_of = np.arange(n_samples, dtype=np.int64).reshape(-1, *([1] * consensus.ndim))
    keys, counts = _count((sample_of * n_c + c_index) * n_k + k_index, n_samples * n_c * n_k)
    sample, rest = np.divmod(keys, n_c * n_k)
    c, k = np.divmod(rest, n_k)
    piece_key = sample * n_k + k
    piece_size = np.bincount(piece_key, weights=counts, minlength=n_samples * n_k)
    fg = (c_ids[c] != 0) & (k_ids[k] != 0)
    offset = 1 if c_ids[0] == 0 else 0  # consensus index 0 is background when present
    return _Overlaps(
        n_samples=n_samples,
        n_pieces=n_samples * n_k,
        ids=c_ids[offset:].astype(np.int64),
        consensus_size=np.bincount(c_index.ravel(), minlength=n_c)[offset:].astype(np.int64),
        sample=sample[fg],
        consensus=c[fg] - offset,
        piece=piece_key[fg],
        count=counts[fg].astype(np.int64),
        sample_size=piece_size[piece_key[fg]].astype(np.int64),
    )


def _best_matches(table: _Overlaps, iou: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Return the table rows holding, per (sample, consensus instance), the highest IoU."""
    order = np.lexsort((iou, table.consensus, table.sample))
    group = table.sample[order] * len(table.ids) + table.consensus[order]
    last = np.ones(len(order), bool)
    last[:-1] = group[1:] != group[:-1]
    return order[last]


def _per_instance(
    table: _Overlaps, rows: npt.ArrayLike, values: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Return, per consensus instance, the sum of ``values`` over the given table rows."""
    weights = np.asarray(values, np.float64)
    sums = np.bincount(table.consensus[np.asarray(rows)], weights, minlength=len(table.ids))
    return sums.astype(np.float64)


def _split_counts(
    table: _Overlaps, coverage: npt.NDArray[np.float64], fraction: float
) -> npt.NDArray[np.float64]:
    """Return per consensus instance the number of samples with >= 2 substantial pieces."""
    substantial = coverage >= fraction
    n_ids = len(table.ids)
    pair = table.sample[substantial] * n_ids + table.consensus[substantial]
    pieces = np.bincount(pair, minlength=table.n_samples * n_ids)
    split_pairs = np.flatnonzero(pieces >= 2)
    return np.bincount(split_pairs % n_ids, minlength=n_ids).astype(np.float64)


def _merge_counts(
    table: _Overlaps,
    coverage: npt.NDArray[np.float64],
    best: npt.NDArray[np.int64],
    fraction: float,
) -> npt.NDArray[np.float64]:
    """Return per consensus instance the number of samples whose best match covers another one."""
    substantial = coverage >= fraction
    covered = np.bincount(table.piece[substantial], minlength=table.n_pieces)
    others = covered[table.piece[best]] - substantial[best]  # do not count the instance itself
    return _per_instance(table, best, others >= 1)


def _flags(
    stability: float, split: float, merge: float, flag_at: float, unstable_below: float
) -> frozenset[str]:
    """Return the proofreading flags of one instance."""
    flags = {"split"} if split >= flag_at else set()
    flags |= {"merge"} if merge >= flag_at else set()
    flags |= {"unstable"} if stability < unstable_below else set()
    return frozenset(flags)


def instance_uncertainty(
    consensus: npt.ArrayLike,
    samples: npt.ArrayLike,
    *,
    split_fraction: float = 0.2,
    merge_fraction: float = 0.2,
    flag_at: float = 0.5,
    unstable_below: float = 0.5,
) -> list[InstanceRisk]:
    """Return the stability, split and merge risk of every consensus instance, sorted by id.

    consensus: (Z, Y, X) uint32 instance labels of the mean prediction, 0 = background.
    samples: (S, Z, Y, X) uint32 instance labels of each sample; ids need not match consensus.

    A sample *splits* an instance when at least two of its instances each cover at least
    ``split_fraction`` of it. A sample *merges* it when its best-IoU match covers at least
    ``merge_fraction`` of another consensus instance. An instance is flagged "split" or
    "merge" when that happens in at least ``flag_at`` of the samples, and "unstable" when its
    stability is below ``unstable_below`` (most samples do not find it: maybe no neuron).
    All overlaps come from one contingency count, never a loop over instances.
    """
    labels = _labels(consensus, "consensus", 3)
    per_sample = _labels(samples, "samples", 4)
    _same_volume("samples", per_sample.shape[1:], labels.shape)
    if per_sample.shape[0] < 1:
        raise InputError("samples holds no samples: shape (0, ...)")
    if labels.size == 0:
        return []
    table = _overlaps(labels, per_sample)
    c_size = table.consensus_size[table.consensus]
    iou = table.count / (c_size + table.sample_size - table.count)
    coverage = table.count / c_size
    best = _best_matches(table, iou)
    n_samples = per_sample.shape[0]
    stability = _per_instance(table, best, iou[best]) / n_samples
    split = _split_counts(table, coverage, split_fraction) / n_samples
    merge = _merge_counts(table, coverage, best, merge_fraction) / n_samples
    return [
        InstanceRisk(
            id=int(table.ids[i]),
            size=int(table.consensus_size[i]),
            stability=float(stability[i]),
            split_risk=float(split[i]),
            merge_risk=float(merge[i]),
            uncertainty=float(1.0 - stability[i]),
            flags=_flags(stability[i], split[i], merge[i], flag_at, unstable_below),
        )
        for i in range(len(table.ids))
    ]


def instance_error_score(risks: Sequence[InstanceRisk]) -> float:
    """Return a crop's expected instance errors: sum of split + merge risk over sqrt(n).

    risks: the ``instance_uncertainty`` of the crop's n consensus instances. Dividing by
    sqrt(n) keeps a crowded crop from winning by its neuron count alone (see ``reduce_crop``).
    """
    if not risks:
        return 0.0
    total = sum(r.split_risk + r.merge_risk for r in risks)
    return float(total / np.sqrt(len(risks)))


# --------------------------------------------------------------------------- crop level


def foreground_region(
    foreground: npt.ArrayLike, *, threshold: float = 0.5, margin: int = 2
) -> npt.NDArray[np.bool_]:
    """Return the (Z, Y, X) bool region where crop scores are taken: foreground plus a margin.

    foreground: (Z, Y, X) float mean foreground probability. Voxels at or above ``threshold``,
    dilated by ``margin`` voxels (6-connected steps), so the uncertain rim of a neuron counts.
    """
    fg = _float_array(foreground, "foreground", 3, "(Z, Y, X)")
    mask = fg >= threshold
    if margin > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=margin)
    return mask


def _region_max(values: npt.NDArray[np.float64], region: tuple[int, int, int]) -> float:
    """Return the largest mean of ``values`` over any window of size ``region``."""
    if any(r < 1 for r in region):
        raise InputError(f"region sizes must be >= 1 voxel, got {region}")
    # Zero outside the crop, so padding with empty background changes nothing.
    pooled = ndimage.uniform_filter(values, size=region, mode="constant", cval=0.0)
    return float(pooled.max())


def _instance_sum(instances: Sequence[InstanceRisk] | None) -> float:
    """Return the sum of instance uncertainty divided by sqrt(number of instances)."""
    if instances is None:
        raise InputError('reduction "instance_sum" needs instances= (from instance_uncertainty)')
    if not instances:
        return 0.0
    return float(sum(r.uncertainty for r in instances) / np.sqrt(len(instances)))


def reduce_crop(
    voxel_uncertainty: npt.ArrayLike,
    foreground: npt.ArrayLike,
    reduction: Reduction,
    *,
    q: float = 0.9,
    region: tuple[int, int, int] = (4, 8, 8),
    instances: Sequence[InstanceRisk] | None = None,
    threshold: float = 0.5,
    margin: int = 2,
) -> float:
    """Return one crop score reduced from a voxel uncertainty map (0.0 for an empty crop).

    voxel_uncertainty: (Z, Y, X) float (e.g. ``mutual_information``); foreground: (Z, Y, X)
    float mean foreground probability. Every reduction looks only at the ``foreground_region``
    (foreground >= threshold, dilated by ``margin``), so background does not dilute it:

    - "mean": mean over the region;
    - "quantile": the ``q`` quantile over the region (the top 1 - q of its voxels);
    - "region": the largest mean over any sliding window of size ``region`` (z, y, x) of the
      region-masked map: uncertainty concentrated in one place (baal-style pooling; sliding
      rather than a fixed grid, so the score does not depend on where the crop starts);
    - "instance_sum": sum of ``instances``' uncertainty divided by sqrt(n).

    Normalization (the MONAI Label lesson: sums grow with crop size and foreground, so big or
    crowded crops win for no reason): means and quantiles are over the foreground region, not
    the crop, and a window mean does not grow with the crop; instance sums are divided by
    sqrt(n), a compromise: more uncertain neurons score more, but sublinearly. Padding a crop
    with empty background (foreground 0, uncertainty 0) away from its foreground changes none.
    """
    if reduction not in REDUCTIONS:
        raise InputError(f"unknown reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
    if reduction == "instance_sum":
        return _instance_sum(instances)
    values = _float_array(voxel_uncertainty, "voxel uncertainty", 3, "(Z, Y, X)")
    _same_volume("foreground", np.shape(foreground), values.shape)
    mask = foreground_region(foreground, threshold=threshold, margin=margin)
    if not mask.any():
        return 0.0
    if reduction == "mean":
        return float(values[mask].mean(dtype=np.float64))
    if reduction == "quantile":
        if not 0.0 <= q <= 1.0:
            raise InputError(f"quantile q must lie in [0, 1], got {q}")
        return float(np.quantile(values[mask].astype(np.float64), q))
    return _region_max(np.where(mask, values, 0.0).astype(np.float64), region)


# --------------------------------------------------------------------------- descriptors


def embedding_descriptor(
    embedding: npt.ArrayLike, foreground: npt.ArrayLike, *, threshold: float = 0.5
) -> npt.NDArray[np.float32]:
    """Return a (2E + 1,) float32 crop descriptor: embedding mean, std per dim, fg fraction.

    embedding: (E, Z, Y, X) float consensus (mean over samples) embedding; foreground:
    (Z, Y, X) float mean foreground probability. Mean and std are over the voxels at or above
    ``threshold`` (zeros when there are none), then the foreground fraction of the crop.
    """
    emb = _float_array(embedding, "embedding", 4, "(E, Z, Y, X)")
    fg = _float_array(foreground, "foreground", 3, "(Z, Y, X)")
    _same_volume("foreground", fg.shape, emb.shape[1:])
    mask = fg >= threshold
    inside = emb[:, mask].astype(np.float64)
    n_dims = emb.shape[0]
    mean = inside.mean(axis=1) if mask.any() else np.zeros(n_dims)
    std = inside.std(axis=1) if mask.any() else np.zeros(n_dims)
    return np.concatenate([mean, std, [mask.mean()]]).astype(np.float32)


def intensity_descriptor(
    raw: npt.ArrayLike, *, percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)
) -> npt.NDArray[np.float32]:
    """Return a (C * (2 + P),) float32 model-free descriptor: per channel mean, std, percentiles.

    raw: (C, Z, Y, X) numeric image of a crop. For round 0, when no model exists yet; the
    values of channel c come first: mean, std, then the P ``percentiles``.
    """
    image = _float_array(raw, "raw image", 4, "(C, Z, Y, X)")
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    if flat.shape[1] == 0:
        raise InputError(f"raw image of shape {image.shape} holds no voxels")
    stats = [flat.mean(axis=1, keepdims=True), flat.std(axis=1, keepdims=True)]
    stats.append(np.percentile(flat, percentiles, axis=1).T.reshape(flat.shape[0], -1))
    return np.concatenate(stats, axis=1).ravel().astype(np.float32)


def slice_scores(uncertainty: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return (Z,) float64: the mean uncertainty of each z-slice of a (Z, Y, X) volume."""
    values = np.asarray(uncertainty, dtype=np.float64)
    if values.ndim != 3:
        raise InputError(f"uncertainty must be (Z, Y, X), got shape {values.shape}")
    return np.asarray(np.nan_to_num(values).mean(axis=(1, 2)), dtype=np.float64)


def choose_slices(uncertainty: npt.ArrayLike, n: int, min_spacing: int | None = None) -> list[int]:
    """Return the sorted z-indices of the ``n`` slices where the model is least sure.

    The choice is uncertainty-driven: slices are ranked by mean uncertainty (``(Z, Y, X)``
    float input) and taken greedily, skipping any closer than ``min_spacing`` to one already
    taken, so the task does not show near-copies of one slice. ``min_spacing`` defaults to
    ``Z // (2 n)`` (at least 1). When spacing leaves too few slices, the best remaining ones
    fill up; never more than Z slices are returned.
    """
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    scores = slice_scores(uncertainty)
    spacing = max(1, len(scores) // (2 * n)) if min_spacing is None else max(1, min_spacing)
    ranked = [int(z) for z in np.argsort(-scores, kind="stable")]
    chosen: list[int] = []
    for z in ranked:
        if len(chosen) < n and all(abs(z - c) >= spacing for c in chosen):
            chosen.append(z)
    for z in ranked:
        if len(chosen) < n and z not in chosen:
            chosen.append(z)
    return sorted(chosen)
