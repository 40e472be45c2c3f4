"""Crop scores (+ crop descriptors) → a ranked selection of crops to annotate.

Scoring is separate from selection (the MONAI Label split): ``uncertainty.py`` turns a crop's
samples into numbers, which fill one column per strategy of a ``CropScores`` table; here a
strategy only ranks by its column. Pure functions, no DB: indices refer to the N unlabeled
crops in the order the caller passed them.

Strategies:

- "random": the baseline, a seeded permutation. It ignores ``diversity`` and ``cost_aware``
  so it stays the baseline whatever else is configured.
- "diverse": model-free greedy k-center on the descriptors (e.g. ``intensity_descriptor`` in
  round 0, when no model exists): a seeded random first crop, then each next crop the one
  farthest from those already picked. Needs descriptors, ignores scores and cost.
- "uncertainty", "bald", "instance": rank by that column of ``CropScores``, optionally divided
  by cost (``cost_aware``) and spread out over the descriptors (``diversity``).

Cost in the pool size N: a batch of k costs O(k N D) (k-center) or O(N log N) (sorting).
``rank_crops`` ranks all N crops but runs the k-center only for the first ``depth`` ranks, so
a whole-pool ranking stays linear in N. ``candidate_sample`` draws the crops to score at all
(``acquisition.max_candidates``): a seeded sample stratified by volume, in O(N log N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from activeseg.errors import InputError

Strategy = Literal["random", "diverse", "uncertainty", "bald", "instance"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
SCORED_STRATEGIES = ("uncertainty", "bald", "instance")
FloatColumn = npt.NDArray[np.float64]


def _column(values: npt.ArrayLike | None, name: str, count: int) -> FloatColumn | None:
    """Return a checked (count,) float64 score column, or None when absent."""
    if values is None:
        return None
    column = np.asarray(values, dtype=np.float64)
    if column.shape != (count,):
        raise InputError(f"score column {name!r} has shape {column.shape}, expected ({count},)")
    if not np.all(np.isfinite(column)) or np.any(column < 0):
        raise InputError(f"score column {name!r} must be finite and non-negative")
    return column


@dataclass(frozen=True)
class CropScores:
    """Scores of N unlabeled crops: one optional (N,) float column per strategy, plus cost.

    uncertainty: a ``reduce_crop`` of a voxel uncertainty map (the configured reduction).
    bald: a reduction of ``mutual_information`` (epistemic only).
    instance: ``instance_error_score`` (summed split + merge risk).
    cost: expected annotation effort, > 0, e.g. 1 + predicted instances (neurons to correct)
      or predicted foreground voxels; only ratios between crops matter.
    Scores are non-negative: larger means more to learn. Round 0 has ``CropScores(count=N)``.
    """

    count: int
    uncertainty: FloatColumn | None = None
    bald: FloatColumn | None = None
    instance: FloatColumn | None = None
    cost: FloatColumn | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise InputError(f"crop count must be >= 0, got {self.count}")
        for name in (*SCORED_STRATEGIES, "cost"):
            object.__setattr__(self, name, _column(getattr(self, name), name, self.count))
        if self.cost is not None and np.any(self.cost <= 0):
            raise InputError("annotation cost must be > 0 for every crop")

    def column(self, name: str) -> FloatColumn:
        """Return the (N,) float64 column ``name``; InputError when it was not scored."""
        values: FloatColumn | None = (
            getattr(self, name) if name in (*SCORED_STRATEGIES, "cost") else None
        )
        if values is None:
            raise InputError(
                f"crop scores have no {name!r} column; score the pool with a model first, "
                f"or use a model-free strategy (random, diverse)"
            )
        return values

    def parts(self, index: int) -> dict[str, float]:
        """Return the available columns of crop ``index`` by name (why it ranks where it does)."""
        names = (*SCORED_STRATEGIES, "cost")
        return {n: float(getattr(self, n)[index]) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class Selection:
    """One picked crop: its index among the N crops, rank (1 = first), score and its parts.

    score: what the strategy ranked by (the effective score; 0.0 for random and diverse).
    parts: the crop's score columns, plus "effective" (score / cost**alpha), and "distance"
      (standardized descriptor distance to the crops picked before it) when diversity ran.
    """

    index: int
    rank: int
    score: float
    parts: Mapping[str, float] = field(default_factory=dict)


def random_order(count: int, seed: int) -> npt.NDArray[np.int64]:
    """Return a (count,) int64 seeded permutation of 0..count-1 (the random baseline)."""
    return np.random.default_rng(seed).permutation(count).astype(np.int64)


def effective_scores(
    scores: CropScores, strategy: str, *, cost_aware: bool = False, cost_alpha: float = 1.0
) -> FloatColumn:
    """Return (N,) float64 scores of a scored strategy: column / cost**alpha when cost-aware.

    Expected information per expected effort: alpha = 1 is information per unit of effort,
    alpha = 0 ignores cost, values between soften it (a costly crop may still be worth it).
    """
    if strategy not in SCORED_STRATEGIES:
        raise InputError(f"strategy {strategy!r} has no score column; scored: {SCORED_STRATEGIES}")
    values = scores.column(strategy)
    if not cost_aware:
        return values
    if cost_alpha < 0:
        raise InputError(f"cost_alpha must be >= 0, got {cost_alpha}")
    return values / scores.column("cost") ** cost_alpha


def standardize(descriptors: npt.ArrayLike, count: int) -> FloatColumn:
    """Return (N, D) float64 descriptors with each dimension at zero mean and unit std.

    descriptors: (N, D) float, one row per crop. Constant dimensions become 0, so they carry
    no distance; identical rows stay identical (distance exactly 0).
    """
    rows = np.asarray(descriptors, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] != count:
        raise InputError(f"descriptors must be (N, D) with N = {count} crops, got {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise InputError("descriptors must be finite")
    std = rows.std(axis=0)
    return (rows - rows.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _next_pick(distance: FloatColumn, weight: FloatColumn, available: npt.NDArray[np.bool_]) -> int:
    """Return the available crop maximizing weight * distance / max distance.

    Crops identical to a picked one (distance 0) wait until no distinct crop is left; ties
    go to the larger distance, then the larger weight, then the lower index.
    """
    candidates = np.flatnonzero(available & (distance > 0))
    if len(candidates) == 0:
        candidates = np.flatnonzero(available)
    d = distance[candidates]
    w = weight[candidates]
    value = w * d / d.max() if d.max() > 0 else np.zeros_like(d)
    best = np.lexsort((candidates, -w, -d, -value))[0]
    return int(candidates[best])


def greedy_k_center(
    features: npt.ArrayLike, weight: npt.ArrayLike, k: int, first: int
) -> tuple[list[int], list[float]]:
    """Return (picked indices, distance of each to the earlier picks) of a weighted k-center.

    features: (N, D) float standardized descriptors; weight: (N,) float in [0, 1] (all ones
    gives the plain farthest-point k-center). Starts at ``first``; then repeatedly picks the
    crop maximizing weight * d / d_max, d being its distance to the nearest picked crop and
    d_max the largest such distance among the crops left. A batch is thus not near-copies of
    one hard region, and never holds two identical descriptors while distinct ones remain.
    """
    x = np.asarray(features, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    available = np.ones(len(x), bool)
    distance = np.full(len(x), np.inf)
    picked: list[int] = []
    gaps: list[float] = []
    index = first
    for _ in range(min(k, len(x))):
        picked.append(index)
        gaps.append(float(distance[index]))
        available[index] = False
        distance = np.minimum(distance, np.linalg.norm(x - x[index], axis=1))
        if available.any():
            index = _next_pick(distance, w, available)
    return picked, gaps


def _selections(
    order: list[int], scores: CropScores, effective: FloatColumn | None, gaps: list[float] | None
) -> list[Selection]:
    """Return Selections for crops in ranked ``order`` with their explaining parts."""
    result = []
    for position, index in enumerate(order):
        parts = scores.parts(index)
        score = 0.0 if effective is None else float(effective[index])
        if effective is not None:
            parts["effective"] = score
        if gaps is not None and np.isfinite(gaps[position]):
            parts["distance"] = gaps[position]
        result.append(Selection(index=index, rank=position + 1, score=score, parts=parts))
    return result


def _check_request(strategy: str, batch_size: int) -> None:
    """Raise InputError for an unknown strategy or a batch size below 1."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown acquisition strategy {strategy!r}; choose one of {STRATEGIES}")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")


