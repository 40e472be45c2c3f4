"""Voxel, instance and crop uncertainty on constructed samples with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.core import uncertainty
from activeseg.core.uncertainty import (
    InstanceRisk,
    Reduction,
    binary_entropy,
    choose_slices,
    embedding_descriptor,
    foreground_region,
    instance_error_score,
    instance_uncertainty,
    intensity_descriptor,
    mutual_information,
    predictive_entropy,
    reduce_crop,
)
from activeseg.errors import InputError
from activeseg.workflows.evaluate import uncertainty_quality, uncertainty_report

SHAPE = (6, 10, 10)
VOXEL_REDUCTIONS: tuple[Reduction, ...] = ("mean", "quantile", "region")


def _disagreeing_samples() -> np.ndarray:
    """Return (4, 6, 10, 10) samples that agree (0.02) except in a box where they flip."""
    fg = np.full((4, *SHAPE), 0.02, np.float32)
    fg[:2, 2:4, 3:6, 3:6] = 0.99
    fg[2:, 2:4, 3:6, 3:6] = 0.01
    return fg


# --------------------------------------------------------------------------- voxel level


def test_identical_samples_have_entropy_but_no_epistemic_uncertainty() -> None:
    fg = np.full((5, *SHAPE), 0.5, np.float32)
    assert np.allclose(predictive_entropy(fg), 1.0, atol=1e-6)
    assert np.allclose(mutual_information(fg), 0.0, atol=1e-6)


def test_mutual_information_is_high_where_samples_disagree_and_zero_elsewhere() -> None:
    mi = mutual_information(_disagreeing_samples())
    box = np.zeros(SHAPE, bool)
    box[2:4, 3:6, 3:6] = True
    expected = binary_entropy(0.5) - binary_entropy(0.99)  # H(0.5)=1, H(0.99)=H(0.01)
    assert mi.dtype == np.float32 and mi.shape == SHAPE
    assert np.allclose(mi[box], expected, atol=1e-5)
    assert mi[box].min() > 0.9
    assert np.allclose(mi[~box], 0.0, atol=1e-6)


def test_entropy_splits_into_epistemic_and_aleatoric_parts() -> None:
    fg = np.random.default_rng(1).uniform(size=(6, *SHAPE)).astype(np.float32)
    total = predictive_entropy(fg)
    expected_entropy = binary_entropy(fg).mean(axis=0)  # the aleatoric part
    assert np.allclose(total, mutual_information(fg) + expected_entropy, atol=1e-5)
    assert np.all(mutual_information(fg) <= total + 1e-6)


def test_hard_zero_and_one_probabilities_stay_finite() -> None:
    fg = np.zeros((2, *SHAPE), np.float32)
    fg[0] = 1.0
    mi = mutual_information(fg)
    assert np.all(np.isfinite(mi))
    assert np.allclose(mi, 1.0, atol=1e-4)


def test_probabilities_outside_zero_one_are_an_input_error() -> None:
    fg = np.full((2, *SHAPE), 0.5, np.float32)
    fg[0, 0, 0, 0] = 1.5
    with pytest.raises(InputError, match="probabilities"):
        mutual_information(fg)
    fg[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        predictive_entropy(fg)


def test_wrong_dimensions_are_an_input_error_naming_the_layout() -> None:
    with pytest.raises(InputError, match=r"\(S, Z, Y, X\)"):
        predictive_entropy(np.zeros(SHAPE))
    with pytest.raises(InputError, match=r"\(E, Z, Y, X\)"):
        embedding_descriptor(np.zeros(SHAPE), np.zeros(SHAPE))


# --------------------------------------------------------------------------- instance level


def _three_boxes() -> np.ndarray:
    """Return a (8, 10, 10) consensus: 1 = left box, 2 and 3 = two equal boxes on the right."""
    labels = np.zeros((8, 10, 10), np.uint32)
    labels[:, 0:4, 0:4] = 1
    labels[:, 6:10, 0:4] = 2
    labels[:, 6:10, 6:10] = 3
    return labels


def _by_id(risks: list[InstanceRisk]) -> dict[int, InstanceRisk]:
    return {r.id: r for r in risks}


def test_identical_samples_give_stable_unflagged_instances() -> None:
    consensus = _three_boxes()
    samples = np.stack([consensus + 100 * (consensus > 0)] * 3)  # other ids, same shapes
    risks = instance_uncertainty(consensus, samples)
    assert [r.id for r in risks] == [1, 2, 3]
    assert [r.size for r in risks] == [128, 128, 128]
    for r in risks:
        assert (r.stability, r.split_risk, r.merge_risk, r.uncertainty) == (1.0, 0.0, 0.0, 0.0)
        assert r.flags == frozenset()


def test_instance_split_in_half_the_samples_is_flagged_split() -> None:
    consensus = _three_boxes()
    samples = np.stack([consensus.copy() for _ in range(4)])
    for s in (1, 3):  # instance 1 cut in two halves along z in samples 1 and 3
        samples[s, 4:][consensus[4:] == 1] = 9
    risks = _by_id(instance_uncertainty(consensus, samples))
    assert risks[1].split_risk == 0.5
    assert risks[1].stability == pytest.approx(0.75)  # (1 + 0.5 + 1 + 0.5) / 4
    assert risks[1].flags == {"split"}
    assert risks[1].merge_risk == 0.0
    assert risks[2].flags == risks[3].flags == frozenset()
    assert risks[2].stability == 1.0


def test_instance_merge_flags_both_involved_instances() -> None:
    consensus = _three_boxes()
    samples = np.stack([consensus.copy() for _ in range(4)])
    samples[:2][samples[:2] == 3] = 2  # samples 0 and 1 merge instances 2 and 3
    risks = _by_id(instance_uncertainty(consensus, samples))
    for i in (2, 3):
        assert risks[i].merge_risk == 0.5
        assert risks[i].flags == {"merge"}
        assert risks[i].stability == pytest.approx(0.75)  # IoU 0.5 in two of four samples
        assert risks[i].split_risk == 0.0
    assert risks[1].flags == frozenset() and risks[1].merge_risk == 0.0


def test_small_fragments_do_not_count_as_a_split() -> None:
    consensus = _three_boxes()
    samples = consensus[None].copy()
    samples[0, 0][consensus[0] == 1] = 7  # 16 of 128 voxels (12.5%) are another instance
    risk = _by_id(instance_uncertainty(consensus, samples))[1]
    assert risk.split_risk == 0.0
    assert risk.stability == pytest.approx(112 / 128)


def test_instance_missing_from_samples_is_unstable() -> None:
    consensus = _three_boxes()
    samples = np.stack([np.where(consensus == 1, 0, consensus)] * 2).astype(np.uint32)
    risk = _by_id(instance_uncertainty(consensus, samples))[1]
    assert risk.stability == 0.0 and risk.uncertainty == 1.0
    assert risk.flags == {"unstable"}


def test_stability_matches_a_brute_force_best_iou() -> None:
    rng = np.random.default_rng(3)
    consensus = rng.integers(0, 4, size=(4, 6, 6)).astype(np.uint32)
    samples = rng.integers(0, 5, size=(3, 4, 6, 6)).astype(np.uint32)
    risks = _by_id(instance_uncertainty(consensus, samples))
    for c in (1, 2, 3):
        mask = consensus == c
        best = []
        for sample in samples:
            ious = [
                (mask & (sample == k)).sum() / (mask | (sample == k)).sum() for k in range(1, 5)
            ]
            best.append(max(ious))
        assert risks[c].stability == pytest.approx(np.mean(best))


def test_huge_ids_and_the_sorting_path_give_the_same_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(4)
    consensus = rng.integers(0, 5, size=(4, 6, 6)).astype(np.uint32)
    samples = rng.integers(0, 6, size=(3, 4, 6, 6)).astype(np.uint32)
    dense = instance_uncertainty(consensus, samples)
    huge = np.where(samples > 0, samples + np.uint32(4_000_000_000), 0).astype(np.uint32)
    assert instance_uncertainty(consensus, huge) == dense
    monkeypatch.setattr(uncertainty, "DENSE_COUNT_LIMIT", 1)
    assert instance_uncertainty(consensus, samples) == dense


def test_instance_inputs_must_match_in_shape() -> None:
    with pytest.raises(InputError, match="expected"):
        instance_uncertainty(np.zeros((4, 4, 4), np.uint32), np.zeros((2, 4, 4, 5), np.uint32))
    with pytest.raises(InputError, match="integer"):
        instance_uncertainty(np.zeros((4, 4, 4)), np.zeros((2, 4, 4, 4), np.uint32))


def test_empty_consensus_gives_no_risks_and_zero_error_score() -> None:
    risks = instance_uncertainty(np.zeros((3, 3, 3), np.uint32), np.ones((2, 3, 3, 3), np.uint32))
    assert risks == []
    assert instance_error_score(risks) == 0.0


def test_instance_error_score_sums_risks_over_sqrt_n() -> None:
    risks = [InstanceRisk(i, 10, 0.5, 0.5, 0.25, 0.5, frozenset()) for i in range(1, 5)]
    assert instance_error_score(risks) == pytest.approx(4 * 0.75 / 2)


# --------------------------------------------------------------------------- crop level


def _crop() -> tuple[np.ndarray, np.ndarray]:
    """Return (uncertainty, foreground) of a crop with a neuron-like rod in its interior."""
    rng = np.random.default_rng(5)
    fg = np.zeros((8, 16, 16), np.float32)
    fg[3:5, 4:12, 7:9] = 0.9
    uncertainty = (rng.uniform(size=fg.shape) * (fg > 0)).astype(np.float32)
    uncertainty[4, 10, 8] = 1.0
    return uncertainty, fg


@pytest.mark.parametrize("reduction", ["mean", "quantile", "region"])
def test_voxel_reductions_ignore_padding_with_empty_background(reduction: Reduction) -> None:
    uncertainty, fg = _crop()
    pad = ((3, 5), (7, 2), (9, 1))
    padded = reduce_crop(np.pad(uncertainty, pad), np.pad(fg, pad), reduction)
    assert padded == pytest.approx(reduce_crop(uncertainty, fg, reduction))
    assert padded > 0


def test_instance_sum_ignores_padding_and_needs_instances() -> None:
    uncertainty, fg = _crop()
    risks = [InstanceRisk(1, 10, 0.5, 0.0, 0.0, 0.5, frozenset())] * 4
    score = reduce_crop(uncertainty, fg, "instance_sum", instances=risks)
    padded = reduce_crop(np.pad(uncertainty, 4), np.pad(fg, 4), "instance_sum", instances=risks)
    assert score == padded == pytest.approx(4 * 0.5 / 2)
    with pytest.raises(InputError, match="instances"):
        reduce_crop(uncertainty, fg, "instance_sum")


def test_mean_does_not_grow_with_foreground_amount() -> None:
    small = np.zeros((8, 16, 16), np.float32)
    small[4, 4:6, 4:6] = 1.0
    large = np.zeros_like(small)
    large[2:6, 2:14, 2:14] = 1.0
    for fg in (small, large):
        assert reduce_crop(np.full(fg.shape, 0.3), fg, "mean") == pytest.approx(0.3)


def test_scores_look_only_near_the_foreground() -> None:
    uncertainty, fg = _crop()
    noisy = uncertainty.copy()
    noisy[0, 0, 0] = 1.0  # far from any foreground
    for reduction in VOXEL_REDUCTIONS:
        assert reduce_crop(noisy, fg, reduction) == reduce_crop(uncertainty, fg, reduction)


def test_quantile_and_region_have_known_values() -> None:
    fg = np.zeros((4, 8, 8), np.float32)
    fg[1:3, 2:6, 2:6] = 1.0  # 32 voxels
    uncertainty = np.zeros(fg.shape, np.float32)
    uncertainty[1:3, 2:4, 2:4] = 1.0  # a 2x2x2 block, a quarter of the foreground
    assert reduce_crop(uncertainty, fg, "quantile", q=0.5, margin=0) == 0.0
    assert reduce_crop(uncertainty, fg, "quantile", q=0.9, margin=0) == 1.0
    assert reduce_crop(uncertainty, fg, "region", region=(2, 2, 2), margin=0) == pytest.approx(1.0)
    assert reduce_crop(uncertainty, fg, "region", region=(2, 4, 4), margin=0) == pytest.approx(0.25)
    assert reduce_crop(uncertainty, fg, "mean", margin=0) == pytest.approx(0.25)


def test_crop_without_foreground_scores_zero() -> None:
    blank = np.zeros((4, 8, 8), np.float32)
    for reduction in VOXEL_REDUCTIONS:
        assert reduce_crop(np.ones_like(blank), blank, reduction) == 0.0


def test_bad_reduction_arguments_are_input_errors() -> None:
    uncertainty, fg = _crop()
    with pytest.raises(InputError, match="unknown reduction"):
        reduce_crop(uncertainty, fg, "max")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="quantile"):
        reduce_crop(uncertainty, fg, "quantile", q=1.5)
    with pytest.raises(InputError, match="shape"):
        reduce_crop(uncertainty, fg[:4], "mean")


def test_foreground_region_adds_the_margin() -> None:
    fg = np.zeros((5, 5, 5), np.float32)
    fg[2, 2, 2] = 0.8
    assert foreground_region(fg, margin=0).sum() == 1
    assert foreground_region(fg, margin=1).sum() == 7  # the voxel and its 6 face neighbours
    assert foreground_region(fg, threshold=0.9).sum() == 0


# --------------------------------------------------------------------------- descriptors


def test_embedding_descriptor_pools_the_foreground() -> None:
    emb = np.zeros((2, 4, 4, 4), np.float32)
    fg = np.zeros((4, 4, 4), np.float32)
    fg[0, 0, :2] = 1.0
    emb[0, 0, 0, :2] = (1.0, 3.0)  # dim 0 over the fg: mean 2, std 1; dim 1 all zero
    emb[1, 3, 3, 3] = 100.0  # background, ignored
    descriptor = embedding_descriptor(emb, fg)
    assert descriptor.dtype == np.float32
    assert np.allclose(descriptor, [2.0, 0.0, 1.0, 0.0, 2 / 64])
    assert np.allclose(embedding_descriptor(emb, np.zeros_like(fg)), 0.0)


def test_intensity_descriptor_has_per_channel_statistics() -> None:
    raw = np.zeros((3, 2, 10, 10), np.float32)
    raw[1] = np.arange(200).reshape(2, 10, 10)
    raw[2] = 7.0
    descriptor = intensity_descriptor(raw).reshape(3, 5)
    assert np.allclose(descriptor[0], 0.0)
    assert descriptor[1, 0] == pytest.approx(99.5)
    assert descriptor[1, 2] == pytest.approx(99.5)  # median
    assert np.allclose(descriptor[2], [7.0, 0.0, 7.0, 7.0, 7.0])


def uncertainty_with_peaks(depth: int, peaks: dict[int, float]) -> np.ndarray:
    """Return (Z, 3, 3) float with low uncertainty except the given slice means."""
    volume = np.full((depth, 3, 3), 0.01)
    for z, value in peaks.items():
        volume[z] = value
    return volume


def test_choose_slices_picks_the_most_uncertain_sorted() -> None:
    volume = uncertainty_with_peaks(20, {15: 0.9, 2: 0.8, 9: 0.7, 5: 0.1})
    assert choose_slices(volume, 3) == [2, 9, 15]


def test_choose_slices_skips_neighbours_of_chosen_slices() -> None:
    # 10 and 11 are the two most uncertain, but 11 is a near-copy of 10.
    volume = uncertainty_with_peaks(16, {10: 0.9, 11: 0.85, 3: 0.5})
    assert choose_slices(volume, 2, min_spacing=2) == [3, 10]
    assert choose_slices(volume, 2, min_spacing=1) == [10, 11]


def test_choose_slices_fills_up_when_spacing_leaves_too_few() -> None:
    volume = uncertainty_with_peaks(4, {1: 0.9})
    chosen = choose_slices(volume, 4, min_spacing=3)
    assert chosen == [0, 1, 2, 3]


def test_choose_slices_never_returns_more_than_depth() -> None:
    assert choose_slices(np.zeros((2, 3, 3)), 5) == [0, 1]


def test_choose_slices_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="n must be"):
        choose_slices(np.zeros((3, 2, 2)), 0)
    with pytest.raises(InputError, match=r"\(Z, Y, X\)"):
        choose_slices(np.zeros((3, 2)), 1)


# --------------------------------------------------------------------------- quality of it


def _sparse_id_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (consensus, truth, samples) whose ids are not 1..n: 3 ~ 5, 7 ~ 9, 20 is spurious."""
    boxes = _three_boxes()
    truth = np.select([boxes == 1, boxes == 2], [5, 9], 0).astype(np.uint32)
    consensus = np.select([boxes == 1, boxes == 2, boxes == 3], [3, 7, 20], 0).astype(np.uint32)
    samples = np.stack([np.where(consensus == 20, 0, consensus)] * 2).astype(np.uint32)
    return consensus, truth, samples


