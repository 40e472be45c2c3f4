"""Tests of activeseg.core.metrics on tiny hand-built volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error as skimage_arand
from skimage.metrics import variation_of_information as skimage_voi
from sklearn.metrics import roc_auc_score

from activeseg.core.instances import Instances
from activeseg.core.metrics import (
    adapted_rand_error,
    auroc,
    contingency_table,
    ece,
    evaluate_instances,
    evaluate_volumes,
    pavpu,
    reliability,
    score_volume,
    threshold_table,
    variation_of_information,
)
from activeseg.errors import InputError

SHAPE = (12, 40, 110)


def tube(y: int, z: int = 4, x: slice = slice(5, 105)) -> tuple[slice, slice, slice]:
    """Return the box of a 3 x 3 x 100 voxel tube (900 voxels) running along x."""
    return (slice(z, z + 3), slice(y, y + 3), x)


def labels_with(*boxes: tuple[slice, slice, slice]) -> np.ndarray:
    """Return a (Z, Y, X) uint32 label image with box k labeled k + 1."""
    labels = np.zeros(SHAPE, np.uint32)
    for k, box in enumerate(boxes):
        labels[box] = k + 1
    return labels


def three_tubes() -> Instances:
    return Instances.from_labels(labels_with(tube(5), tube(15), tube(25)))


def test_perfect_prediction_scores_perfectly() -> None:
    gt = three_tubes()
    scores = evaluate_instances(gt, gt, fisbe=True)
    for key in ("AP50", "AP75", "mAP", "avF1", "C", "S"):
        assert scores[key] == pytest.approx(1.0), key
    assert scores["FS"] == scores["FM"] == 0
    assert scores["VOI_split"] == pytest.approx(0) and scores["VOI_merge"] == pytest.approx(0)
    assert scores["ARAND"] == pytest.approx(0)
    assert scores["n_pred"] == scores["n_gt"] == 3


def test_a_bar_that_thinning_deletes_still_matches_itself() -> None:
    # skimage's 3-D skeletonize leaves nothing of an even-sided 2 x 2 bar
    bar = Instances.from_labels(labels_with((slice(4, 6), slice(5, 7), slice(5, 105))))
    scores = evaluate_instances(bar, bar)
    assert scores["avF1"] == scores["C"] == pytest.approx(1.0)
    empty = Instances.from_labels(np.zeros(SHAPE, np.uint32))
    assert evaluate_instances(empty, bar)["avF1"] == 0.0


def test_one_gt_split_in_two_is_one_false_split() -> None:
    gt = Instances.from_labels(labels_with(tube(5)))
    pred = Instances.from_labels(labels_with(tube(5, x=slice(5, 55)), tube(5, x=slice(55, 105))))
    scores = evaluate_instances(pred, gt)
    assert scores["FS"] == 1 and scores["FM"] == 0
    assert scores["C"] == pytest.approx(1.0, abs=0.03)  # both halves cover it together
    assert scores["AP50"] == pytest.approx(0.5)  # a half has IoU 0.5: one TP, one FP
    assert scores["AP75"] == 0
    assert 0.3 < scores["avF1"] < 0.6  # clDice of a half is about 2/3
    assert scores["VOI_split"] > 0.01 and scores["VOI_merge"] == pytest.approx(0)


def test_two_gts_merged_is_one_false_merge() -> None:
    gt = Instances.from_labels(labels_with(tube(5), tube(15)))
    merged = labels_with(tube(5), tube(15))
    pred = Instances.from_labels((merged > 0).astype(np.uint32))
    scores = evaluate_instances(pred, gt)
    assert scores["FM"] == 1 and scores["FS"] == 0
    # The merged prediction is assigned to one GT only: that one is covered, the other not.
    assert scores["C"] == pytest.approx(0.5)
    assert scores["VOI_merge"] > 0.01 and scores["VOI_split"] == pytest.approx(0)


def test_a_tenth_of_a_second_gt_is_no_false_merge() -> None:
    gt = Instances.from_labels(labels_with(tube(5), tube(15)))
    pred = labels_with(tube(5))
    pred[tube(15, x=slice(5, 10))] = 1  # 5 % of the second tube's skeleton
    assert evaluate_instances(Instances.from_labels(pred), gt)["FM"] == 0
    pred[tube(15, x=slice(5, 40))] = 1  # 35 %
    assert evaluate_instances(Instances.from_labels(pred), gt)["FM"] == 1


def crossing_stack() -> np.ndarray:
    """Return a (2, Z, Y, X) stack of two tubes crossing in an X shape (they share voxels)."""
    stack = np.zeros((2, *SHAPE), bool)
    stack[0][tube(18)] = True
    stack[1][4:7, 5:35, 50:53] = True  # runs along y, through tube 0
    return stack


def test_overlapping_gt_is_matched_with_its_overlaps() -> None:
    gt = Instances.from_stack(crossing_stack())
    assert len(gt.overlaps) > 0
    assert evaluate_instances(gt, gt)["mAP"] == pytest.approx(1.0)
    # A prediction that gives each shared voxel to one neuron only still matches both.
    flat = Instances.from_labels(gt.labels)
    scores = evaluate_instances(flat, gt)
    assert scores["AP50"] == pytest.approx(1.0) and scores["mAP"] < 1.0
    assert scores["FS"] == scores["FM"] == 0 and scores["n_gt"] == 2


def test_iou_needs_the_overlap_rows() -> None:
    gt = Instances.from_stack(crossing_stack())
    scores = score_volume(Instances.from_labels(gt.labels), gt)
    table = threshold_table([scores])
    by_threshold = {row["threshold"]: row for row in table}
    # Tube 1 (90 voxels) loses its 9 shared voxels: IoU 0.9 passes 0.9 but not 0.95.
    assert by_threshold[0.9]["tp"] == 2 and by_threshold[0.95]["tp"] == 1
    assert by_threshold[0.95]["precision"] == pytest.approx(0.5)


def test_fisbe_drops_small_predictions() -> None:
    gt = three_tubes()
    labels = gt.labels.copy()
    labels[0:2, 35:38, 0:5] = 9  # a 30-voxel speck far from everything
    pred = Instances.from_labels(labels)
    assert evaluate_instances(pred, gt)["AP50"] == pytest.approx(3 / 4)
    assert evaluate_instances(pred, gt, fisbe=True)["AP50"] == pytest.approx(1.0)
    assert evaluate_instances(pred, gt, fisbe=True)["n_pred"] == 3


def test_partly_labeled_gt_does_not_count_unlabeled_neurons() -> None:
    gt = Instances.from_labels(labels_with(tube(5)))
    pred = Instances.from_labels(labels_with(tube(5), tube(25)))
    assert evaluate_instances(pred, gt)["AP50"] == pytest.approx(0.5)
    assert evaluate_instances(pred, gt, partly=True)["AP50"] == pytest.approx(1.0)
    assert evaluate_instances(pred, gt, partly=True)["avF1"] == pytest.approx(1.0)
    annotated = np.zeros(SHAPE, bool)
    annotated[:, 20:, :] = True  # the second tube lies where the annotator labeled everything
    scores = evaluate_instances(pred, gt, partly=True, annotated=annotated)
    assert scores["AP50"] == pytest.approx(0.5)
    annotated[:, 20:, 50:] = False  # now less than half of it
    scores = evaluate_instances(pred, gt, partly=True, annotated=annotated)
    assert scores["AP50"] == pytest.approx(1.0)


def test_counts_are_pooled_over_volumes() -> None:
    gt_a, gt_b = three_tubes(), Instances.from_labels(labels_with(tube(5)))
    empty = Instances.from_labels(np.zeros(SHAPE, np.uint32))
    scores = evaluate_volumes([(gt_a, gt_a), (empty, gt_b)])
    assert scores["AP50"] == pytest.approx(3 / 4)  # not the mean of 1 and 0
    assert scores["C"] == pytest.approx(3 / 4)  # mean over the four GT neurons
    assert scores["n_gt"] == 4 and scores["n_pred"] == 3


def test_empty_volumes() -> None:
    empty = Instances.from_labels(np.zeros(SHAPE, np.uint32))
    scores = evaluate_instances(empty, empty)
    assert scores["n_pred"] == scores["n_gt"] == 0
    assert np.isnan(scores["AP50"]) and np.isnan(scores["C"])
    missed = evaluate_instances(empty, three_tubes())
    assert missed["AP50"] == 0 and missed["avF1"] == 0 and missed["C"] == 0
    assert missed["FS"] == missed["FM"] == 0


def test_single_instance_each() -> None:
    gt = Instances.from_labels(labels_with(tube(5)))
    pred = Instances.from_labels(labels_with(tube(6)))  # shifted by one voxel: IoU 0.5
    scores = evaluate_instances(pred, gt)
    assert scores["AP50"] == pytest.approx(1.0) and scores["AP75"] == 0
    assert scores["avF1"] == pytest.approx(1.0)  # skeletons still lie inside each other


def test_shape_mismatch_is_an_input_error() -> None:
    gt = three_tubes()
    other = Instances.from_labels(np.zeros((2, 2, 2), np.uint32))
    with pytest.raises(InputError, match="differ in shape"):
        evaluate_instances(other, gt)


def test_voi_and_arand_agree_with_skimage() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 5, size=(6, 20, 20)) * (rng.random((6, 20, 20)) < 0.7)
    pred = np.where(rng.random(gt.shape) < 0.8, gt, rng.integers(0, 7, size=gt.shape))
    pred[pred == 3] = 1000  # arbitrary ids
    split, merge = variation_of_information(pred, gt)
    np.testing.assert_allclose([split, merge], skimage_voi(gt, pred), rtol=1e-10)
    assert adapted_rand_error(pred, gt) == pytest.approx(skimage_arand(gt, pred)[0], rel=1e-10)
    scores = evaluate_instances(Instances.from_labels(pred), Instances.from_labels(gt))
    assert scores["VOI_split"] == pytest.approx(split) and scores["VOI_merge"] == pytest.approx(
        merge
    )
    assert scores["ARAND"] == pytest.approx(adapted_rand_error(pred, gt))


def test_contingency_table_counts_voxels() -> None:
    pred = np.array([[[0, 0, 7, 7, 7]]])
    gt = np.array([[[0, 2, 2, 2, 0]]])
    np.testing.assert_array_equal(contingency_table(pred, gt), [[1, 1], [1, 2]])


def patches(values: list[float]) -> np.ndarray:
    """Return a (1, 8, 8) volume whose four 4 x 4 patches hold the four values."""
    volume = np.zeros((1, 8, 8))
    for k, value in enumerate(values):
        volume[0, 4 * (k // 2) : 4 * (k // 2) + 4, 4 * (k % 2) : 4 * (k % 2) + 4] = value
    return volume


def test_pavpu_counts_hand_built_patches() -> None:
    accurate = patches([1, 1, 0, 0]).astype(bool)
    accurate[0, 0, :2] = False  # 2 of 16 wrong: still an accurate patch
    uncertainty = patches([0.1, 0.9, 0.9, 0.1])
    curve = pavpu(accurate, uncertainty, [0.5, 0.95], grid=(2, 2))
    # threshold 0.5: one patch in each of ac, au, iu, ic
    assert curve.pavpu[0] == pytest.approx(0.5)
    assert curve.p_accurate_given_certain[0] == pytest.approx(0.5)
    assert curve.p_uncertain_given_inaccurate[0] == pytest.approx(0.5)
    # threshold 0.95: all certain, so no inaccurate patch is flagged
    assert curve.p_uncertain_given_inaccurate[1] == 0
    informative = pavpu(accurate, patches([0.1, 0.1, 0.9, 0.9]), [0.5], grid=(2, 2))
    assert informative.pavpu[0] == pytest.approx(1.0)


def test_pavpu_judges_patches_by_their_relevant_voxels_only() -> None:
    # Mostly background: every patch is >= half accurate over all voxels.
    accurate = np.ones((1, 8, 8), bool)
    relevant = np.zeros((1, 8, 8), bool)
    relevant[0, 0, :3] = True  # patch 0: a neuron whose 3 voxels are all wrong
    accurate[0, 0, :3] = False
    relevant[0, 4, 4:7] = True  # patch 3: a neuron whose voxels are right
    uncertainty = patches([0.9, 0.1, 0.1, 0.1])
    plain = pavpu(accurate, uncertainty, [0.5], grid=(2, 2))
    assert np.isnan(plain.p_uncertain_given_inaccurate[0])  # no inaccurate patch at all
    judged = pavpu(accurate, uncertainty, [0.5], grid=(2, 2), relevant=relevant)
    # patches 1 and 2 hold no relevant voxel and are left out: one iu, one ac
    assert judged.pavpu[0] == pytest.approx(1.0)
    assert judged.p_uncertain_given_inaccurate[0] == pytest.approx(1.0)
    with pytest.raises(InputError, match="relevant has shape"):
        pavpu(accurate, uncertainty, [0.5], grid=(2, 2), relevant=relevant[0])


def test_pavpu_patch_grid_must_fit() -> None:
    with pytest.raises(InputError, match="patch grid"):
        pavpu(np.ones((1, 2, 2), bool), np.zeros((1, 2, 2)), [0.5], grid=(4, 4))


def test_auroc_known_cases() -> None:
    errors = np.array([0, 0, 1, 1], bool)
    assert auroc([0.1, 0.2, 0.8, 0.9], errors) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], errors) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], errors) == 0.5
    assert np.isnan(auroc([0.1, 0.2], [False, False]))
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    labels = rng.random(300) < 0.3
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_ece_of_a_calibrated_construction_is_near_zero() -> None:
    rng = np.random.default_rng(1)
    prob = rng.random(400_000)
    target = rng.random(prob.size) < prob
    assert ece(prob, target) < 0.01
    assert ece(prob, target, top_label=False) < 0.01


def test_ece_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(2)
    prob = np.full(100_000, 0.9)
    target = rng.random(prob.size) < 0.6
    assert ece(prob, target, top_label=False) == pytest.approx(0.3, abs=0.01)
    assert ece(prob, target) == pytest.approx(0.3, abs=0.01)


def test_reliability_bins() -> None:
    prob = np.array([0.05, 0.15, 0.15, 0.95])
    target = np.array([False, True, False, True])
    diagram = reliability(prob, target, bins=10, top_label=False)
    np.testing.assert_allclose(diagram.centers[:2], [0.05, 0.15])
    assert diagram.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert diagram.accuracy[1] == pytest.approx(0.5) and diagram.confidence[1] == pytest.approx(
        0.15
    )
    assert np.isnan(diagram.accuracy[2])