def select_batch(
    scores: CropScores,
    strategy: str,
    batch_size: int,
    *,
    descriptors: npt.ArrayLike | None = None,
    diversity: bool = False,
    cost_aware: bool = False,
    cost_alpha: float = 1.0,
    seed: int = 0,
) -> list[Selection]:
    """Return the ``batch_size`` crops to annotate next, best first (fewer if N is smaller).

    scores: the N crops' ``CropScores``; descriptors: (N, D) float, needed by "diverse" and by
    ``diversity``. With ``diversity``, a scored strategy starts at its top crop and goes on by
    ``greedy_k_center`` weighted by score / max score; without, it sorts by score (ties in a
    seeded random order). ``seed`` drives "random", the first crop of "diverse" and ties.
    """
    _check_request(strategy, batch_size)
    count = min(batch_size, scores.count)
    if count == 0:
        return []
    if strategy == "random":
        return _selections(random_order(scores.count, seed)[:count].tolist(), scores, None, None)
    if strategy == "diverse":
        first = int(np.random.default_rng(seed).integers(scores.count))
        features = _features(descriptors, scores.count, "strategy 'diverse'")
        order, gaps = greedy_k_center(features, np.ones(scores.count), count, first)
        return _selections(order, scores, None, gaps)
    effective = effective_scores(scores, strategy, cost_aware=cost_aware, cost_alpha=cost_alpha)
    if diversity:
        return _diverse_by_score(scores, effective, count, descriptors)
    # Ties (a model that finds nothing scores every crop 0) go in a seeded random order, not
    # by index: index order would take neighbouring crops of one volume (BENCHMARKS.md,
    # label efficiency with confidence intervals).
    tiebreak = np.empty(scores.count, np.int64)
    tiebreak[random_order(scores.count, seed)] = np.arange(scores.count)
    by_score = np.lexsort((tiebreak, -effective))[:count]
    return _selections(by_score.tolist(), scores, effective, None)