def test_uncertainty_quality_maps_sparse_ids_to_their_true_neurons() -> None:
    consensus, truth, samples = _sparse_id_case()
    mi = (consensus == 20).astype(np.float32)  # uncertain exactly where the prediction is wrong
    quality = uncertainty_quality(consensus, truth, mi, instance_uncertainty(consensus, samples))
    assert quality["voxel_error_auroc"] == 1.0
    assert quality["instance_error_auroc"] == 1.0
    assert (quality["scored_instances"], quality["erroneous_instances"]) == (3, 1)


def test_uncertainty_quality_without_true_neurons_is_nan_not_a_crash() -> None:
    consensus, _, samples = _sparse_id_case()
    truth = np.zeros_like(consensus)
    mi = np.zeros(consensus.shape, np.float32)
    quality = uncertainty_quality(consensus, truth, mi, instance_uncertainty(consensus, samples))
    assert np.isnan(quality["instance_error_auroc"])
    assert (quality["scored_instances"], quality["erroneous_instances"]) == (3, 3)


def test_uncertainty_report_adds_pavpu_and_ece() -> None:
    consensus, truth, samples = _sparse_id_case()
    fg = np.stack([(consensus > 0) & (consensus != 20), consensus > 0]).astype(np.float32)
    report = uncertainty_report(consensus, truth, fg, instance_uncertainty(consensus, samples))
    assert report["voxel_error_auroc"] == 1.0  # the samples disagree only on the spurious box
    assert report["ECE"] == pytest.approx(0.5 * (consensus == 20).mean())
    assert 0.0 <= report["PAvPU"] <= 1.0
