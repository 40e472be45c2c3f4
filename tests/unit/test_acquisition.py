"""Ranking crops: random baseline, scored strategies, diversity and cost."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from activeseg.core import acquisition
from activeseg.core.acquisition import (
    CropScores,
    Selection,
    candidate_sample,
    effective_scores,
    greedy_k_center,
    random_order,
    rank_crops,
    select_batch,
    standardize,
    stratum_quotas,
    uniform_keys,
)
from activeseg.errors import InputError


def _scores(n: int = 6) -> CropScores:
    """Return N crops whose three columns rank them in three different orders."""
    values = np.arange(n, dtype=float)
    return CropScores(
        count=n,
        uncertainty=values,
        bald=values[::-1].copy(),
        instance=(values * 7) % n,
        cost=np.ones(n),
    )


def _indices(selections: list[Selection]) -> list[int]:
    return [s.index for s in selections]


def _ranked(scores: CropScores, strategy: str, **options: Any) -> list[Selection]:
    """Return every crop in the order select_batch picks them."""
    return select_batch(scores, strategy, scores.count, **options)


# --------------------------------------------------------------------------- random


def test_random_is_a_seeded_permutation() -> None:
    scores = CropScores(count=50)
    first = _indices(_ranked(scores, "random", seed=1))
    assert sorted(first) == list(range(50))
    assert _indices(_ranked(scores, "random", seed=1)) == first
    assert _indices(_ranked(scores, "random", seed=2)) != first
    assert first == random_order(50, 1).tolist()


def test_random_batch_is_the_head_of_the_ranking_and_ignores_scores() -> None:
    batch = select_batch(_scores(20), "random", 5, seed=3)
    assert _indices(batch) == random_order(20, 3)[:5].tolist()
    assert [s.rank for s in batch] == [1, 2, 3, 4, 5]
    plain = select_batch(CropScores(count=20), "random", 5, seed=3)
    assert _indices(plain) == _indices(batch)


# --------------------------------------------------------------------------- scored strategies


@pytest.mark.parametrize("strategy", ["uncertainty", "bald", "instance"])
def test_scored_strategies_rank_by_their_own_column(strategy: str) -> None:
    scores = _scores()
    column = scores.column(strategy)
    order = _indices(_ranked(scores, strategy))
    assert sorted(order) == list(range(6))
    assert list(column[order]) == sorted(column, reverse=True)


def test_selection_explains_itself() -> None:
    top = select_batch(_scores(), "bald", 1)[0]
    assert top.index == 0 and top.rank == 1 and top.score == 5.0
    assert top.parts == {
        "uncertainty": 0.0,
        "bald": 5.0,
        "instance": 0.0,
        "cost": 1.0,
        "effective": 5.0,
    }


def test_batch_larger_than_the_pool_returns_every_crop_once() -> None:
    assert sorted(_indices(select_batch(_scores(4), "uncertainty", 10))) == [0, 1, 2, 3]
    assert select_batch(CropScores(count=0), "random", 3) == []


# --------------------------------------------------------------------------- cost


def test_cost_aware_prefers_cheap_crops_at_equal_information() -> None:
    scores = CropScores(count=4, uncertainty=np.ones(4), cost=np.array([8.0, 1.0, 4.0, 2.0]))
    ties = [_indices(_ranked(scores, "uncertainty", seed=k)) for k in range(8)]
    assert all(sorted(t) == [0, 1, 2, 3] for t in ties)
    assert len({tuple(t) for t in ties}) > 1  # ties: a seeded random order, not index order
    assert ties[0] == _indices(_ranked(scores, "uncertainty", seed=0))  # reproducible
    assert _indices(_ranked(scores, "uncertainty", cost_aware=True)) == [1, 3, 2, 0]


def test_cost_alpha_trades_information_against_effort() -> None:
    scores = CropScores(count=2, uncertainty=np.array([4.0, 1.0]), cost=np.array([9.0, 1.0]))
    full = effective_scores(scores, "uncertainty", cost_aware=True, cost_alpha=1.0)
    half = effective_scores(scores, "uncertainty", cost_aware=True, cost_alpha=0.5)
    assert np.allclose(full, [4 / 9, 1.0]) and np.allclose(half, [4 / 3, 1.0])
    assert _indices(_ranked(scores, "uncertainty", cost_aware=True)) == [1, 0]
    assert _indices(_ranked(scores, "uncertainty", cost_aware=True, cost_alpha=0.5)) == [0, 1]
    assert _indices(_ranked(scores, "uncertainty", cost_aware=True, cost_alpha=0.0)) == [0, 1]


def test_cost_aware_without_cost_is_an_input_error() -> None:
    with pytest.raises(InputError, match="cost"):
        select_batch(CropScores(count=2, bald=np.ones(2)), "bald", 1, cost_aware=True)


# --------------------------------------------------------------------------- diversity


def test_diversity_spreads_a_batch_over_distinct_descriptors() -> None:
    # Crops 0-2 are copies of one hard region and score highest; 3 and 4 are elsewhere.
    descriptors = np.array([[0.0, 0.0]] * 3 + [[5.0, 0.0], [0.0, 5.0]])
    scores = CropScores(count=5, uncertainty=np.array([1.0, 0.99, 0.98, 0.3, 0.2]))
    assert _indices(select_batch(scores, "uncertainty", 3)) == [0, 1, 2]
    batch = select_batch(scores, "uncertainty", 3, descriptors=descriptors, diversity=True)
    assert _indices(batch) == [0, 3, 4]
    assert "distance" not in batch[0].parts and batch[1].parts["distance"] > 0


def test_diversity_never_repeats_a_descriptor_while_distinct_ones_remain() -> None:
    rng = np.random.default_rng(0)
    for trial in range(30):
        distinct = rng.normal(size=(rng.integers(2, 6), 3))
        copies = rng.integers(0, len(distinct), size=12)
        descriptors = distinct[copies]
        scores = CropScores(count=12, uncertainty=rng.uniform(size=12))
        batch = select_batch(
            scores, "uncertainty", 6, descriptors=descriptors, diversity=True, seed=trial
        )
        picked = copies[_indices(batch)]
        n_distinct = len(np.unique(copies))
        assert len(np.unique(picked[:n_distinct])) == min(n_distinct, 6)


def test_diversity_with_zero_scores_still_spreads() -> None:
    descriptors = np.array([[0.0], [0.0], [1.0]])
    scores = CropScores(count=3, bald=np.array([0.0, 0.0, 0.0]))
    batch = select_batch(scores, "bald", 2, descriptors=descriptors, diversity=True)
    assert _indices(batch) == [0, 2]


def test_diverse_round_zero_covers_every_cluster() -> None:
    rng = np.random.default_rng(1)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    cluster = np.repeat(np.arange(3), 5)
    descriptors = centers[cluster] + rng.normal(scale=0.1, size=(15, 2))
    for seed in range(5):
        batch = select_batch(CropScores(count=15), "diverse", 3, descriptors=descriptors, seed=seed)
        assert sorted(cluster[_indices(batch)]) == [0, 1, 2]
        assert all(s.score == 0.0 for s in batch)


def test_greedy_k_center_prefers_high_weight_among_far_crops() -> None:
    features = np.array([[0.0], [10.0], [-9.0]])
    order, gaps = greedy_k_center(features, np.array([1.0, 0.2, 1.0]), 3, first=0)
    assert order == [0, 2, 1]  # 0.9 * 1.0 beats 1.0 * 0.2
    assert gaps[0] == np.inf and gaps[1] == pytest.approx(9.0)


def test_standardize_puts_dimensions_on_one_scale() -> None:
    rows = np.array([[1.0, 100.0, 3.0], [3.0, 300.0, 3.0]])
    assert np.allclose(standardize(rows, 2), [[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0]])


# --------------------------------------------------------------------------- whole-pool ranking


def _pool(n: int, seed: int = 0) -> tuple[CropScores, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = CropScores(count=n, uncertainty=rng.uniform(size=n), cost=rng.uniform(1, 5, size=n))
    return scores, rng.normal(size=(n, 3))


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("uncertainty", {"diversity": True}),
        ("uncertainty", {"diversity": True, "cost_aware": True}),
        ("uncertainty", {}),
        ("diverse", {}),
        ("random", {}),
    ],
)
def test_a_ranking_within_its_depth_is_the_full_greedy_ranking(
    strategy: str, options: dict[str, Any]
) -> None:
    scores, descriptors = _pool(30)
    options = {**options, "descriptors": descriptors, "seed": 4}
    full = select_batch(scores, strategy, 30, **options)
    assert rank_crops(scores, strategy, depth=30, **options) == full
    assert rank_crops(scores, strategy, depth=400, **options) == full


@pytest.mark.parametrize("strategy", ["uncertainty", "diverse"])
def test_past_its_depth_a_ranking_runs_no_k_center(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores, descriptors = _pool(40)
    options: dict[str, Any] = {"descriptors": descriptors, "diversity": True, "seed": 2}
    batch = select_batch(scores, strategy, 5, **options)
    asked: list[int] = []
    real = acquisition.greedy_k_center

    def counted(features: Any, weight: Any, k: int, first: int) -> Any:
        asked.append(k)
        return real(features, weight, k, first)

    monkeypatch.setattr(acquisition, "greedy_k_center", counted)
    ranking = rank_crops(scores, strategy, depth=5, **options)
    assert asked == [5]
    assert ranking[:5] == batch
    assert sorted(_indices(ranking)) == list(range(40))
    assert [s.rank for s in ranking] == list(range(1, 41))
    tail = ranking[5:]
    if strategy == "uncertainty":
        assert [s.score for s in tail] == sorted((s.score for s in tail), reverse=True)
    else:
        distances = [s.parts["distance"] for s in tail]
        assert distances == sorted(distances, reverse=True)


def test_ranking_an_empty_pool_gives_nothing() -> None:
    assert rank_crops(CropScores(count=0), "uncertainty") == []
    with pytest.raises(InputError, match="depth"):
        rank_crops(CropScores(count=2, uncertainty=np.ones(2)), "uncertainty", depth=0)


# --------------------------------------------------------------------------- candidate budget


def _strata() -> tuple[np.ndarray, np.ndarray]:
    """Return 100 crop ids (not in order) and their volumes: 60, 30 and 10 crops."""
    ids = np.random.default_rng(0).permutation(np.arange(1000, 1100))
    return ids, np.repeat([5, 7, 9], [60, 30, 10])


def test_the_candidate_sample_is_seeded_and_stratified_by_volume() -> None:
    ids, volumes = _strata()
    picked = candidate_sample(ids, volumes, 20, (0, 3))
    assert len(picked) == 20 and len(set(picked.tolist())) == 20
    assert np.bincount(volumes[picked], minlength=10)[[5, 7, 9]].tolist() == [12, 6, 2]
    assert candidate_sample(ids, volumes, 20, (0, 3)).tolist() == picked.tolist()
    assert candidate_sample(ids, volumes, 20, (0, 4)).tolist() != picked.tolist()
    assert candidate_sample(ids, volumes, 20, (1, 3)).tolist() != picked.tolist()
    shuffled = np.random.default_rng(1).permutation(100)
    again = candidate_sample(ids[shuffled], volumes[shuffled], 20, (0, 3))
    assert set(ids[shuffled][again].tolist()) == set(ids[picked].tolist())


def test_crops_leaving_the_pool_do_not_change_the_others_chances() -> None:
    ids, volumes = _strata()
    picked = set(ids[candidate_sample(ids, volumes, 20, 7)].tolist())
    gone = next(i for i, v in zip(ids, volumes, strict=True) if i in picked and v == 5)
    keep = ids != gone
    after = set(ids[keep][candidate_sample(ids[keep], volumes[keep], 20, 7)].tolist())
    assert len(after) == 20 and picked - {gone} <= after


def test_preferred_crops_fill_their_volumes_quota_first() -> None:
    ids, volumes = _strata()
    preferred = np.zeros(100, bool)
    preferred[[0, 1, 70]] = True
    picked = candidate_sample(ids, volumes, 10, 0, preferred=preferred)
    assert {0, 1, 70} <= set(picked.tolist())
    assert np.bincount(volumes[picked], minlength=10)[[5, 7, 9]].tolist() == [6, 3, 1]


def test_no_budget_or_a_large_one_takes_every_crop() -> None:
    ids, volumes = _strata()
    assert candidate_sample(ids, volumes, None, 0).tolist() == list(range(100))
    assert candidate_sample(ids, volumes, 500, 0).tolist() == list(range(100))
    with pytest.raises(InputError, match="budget"):
        candidate_sample(ids, volumes, 0, 0)
    with pytest.raises(InputError, match="groups"):
        candidate_sample(ids, volumes[:5], 3, 0)


def test_stratum_quotas_are_proportional_and_exact() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        counts = rng.integers(1, 50, size=rng.integers(1, 8))
        budget = int(rng.integers(1, counts.sum() + 5))
        quotas = stratum_quotas(counts, budget, rng.uniform(size=len(counts)))
        assert quotas.sum() == min(budget, counts.sum())
        assert np.all(quotas <= counts)
        share = min(budget, counts.sum()) * counts / counts.sum()
        assert np.all(np.abs(quotas - share) < 1)


def test_uniform_keys_depend_on_the_id_and_seed_only() -> None:
    keys = uniform_keys([5, 9, 2], (1, 2))
    assert uniform_keys([2, 5], (1, 2)).tolist() == [keys[2], keys[0]]
    assert uniform_keys([5], (1, 3))[0] != keys[0]
    many = uniform_keys(np.arange(20000), 0)
    assert many.min() >= 0 and many.max() < 1 and abs(many.mean() - 0.5) < 0.01


# --------------------------------------------------------------------------- errors


def test_requests_that_cannot_run_are_input_errors() -> None:
    scores = CropScores(count=3, uncertainty=np.ones(3))
    with pytest.raises(InputError, match="unknown acquisition strategy"):
        select_batch(scores, "greedy", 1)
    with pytest.raises(InputError, match="batch size"):
        select_batch(scores, "uncertainty", 0)
    with pytest.raises(InputError, match="no 'bald' column"):
        select_batch(scores, "bald", 1)
    with pytest.raises(InputError, match="descriptors"):
        select_batch(scores, "uncertainty", 1, diversity=True)
    with pytest.raises(InputError, match="descriptors"):
        select_batch(scores, "diverse", 1)
    with pytest.raises(InputError, match="N = 3"):
        select_batch(scores, "uncertainty", 1, descriptors=np.zeros((2, 4)), diversity=True)


def test_bad_score_columns_are_input_errors() -> None:
    with pytest.raises(InputError, match="shape"):
        CropScores(count=3, uncertainty=np.ones(2))
    with pytest.raises(InputError, match="non-negative"):
        CropScores(count=2, bald=np.array([1.0, -1.0]))
    with pytest.raises(InputError, match="finite"):
        CropScores(count=2, bald=np.array([1.0, np.nan]))
    with pytest.raises(InputError, match="cost"):
        CropScores(count=2, cost=np.array([1.0, 0.0]))