def _diverse_by_score(
    scores: CropScores, effective: FloatColumn, count: int, descriptors: npt.ArrayLike | None
) -> list[Selection]:
    """Return ``count`` crops by score-weighted k-center, starting at the top-scored crop."""
    features = _features(descriptors, scores.count, "diversity")
    top = effective.max()
    weight = effective / top if top > 0 else np.ones(scores.count)
    first = int(np.argsort(-effective, kind="stable")[0])
    order, gaps = greedy_k_center(features, weight, count, first)
    return _selections(order, scores, effective, gaps)


def _features(descriptors: npt.ArrayLike | None, count: int, needed_by: str) -> FloatColumn:
    """Return standardized descriptors, or InputError naming what needed them."""
    if descriptors is None:
        raise InputError(f"{needed_by} needs crop descriptors (N, D); none were given")
    return standardize(descriptors, count)


RANK_DEPTH = 256


def rank_crops(
    scores: CropScores,
    strategy: str,
    *,
    descriptors: npt.ArrayLike | None = None,
    diversity: bool = False,
    cost_aware: bool = False,
    cost_alpha: float = 1.0,
    seed: int = 0,
    depth: int = RANK_DEPTH,
) -> list[Selection]:
    """Return all N crops ranked, best first: ``select_batch`` order for the first ``depth``.

    The k-center of "diverse" and of ``diversity`` costs O(depth N D), not O(N^2 D): crops
    past ``depth`` follow by effective score (scored strategies) or by standardized distance
    to the ranked ones ("diverse"). Since the k-center is greedy, any batch of at most
    ``depth`` crops is the head of this ranking, exactly as ``select_batch`` picks it.
    """
    if depth < 1:
        raise InputError(f"rank depth must be >= 1, got {depth}")
    greedy = strategy == "diverse" or (diversity and strategy in SCORED_STRATEGIES)
    head_size = min(depth, scores.count) if greedy else scores.count
    if head_size == 0:
        _check_request(strategy, 1)
        return []
    head = select_batch(
        scores,
        strategy,
        head_size,
        descriptors=descriptors,
        diversity=diversity,
        cost_aware=cost_aware,
        cost_alpha=cost_alpha,
        seed=seed,
    )
    if len(head) == scores.count:
        return head
    picked = [s.index for s in head]
    if strategy == "diverse":
        tail = _tail_by_distance(_features(descriptors, scores.count, "diverse"), picked)
        return head + _ranked_tail(tail, scores, None, len(head))
    effective = effective_scores(scores, strategy, cost_aware=cost_aware, cost_alpha=cost_alpha)
    rest = np.ones(scores.count, bool)
    rest[picked] = False
    order = np.flatnonzero(rest)[np.argsort(-effective[rest], kind="stable")]
    return head + _ranked_tail([(int(i), None) for i in order], scores, effective, len(head))


def _tail_by_distance(features: FloatColumn, picked: list[int]) -> list[tuple[int, float | None]]:
    """Return the crops not picked, farthest from the picked ones first, with the distance."""
    distance = np.full(len(features), np.inf)
    for index in picked:
        distance = np.minimum(distance, np.linalg.norm(features - features[index], axis=1))
    rest = np.ones(len(features), bool)
    rest[picked] = False
    order = np.flatnonzero(rest)[np.argsort(-distance[rest], kind="stable")]
    return [(int(i), float(distance[i])) for i in order]


def _ranked_tail(
    tail: list[tuple[int, float | None]],
    scores: CropScores,
    effective: FloatColumn | None,
    start: int,
) -> list[Selection]:
    """Return Selections for (index, distance) pairs ranked after ``start`` crops."""
    result = []
    for position, (index, distance) in enumerate(tail, start=start + 1):
        parts = scores.parts(index)
        score = 0.0 if effective is None else float(effective[index])
        if effective is not None:
            parts["effective"] = score
        if distance is not None:
            parts["distance"] = distance
        result.append(Selection(index=index, rank=position, score=score, parts=parts))
    return result


def uniform_keys(ids: npt.ArrayLike, seed: int | Sequence[int]) -> FloatColumn:
    """Return (N,) float64 in [0, 1): a seeded pseudo-random number per integer id.

    A function of (seed, id) alone (SplitMix64 of the id, keyed by the seed): the same id
    gets the same number whatever other ids are passed and in whatever order.
    """
    entropy = [seed] if isinstance(seed, int) else list(seed)
    key = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def stratum_quotas(
    counts: npt.ArrayLike, budget: int, tiebreak: npt.ArrayLike
) -> npt.NDArray[np.int64]:
    """Return (G,) int64 quotas summing to min(budget, total), proportional to ``counts``.

    Largest remainder: each stratum gets floor(budget * share); the crops left over go to the
    largest fractional parts, ties to the smallest ``tiebreak`` (G,) float. No quota exceeds
    its count.
    """
    sizes = np.asarray(counts, dtype=np.int64)
    total = int(sizes.sum())
    if budget >= total:
        return sizes.copy()
    exact = budget * sizes / total
    quotas = np.floor(exact).astype(np.int64)
    left = budget - int(quotas.sum())
    order = np.lexsort((np.asarray(tiebreak, dtype=np.float64), -(exact - quotas)))
    quotas[order[:left]] += 1
    return quotas


def candidate_sample(
    ids: npt.ArrayLike,
    groups: npt.ArrayLike,
    budget: int | None,
    seed: int | Sequence[int],
    *,
    preferred: npt.ArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """Return sorted indices of at most ``budget`` of N crops: a sample stratified by group.

    ids: (N,) int crop ids; groups: (N,) int strata (the crops' volumes). Each group gets a
    quota in proportion to its size (``stratum_quotas``) and fills it with its crops of the
    smallest ``uniform_keys(ids, seed)``: the same seed gives the same sample, and dropping
    crops from the input (labeled or queued since) leaves the others' chances unchanged.
    preferred: (N,) bool, crops taken first within their group (e.g. scores already cached,
    which cost nothing); a crop left over by rounding goes to the group with more of them.
    ``budget`` None (or >= N) returns every index. O(N log N).
    """
    crop_ids = np.asarray(ids, dtype=np.int64)
    strata = np.asarray(groups, dtype=np.int64)
    count = len(crop_ids)
    if strata.shape != (count,):
        raise InputError(f"groups must be ({count},) like ids, got {strata.shape}")
    if budget is not None and budget < 1:
        raise InputError(f"candidate budget must be >= 1 or None, got {budget}")
    if budget is None or budget >= count:
        return np.arange(count, dtype=np.int64)
    first = np.zeros(count, bool) if preferred is None else np.asarray(preferred, dtype=bool)
    labels, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    entropy = [seed] if isinstance(seed, int) else list(seed)
    # Equal remainders go to the group with more preferred crops, then to a seeded draw.
    cheap = np.bincount(inverse, weights=first, minlength=len(labels))
    quotas = stratum_quotas(sizes, budget, uniform_keys(labels, [*entropy, 1]) - cheap)
    order = np.lexsort((uniform_keys(crop_ids, entropy), ~first, inverse))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(count, np.int64)
    position[order] = np.arange(count) - np.repeat(starts, sizes)
    return np.flatnonzero(position < quotas[inverse]).astype(np.int64)
